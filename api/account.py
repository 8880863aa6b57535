"""The restricted routes: ``/api/account/…`` (issue 23 item 3; seed 000).

Seed 000: "Account settings, billing, and API key management only accept a browser session —
API keys receive 403 auth.forbidden on those routes by design." Each route decides that
itself, first thing, with :func:`signed_in`; no list of path prefixes does (a prefix check
is what a path's case or a trailing slash slips past: CVE-2024-31621). Starlette's routing
is case-sensitive, so ``/API/Account/…`` matches no route at all (404).

Roles (:mod:`engine.users`): a viewer reads, an owner or admin writes, and only an owner
manages users. A key is shown once, in the answer that made it (``Cache-Control:
no-store``), after the user's password was asked again; a wrong one is 403
``auth.forbidden``, not 401: the browser session is still good, and the page must not take
the answer for a sign-out. The plan is read-only here: the CLI sets it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import msgspec
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import Response

from api import subscription
from api.auditing import actor_from, audit
from api.operations import Operation
from api.problems import decode_body
from api.queries import parse_query
from api.responses import JSON
from api.services import Services
from api.signin import Password, count_attempt
from engine import usage as activity
from engine.accounts import Account, normalise_origin
from engine.apikeys import LABEL_LENGTH, SLOTS, Principal, Role, Slot, SlotState
from engine.audit import KEY_ACTIONS, AuditLog, AuditPage, AuditQuery
from engine.errors import Failure, Forbidden, NotFound
from engine.signin import SignIn

WRITERS: tuple[Role, ...] = ("owner", "admin")
READERS: tuple[Role, ...] = ("owner", "admin", "viewer")
OWNERS: tuple[Role, ...] = ("owner",)

Label = Annotated[str, msgspec.Meta(max_length=LABEL_LENGTH)]
Origin = Annotated[str, msgspec.Meta(max_length=256)]


def signed_in(request: Request, roles: tuple[Role, ...]) -> Principal:
    """The dashboard user calling, when its role is one of ``roles``; else 403
    auth.forbidden. Every route here calls it first: an API key is refused, whatever
    path reached the route."""
    principal: Principal = request.state.principal
    if principal.user_id is None or principal.role is None:
        raise Forbidden("Account routes accept a dashboard sign-in only, never an API key.")
    if principal.role not in roles:
        raise Forbidden(f"A dashboard {principal.role} may not do this.")
    return principal


def services_of(request: Request) -> Services:
    return request.state.services


def secret(body: object, status: int = 200) -> Response:
    """An answer holding a secret shown once: no cache may keep it (RFC 9111 §5.2.2.5)."""
    response = JSON(body, status_code=status)
    response.headers["Cache-Control"] = "no-store"
    return response


async def confirm_password(request: Request, principal: Principal, password: str) -> None:
    """The signed-in user's password, asked again; each try is counted with the sign-ins
    (:func:`api.signin.count_attempt`: 429 once spent), so a stolen cookie cannot guess
    it here at full speed."""
    assert principal.user_id is not None  # signed_in() checked
    signin: SignIn = request.state.signin
    await count_attempt(request, signin.email)
    if not await services_of(request).users.confirm(
        principal.account_id, principal.user_id, password
    ):
        raise Forbidden("The password is incorrect.")


class SlotConvertor(Convertor[str]):
    """``{slot:slot}``: a path naming no slot matches no route, 404 whoever asks (a key's
    403 would tell nothing more, and the route never sees a slot it must check)."""

    regex = "|".join(SLOTS)

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


# Registered on import, before api.app builds its routes from OPERATIONS.
register_url_convertor("slot", SlotConvertor())


def slot_of(request: Request) -> Slot:
    return request.path_params["slot"]


# ---- the account -------------------------------------------------------------------------


class AccountPatch(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Only the allowed origins: the plan is set with the CLI (an unknown field is 400)."""

    allowed_origins: Annotated[list[Origin], msgspec.Meta(max_length=100)]
    """The whole new list; empty lets every origin in (:mod:`engine.accounts`)."""


