"""Dashboard sign-in routes: ``/api/auth/…`` (issue 23; :mod:`engine.signin`, :mod:`engine.users`).

Sign-in and set-password take their credential in the body (:data:`api.auth.PUBLIC_PATHS`);
the others authenticate by the session cookie like any ``/api/`` route, CSRF token included
(:func:`api.auth.signed_in`)."""

from __future__ import annotations

from typing import Annotated

import msgspec
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response

from api.auth import client_ip, is_own_origin, session_cookie
from api.operations import Operation
from api.problems import decode_body
from api.responses import JSON
from api.services import Services
from engine.apikeys import Role
from engine.audit import Actor, AuditLog
from engine.errors import Failure, Forbidden, RateLimitedIp
from engine.signin import COOKIE, SignIn
from engine.users import PASSWORD_MAX, WrongPassword

Text = Annotated[str, msgspec.Meta(max_length=512)]
Password = Annotated[str, msgspec.Meta(max_length=PASSWORD_MAX * 4)]
"""Longer than any password that could be set (characters, not bytes), so a long one gets the
same 401 as a wrong one; bounded, so no megabyte is hashed."""


class LoginIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    email: Text
    password: Password


class SetPasswordIn(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    token: Text
    password: Password


class SignInView(msgspec.Struct, frozen=True):
    user: str
    """The user's email."""
    user_id: str
    role: Role
    account: str
    """The account's id."""
    csrf_token: str
    """Send it as ``X-CSRF-Token`` on every write; kept in the page's memory only."""


def view(signin: SignIn) -> SignInView:
    return SignInView(
        signin.email, signin.user_id, signin.role, signin.account_id, signin.csrf_token
    )


def cookie_header(value: str, max_age: int) -> str:
    # __Host- (RFC 6265bis §4.1.3.2): Secure, Path=/, no Domain. HttpOnly: no script reads
    # it; SameSite=Lax: no other site's POST carries it (ASVS V3.3.1-4).
    return f"{COOKIE}={value}; Max-Age={max_age}; Path=/; Secure; HttpOnly; SameSite=Lax"


def cross_site(request: Request) -> bool:
    """A sign-in posted from another site's page (login CSRF: the victim signed in as the
    attacker). A client that is no browser sends neither header and may sign in."""
    headers: Headers = request.headers
    origin = headers.get("origin")
    if origin is not None:
        return not is_own_origin(origin, request.url)
    return headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none")


async def count_attempt(request: Request, email: str) -> str:
    """Count one password attempt for ``email`` from the caller's IP (returned), or 429 with
    Retry-After once a window is spent. A sign-in and a password asked again before a key
    is shown (:func:`api.account.confirm_password`) both count here, in the same windows:
    a stolen session cookie guesses the password no faster than the sign-in form allows."""
    services: Services = request.state.services
    ip = client_ip(request.scope)
    ip_policy, email_policy = services.login_policies
    try:
        # Counted before the password is checked, so guessing spends the windows whatever
        # the answer (and parallel guesses cannot all pass before one is counted); a
        # window, never a lockout: the owner signing in from its own IP has its own
        # per-email window, which a stranger elsewhere cannot spend.
        await services.rate_limits.enforce(ip_policy, ip)
        await services.rate_limits.enforce(email_policy, f"{email.strip().lower()} {ip}")
    except RateLimitedIp as limited:
        raise RateLimitedIp(
            "Too many password attempts; retry later.", headers=limited.headers, scope="ip"
        ) from None
    return ip


async def login(request: Request) -> Response:
    services: Services = request.state.services
    given = decode_body(await request.body(), LoginIn)
    if cross_site(request):
        raise Forbidden("Sign in from this server's own pages.")
    ip = await count_attempt(request, given.email)
    try:
        user = await services.users.authenticate(given.email, given.password)
    except WrongPassword as refused:
        # A known user's account hears of it; an unknown email has no account to tell.
        who = refused.user
        await AuditLog(services.redis).record(
            Actor(who.account_id, f"user:{who.id}", ip), "login.failed", who.email
        )
        raise
    await AuditLog(services.redis).record(
        Actor(user.account_id, f"user:{user.id}", ip), "login.succeeded", user.email
    )
    old = session_cookie(request.headers)
    if old is not None:
        await services.signins.end(old)  # a new id at every sign-in (ASVS V7.2.4)
    cookie_id, signin = await services.signins.start(
        user.id, user.account_id, user.email, user.role
    )
    response = JSON(view(signin))
    response.headers["Set-Cookie"] = cookie_header(cookie_id, services.signins.max_seconds)
    response.headers["Cache-Control"] = "no-store"
    return response


def signed_out() -> Response:
    response = Response(status_code=204)
    response.headers["Set-Cookie"] = cookie_header("", 0)
    # Clear-Site-Data (ASVS V14.3.1): the browser drops what the pages kept.
    response.headers["Clear-Site-Data"] = '"cache", "storage"'
    return response


def current(request: Request) -> SignIn:
    signin: SignIn | None = getattr(request.state, "signin", None)
    if signin is None:  # an API key: it has no sign-in to read or end
        raise Forbidden("Only a dashboard session has a sign-in.")
    return signin


async def logout(request: Request) -> Response:
    current(request)
    cookie_id = session_cookie(request.headers)
    if cookie_id is not None:
        await request.state.services.signins.end(cookie_id)
    return signed_out()


async def logout_everywhere(request: Request) -> Response:
    signin = current(request)
    await request.state.services.signins.end_all(signin.account_id, signin.user_id)
    return signed_out()


async def session(request: Request) -> Response:
    response = JSON(view(current(request)))
    response.headers["Cache-Control"] = "no-store"
    return response


async def set_password(request: Request) -> Response:
    services: Services = request.state.services
    given = decode_body(await request.body(), SetPasswordIn)
    await services.users.set_password(given.token, given.password)
    return Response(status_code=204)


OPERATIONS: list[Operation] = [
    Operation("POST", "/api/auth/login", login,
              "Sign a dashboard user in: sets the `__Host-rapport_session` cookie (HttpOnly, "
              "Secure, SameSite=Lax) and answers the CSRF token. One 401 for every failure; "
              "attempts limited per IP and per email (429 with Retry-After).", "auth",
              SignInView, request=LoginIn,
              failures=(Failure.INVALID_CREDENTIALS, Failure.FORBIDDEN)),
    Operation("POST", "/api/auth/logout", logout,
              "End this browser session (204).", "auth", status=204,
              failures=(Failure.FORBIDDEN,)),
    Operation("POST", "/api/auth/logout-everywhere", logout_everywhere,
              "End every browser session of this user (204).", "auth", status=204,
              failures=(Failure.FORBIDDEN,)),
    Operation("GET", "/api/auth/session", session,
              "This browser session: user, role, account and its CSRF token.", "auth",
              SignInView, failures=(Failure.FORBIDDEN,)),
    Operation("POST", "/api/auth/set-password", set_password,
              "Follow a set-password link (204): the token works once, for 24 hours; the "
              "user's browser sessions end.", "auth", status=204, request=SetPasswordIn),
]  # fmt: skip
