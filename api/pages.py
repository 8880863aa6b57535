"""The pages Rapport serves itself, outside ``/api/`` (no key): the operator's playground at
``/``, the operator dashboard at ``/dashboard`` (issue 23; its data comes from ``/api/`` with
the browser session) and the chat widget a business embeds (``/widget.js``).

The files ship in the package (``api/web``) and are read once, at import. The playground's
Content-Security-Policy allows nothing from elsewhere: its scripts and stylesheet are these
files, the widget's styles are a constructed stylesheet (no ``'unsafe-inline'``), and its
sockets go to the host the page was loaded from, named explicitly since ``'self'`` does not
cover ``ws:``/``wss:`` in every browser.
"""

from __future__ import annotations

import re
from importlib.resources import files
from typing import get_args

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from api.operations import Operation
from engine.apikeys import Role
from engine.personas import Archetype, Day, Gender, Mode, Sociality, Temperament, Zodiac
from kb.listing import SORT_KEYS, Status

HTML = "text/html; charset=utf-8"
JAVASCRIPT = "text/javascript; charset=utf-8"
CSS = "text/css; charset=utf-8"

_WEB = files("api") / "web"
PLAYGROUND = (_WEB / "playground.html").read_bytes()
PLAYGROUND_JS = (_WEB / "playground.js").read_bytes()
PLAYGROUND_CSS = (_WEB / "playground.css").read_bytes()
WIDGET_JS = (_WEB / "widget.js").read_bytes()
DASHBOARD = (_WEB / "dashboard.html").read_bytes()
DASHBOARD_JS = (_WEB / "dashboard.js").read_bytes()
DASHBOARD_CSS = (_WEB / "dashboard.css").read_bytes()

CLOSE_CODES = {
    1000: "Ended: by the end user, or from the dashboard or the API",
    1001: "The server shut down",
    1008: "Too many or malformed frames",
    1013: "The server was too busy",
    4001: "Its API key was disabled, regenerated or deleted",
    4004: "Ended, or its window lapsed, before the client came back",
    4005: "Interaction limit reached",
    4006: "Duration limit reached",
    4007: "No user message for RAPPORT_SESSION_IDLE_SECONDS",
    4009: "Taken over by another connection",
}
"""What an operator reads next to a close code on the Usage page (DESIGN.md, "Live
sessions"; the widget says its own words to end users)."""


class Choices(msgspec.Struct, frozen=True):
    """The values the dashboard's forms offer, read from the engine's own types so that a
    new value reaches the page without a second list to keep."""

    genders: list[str]
    zodiac_signs: list[str]
    socialities: list[str]
    archetypes: list[str]
    temperaments: list[str]
    days: list[str]
    modes: list[str]
    roles: list[str]
    document_statuses: list[str]
    document_sorts: list[str]
    close_codes: dict[int, str]


CHOICES = msgspec.json.encode(
    Choices(
        genders=list(get_args(Gender)),
        zodiac_signs=list(get_args(Zodiac)),
        socialities=list(get_args(Sociality)),
        archetypes=list(get_args(Archetype)),
        temperaments=list(Temperament.__struct_fields__),
        days=list(get_args(Day)),
        modes=list(get_args(Mode)),
        roles=list(get_args(Role)),
        document_statuses=list(get_args(Status)),
        document_sorts=list(SORT_KEYS),
        close_codes=CLOSE_CODES,
    )
)

# Host header: a name or an IP literal and a port; anything else stays out of the policy.
_SANE_HOST = re.compile(r"\A(?:[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?\Z")

COMMON = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}


def content_security_policy(host: str | None) -> str:
    sockets = f" ws://{host} wss://{host}" if host and _SANE_HOST.match(host) else ""
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"connect-src 'self'{sockets}; media-src 'self' blob:; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    )


async def playground(request: Request) -> Response:
    headers = {
        **COMMON,
        "Content-Security-Policy": content_security_policy(request.headers.get("host")),
        "Referrer-Policy": "no-referrer",
    }
    return Response(PLAYGROUND, media_type=HTML, headers=headers)


async def dashboard(request: Request) -> Response:
    headers = {
        **COMMON,
        "Content-Security-Policy": content_security_policy(request.headers.get("host")),
        "Referrer-Policy": "no-referrer",
    }
    return Response(DASHBOARD, media_type=HTML, headers=headers)


async def set_password_page(request: Request) -> Response:
    """The same page: its script shows the set-password form at this path."""
    return await dashboard(request)


async def dashboard_js(request: Request) -> Response:
    return Response(DASHBOARD_JS, media_type=JAVASCRIPT, headers=COMMON)


async def dashboard_css(request: Request) -> Response:
    return Response(DASHBOARD_CSS, media_type=CSS, headers=COMMON)


async def choices(request: Request) -> Response:
    return Response(CHOICES, media_type="application/json", headers=COMMON)


async def playground_js(request: Request) -> Response:
    return Response(PLAYGROUND_JS, media_type=JAVASCRIPT, headers=COMMON)


async def playground_css(request: Request) -> Response:
    return Response(PLAYGROUND_CSS, media_type=CSS, headers=COMMON)


async def widget_js(request: Request) -> Response:
    return Response(WIDGET_JS, media_type=JAVASCRIPT, headers=COMMON)


OPERATIONS = [
    Operation("GET", "/", playground,
              "The playground: an operator's page to talk to the account's personas with an "
              "API key (kept in the browser tab), through the chat widget.",
              "pages", media_type="text/html"),
    Operation("GET", "/dashboard", dashboard,
              "The operator dashboard: API keys, knowledge, personas, live sessions, usage, "
              "settings and the audit log, for a signed-in dashboard user.", "pages",
              media_type="text/html"),
    Operation("GET", "/dashboard/set-password", set_password_page,
              "The dashboard's set-password page, where a link from `rapport users create` "
              "or an owner's invitation leads (the token is in the URL's fragment).", "pages",
              media_type="text/html"),
    Operation("GET", "/dashboard/choices.json", choices,
              "The values the dashboard's forms offer (persona traits, roles, document "
              "statuses, close codes).", "pages", media_type="application/json"),
    Operation("GET", "/dashboard.js", dashboard_js, "The dashboard's script.", "pages",
              media_type="text/javascript"),
    Operation("GET", "/dashboard.css", dashboard_css, "The dashboard's stylesheet.", "pages",
              media_type="text/css"),
    Operation("GET", "/widget.js", widget_js,
              "The chat widget, <rapport-chat>: a script a business's pages embed (README, "
              "'The chat widget').",
              "pages", media_type="text/javascript"),
    Operation("GET", "/playground.js", playground_js, "The playground's script.", "pages",
              media_type="text/javascript"),
    Operation("GET", "/playground.css", playground_css, "The playground's stylesheet.", "pages",
              media_type="text/css"),
]  # fmt: skip
