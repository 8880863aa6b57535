"""The pages Rapport serves itself, outside ``/api/`` (no key): the operator's playground at
``/`` and the chat widget a business embeds (``/widget.js``).

The files ship in the package (``api/web``) and are read once, at import. The playground's
Content-Security-Policy allows nothing from elsewhere: its scripts and stylesheet are these
files, the widget's styles are a constructed stylesheet (no ``'unsafe-inline'``), and its
sockets go to the host the page was loaded from, named explicitly since ``'self'`` does not
cover ``ws:``/``wss:`` in every browser.
"""

from __future__ import annotations

import re
from importlib.resources import files

from starlette.requests import Request
from starlette.responses import Response

from api.operations import Operation

HTML = "text/html; charset=utf-8"
JAVASCRIPT = "text/javascript; charset=utf-8"
CSS = "text/css; charset=utf-8"

_WEB = files("api") / "web"
PLAYGROUND = (_WEB / "playground.html").read_bytes()
PLAYGROUND_JS = (_WEB / "playground.js").read_bytes()
PLAYGROUND_CSS = (_WEB / "playground.css").read_bytes()
WIDGET_JS = (_WEB / "widget.js").read_bytes()

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
    Operation("GET", "/widget.js", widget_js,
              "The chat widget, <rapport-chat>: a script a business's pages embed (README, "
              "'The chat widget').",
              "pages", media_type="text/javascript"),
    Operation("GET", "/playground.js", playground_js, "The playground's script.", "pages",
              media_type="text/javascript"),
    Operation("GET", "/playground.css", playground_css, "The playground's stylesheet.", "pages",
              media_type="text/css"),
]  # fmt: skip
