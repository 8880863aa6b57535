"""The account's dashboard users, managed by its owners: ``/api/account/users…`` (issue 23).

Restricted routes like the rest of :mod:`api.account`: a browser session only, an owner's.
The rules live in :mod:`engine.users`: a change of role or of ``disabled`` ends the user's
browser sessions, and the last owner who can sign in stays one. A set-password link is
shown once, to the owner who asked, to pass on (Rapport sends no mail).
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import Response

from api.account import OWNERS, REFUSED, secret, services_of, signed_in
from api.auditing import audit
from api.operations import Operation
from api.problems import decode_body
from api.responses import JSON
from engine.apikeys import Role
from engine.audit import USER_ACTIONS
from engine.errors import Failure
from engine.ids import OWN_ID
from engine.users import User


class OwnIdConvertor(Convertor[str]):
    """``{user_id:own_id}``: a path segment that cannot be one of Rapport's ids
    (:data:`engine.ids.OWN_ID`) matches no route, so it is 404 whoever asks, as a user that
    does not exist is (an API key's 403 would tell nothing more)."""

    regex = OWN_ID.removeprefix(r"\A").removesuffix(r"\Z")

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


# Registered on import, before api.app builds its routes from OPERATIONS.
register_url_convertor("own_id", OwnIdConvertor())


class UserView(msgspec.Struct, frozen=True):
    id: str
    email: str
    role: Role
    status: str
    """``invited`` (no password yet), ``active`` or ``disabled``."""
    created_at: str


def user_view(user: User) -> UserView:
    status = "disabled" if user.disabled else "active" if user.password_hash else "invited"
    return UserView(user.id, user.email, user.role, status, user.created_at.isoformat())


class UserList(msgspec.Struct, frozen=True):
    items: list[UserView]


class InviteIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    email: Annotated[str, msgspec.Meta(max_length=254)]
    role: Role


class UserPatch(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    role: Role | msgspec.UnsetType = msgspec.UNSET
    disabled: bool | msgspec.UnsetType = msgspec.UNSET


class Invited(msgspec.Struct, frozen=True):
    user: UserView
    set_password_link: str
    """Works once, for 24 hours: pass it on to the user (Rapport sends no mail)."""


def invited(request: Request, user: User, token: str, status: int = 200) -> Response:
    """The user and its set-password link, on the origin the owner reached (as the CLI's is
    on the configured host); the token in the fragment, which no browser sends to a server."""
    link = f"{request.url.scheme}://{request.url.netloc}/dashboard/set-password#token={token}"
    return secret(Invited(user_view(user), link), status)


def user_id_of(request: Request) -> str:
    return request.path_params["user_id"]


async def list_users(request: Request) -> Response:
    principal = signed_in(request, OWNERS)
    users = await services_of(request).users.list(principal.account_id)
    return JSON(UserList([user_view(user) for user in users]))


async def invite_user(request: Request) -> Response:
    principal = signed_in(request, OWNERS)
    given = decode_body(await request.body(), InviteIn)
    user, token = await services_of(request).users.create(
        principal.account_id, given.email, given.role
    )
    await audit(request, "user.created", user.email, {"role": user.role})
    return invited(request, user, token, 201)


async def patch_user(request: Request) -> Response:
    principal = signed_in(request, OWNERS)
    given = decode_body(await request.body(), UserPatch)
    before, after = await services_of(request).users.change(
        principal.account_id,
        user_id_of(request),
        role=None if given.role is msgspec.UNSET else given.role,
        disabled=None if given.disabled is msgspec.UNSET else given.disabled,
    )
    if after.role != before.role:
        await audit(
            request, "user.role_changed", after.email, {"from": before.role, "to": after.role}
        )
    if after.disabled != before.disabled:
        await audit(request, USER_ACTIONS["disable" if after.disabled else "enable"], after.email)
    return JSON(user_view(after))


async def reset_user(request: Request) -> Response:
    """As ``rapport users reset``: a new link, older ones void; the password and the
    sessions stay until the link is followed (which ends them: ``UserStore.set_password``)."""
    principal = signed_in(request, OWNERS)
    users = services_of(request).users
    user = await users.get(principal.account_id, user_id_of(request))
    token = await users.issue_link(user)
    await audit(request, "user.password_reset", user.email)
    return invited(request, user, token)


USER_PATH = "/api/account/users/{user_id:own_id}"

OPERATIONS: list[Operation] = [
    Operation("GET", "/api/account/users", list_users,
              "The account's dashboard users (owner).", "account", UserList, failures=REFUSED),
    Operation("POST", "/api/account/users", invite_user,
              "Invite a dashboard user (owner): answers its one-time set-password link.",
              "account", Invited, status=201, request=InviteIn,
              failures=(Failure.FORBIDDEN, Failure.CONFLICT)),
    Operation("PATCH", USER_PATH, patch_user,
              "Change a user's role or disable or enable it (owner): its browser sessions "
              "end. The last owner who can sign in stays one (409).", "account", UserView,
              request=UserPatch, failures=(Failure.FORBIDDEN, Failure.CONFLICT)),
    Operation("POST", f"{USER_PATH}/reset", reset_user,
              "A new one-time set-password link for a user (owner), older links void; the "
              "password works until the link is followed.", "account", Invited,
              failures=REFUSED),
]  # fmt: skip