async def get_account(request: Request) -> Response:
    principal = signed_in(request, READERS)
    return JSON(await services_of(request).accounts.get(principal.account_id))


async def patch_account(request: Request) -> Response:
    principal = signed_in(request, WRITERS)
    given = decode_body(await request.body(), AccountPatch)
    wanted = list(dict.fromkeys(normalise_origin(o) for o in given.allowed_origins))
    accounts = services_of(request).accounts
    before = await accounts.get(principal.account_id)
    after = before
    for origin in before.plan.allowed_origins:
        if origin not in wanted:
            after = await accounts.remove_origin(principal.account_id, origin)
    for origin in wanted:
        after = await accounts.add_origin(principal.account_id, origin)
    await AuditLog(services_of(request).redis).origins_changed(
        actor_from(request), before.plan, after.plan
    )
    return JSON(after)


# ---- API keys ----------------------------------------------------------------------------


class KeyList(msgspec.Struct, frozen=True):
    items: list[SlotState]
    """The filled slots; never a key."""


class CreateKeyIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    slot: Slot
    password: Password
    label: Label = ""


class RegenerateKeyIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    password: Password


class KeyPatch(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    disabled: bool | msgspec.UnsetType = msgspec.UNSET
    label: Label | msgspec.UnsetType = msgspec.UNSET


class NewKey(msgspec.Struct, frozen=True):
    key: str
    """The full key: shown here once, never again."""
    slot: SlotState


async def state_of(request: Request, account_id: str, slot: Slot) -> SlotState:
    for state in await services_of(request).keys.slots(account_id):
        if state.slot == slot:
            return state
    raise NotFound(f"The {slot} slot holds no key.")


async def list_keys(request: Request) -> Response:
    principal = signed_in(request, READERS)
    return JSON(KeyList(await services_of(request).keys.slots(principal.account_id)))


async def revoke_sessions(request: Request, account_id: str, slot: Slot) -> None:
    """As ``rapport keys disable|regenerate``: the live sessions (and tickets in line) the
    slot's key minted end with it, closed 4001 wherever they are held."""
    await services_of(request).sessions.revoke(account_id, slot)


async def create_key(request: Request) -> Response:
    principal = signed_in(request, WRITERS)
    given = decode_body(await request.body(), CreateKeyIn)
    await confirm_password(request, principal, given.password)
    key = await services_of(request).keys.create(
        principal.account_id, given.slot, label=given.label, by=actor_from(request).name
    )
    await audit(request, KEY_ACTIONS["create"], given.slot, {"label": given.label})
    return secret(NewKey(key, await state_of(request, principal.account_id, given.slot)), 201)


async def regenerate_key(request: Request) -> Response:
    principal = signed_in(request, WRITERS)
    slot = slot_of(request)
    given = decode_body(await request.body(), RegenerateKeyIn)
    await confirm_password(request, principal, given.password)
    await state_of(request, principal.account_id, slot)  # an empty slot is created, not this
    key = await services_of(request).keys.regenerate(
        principal.account_id, slot, by=actor_from(request).name
    )
    await audit(request, KEY_ACTIONS["regenerate"], slot)
    await revoke_sessions(request, principal.account_id, slot)
    return secret(NewKey(key, await state_of(request, principal.account_id, slot)))


async def patch_key(request: Request) -> Response:
    principal = signed_in(request, WRITERS)
    slot = slot_of(request)
    given = decode_body(await request.body(), KeyPatch)
    keys = services_of(request).keys
    before = await state_of(request, principal.account_id, slot)
    if given.label is not msgspec.UNSET and given.label != before.label:
        await keys.set_label(principal.account_id, slot, given.label)
        await audit(request, "key.relabeled", slot, {"label": given.label})
    if given.disabled is not msgspec.UNSET and given.disabled != before.disabled:
        await keys.set_disabled(principal.account_id, slot, given.disabled)
        await audit(request, KEY_ACTIONS["disable" if given.disabled else "enable"], slot)
        if given.disabled:
            await revoke_sessions(request, principal.account_id, slot)
    return JSON(await state_of(request, principal.account_id, slot))


async def delete_key(request: Request) -> Response:
    principal = signed_in(request, WRITERS)
    slot = slot_of(request)
    await services_of(request).keys.delete(principal.account_id, slot)
    await audit(request, KEY_ACTIONS["delete"], slot)
    await revoke_sessions(request, principal.account_id, slot)
    return Response(status_code=204)


# ---- usage, audit ----------------------------------------------------------------------


class AccountUsage(msgspec.Struct):
    """The dashboard's Usage page."""

    usage: subscription.UsageView
    """The figures of ``GET /api/subscription/limits``."""
    turns_per_day: list[activity.DayTurns]
    """The last 30 UTC days, oldest first, today last: turns that spent a request."""
    sessions_closed: list[activity.Closed]
    """Sessions ended in those days, by close code, codes ascending."""


async def usage(request: Request) -> Response:
    principal = signed_in(request, READERS)
    services = services_of(request)
    figures = await subscription.figures(services, principal.account_id)
    counted = await activity.read(
        services.redis, principal.account_id, today=datetime.now(UTC).date()
    )
    return JSON(AccountUsage(figures, counted.turns_per_day, counted.sessions_closed))


async def audit_log(request: Request) -> Response:
    principal = signed_in(request, READERS)
    query = parse_query(request.query_params, AuditQuery)
    return JSON(await AuditLog(services_of(request).redis).page(principal.account_id, query))


SLOT_PATH = "/api/account/api-keys/{slot:slot}"
REFUSED = (Failure.FORBIDDEN,)

OPERATIONS: list[Operation] = [
    Operation("GET", "/api/account", get_account,
              "The account: name, id, plan (allowed origins included), created. Browser "
              "session only.", "account", Account, failures=REFUSED),
    Operation("PATCH", "/api/account", patch_account,
              "Replace the allowed origins (owner, admin). The plan is set with the CLI.",
              "account", Account, request=AccountPatch, failures=REFUSED),
    Operation("GET", "/api/account/api-keys", list_keys,
              "Both key slots: label, `rk_live_…last4`, status, created by, last used; never "
              "a key.", "account", KeyList, failures=REFUSED),
    Operation("POST", "/api/account/api-keys", create_key,
              "Fill an empty slot (owner, admin; the user's password again): the key is in "
              "this answer only.", "account", NewKey, status=201, request=CreateKeyIn,
              failures=(Failure.FORBIDDEN, Failure.CONFLICT, Failure.RATE_LIMITED_IP)),
    Operation("PATCH", SLOT_PATH, patch_key,
              "Disable or enable a slot's key, or relabel it (owner, admin); disabling ends "
              "the live sessions it minted.", "account", SlotState, request=KeyPatch,
              failures=(Failure.FORBIDDEN, Failure.NOT_FOUND)),
    Operation("POST", f"{SLOT_PATH}/regenerate", regenerate_key,
              "Replace a slot's key (owner, admin; the user's password again): the old one "
              "and its live sessions end; the new key is in this answer only.", "account",
              NewKey, request=RegenerateKeyIn,
              failures=(Failure.FORBIDDEN, Failure.NOT_FOUND, Failure.RATE_LIMITED_IP)),
    Operation("DELETE", SLOT_PATH, delete_key,
              "Empty a slot (owner, admin): integrations using its key stop working, its "
              "live sessions end.", "account", status=204,
              failures=(Failure.FORBIDDEN, Failure.NOT_FOUND)),
    Operation("GET", "/api/account/usage", usage,
              "Knowledge and storage units used and allowed, request balance; turns per UTC "
              "day for the last 30 days and the sessions ended in them by close code.",
              "account", AccountUsage, failures=REFUSED),
    Operation("GET", "/api/account/audit", audit_log,
              "The account's audit log, newest first, paged by `before`.", "account",
              AuditPage, failures=REFUSED),
]  # fmt: skip
