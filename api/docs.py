"""``GET /openapi.json`` and ``GET /docs``: the API described from the operation table.

The docs page is rendered here, on the server, from the same OpenAPI document: it needs
no script or stylesheet from the internet, which many deployments cannot reach. Its one
inline stylesheet, allowed by its hash (a CSP Level 3 hash-source), is all its
Content-Security-Policy lets it use: markup that ever slipped past escaping into the page
could run no script and load nothing.
"""

from __future__ import annotations

import base64
import hashlib
import re
from html import escape
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from api.operations import Operation
from api.problems import Problem, V1Error, is_v1
from api.responses import JSON
from engine.errors import Failure

REF = "#/components/schemas/{name}"
PATH_PARAM = re.compile(r"{([^}:]+)(?::[^}]+)?}")

STYLE = (
    "body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
    "section{border-top:1px solid #ddd;padding:.25rem 0}.m{display:inline-block;"
    "min-width:4.5rem;font-weight:700}table{border-collapse:collapse}"
    "td,th{border:1px solid #ddd;padding:.2rem .5rem;text-align:left}"
)
_STYLE_HASH = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
# Nothing but STYLE: no script, image, font, frame or connection; links still navigate.
CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
# What a route that reads a JSON body answers a body of another type (api.headers).
JSON_BODY = (Failure.UNSUPPORTED_MEDIA_TYPE,)

# Failures any route may answer, beyond the ones its operation names.
EVERY_ROUTE = (Failure.NOT_FOUND, Failure.METHOD_NOT_ALLOWED, Failure.INTERNAL)
AUTHENTICATED = (
    Failure.MISSING_API_KEY,
    Failure.INVALID_API_KEY,
    Failure.DISABLED_API_KEY,
    Failure.STATE_UNAVAILABLE,
)


def build_openapi(operations: list[Operation], version: str) -> dict[str, Any]:
    bodies = [t for op in operations for t in (op.response, op.request) if t is not None]
    schemas, components = msgspec.json.schema_components(
        [*bodies, V1Error, Problem], ref_template=REF
    )
    body_schema = dict(zip(bodies, schemas, strict=False))
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        paths.setdefault(openapi_path(op.path), {})[op.method.lower()] = _operation(op, body_schema)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Rapport",
            "version": version,
            "description": (
                "Self-hostable real-time conversation engine. Routes under /api/v1/ answer "
                'errors as {"detail": {"code", "message", "request_id"}}; other routes under '
                "/api/ as RFC 9457 application/problem+json with a `code` extension."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "ApiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
                "Bearer": {"type": "http", "scheme": "bearer"},
            },
        },
    }


def openapi_path(path: str) -> str:
    """Starlette's ``{user_id:path}`` is OpenAPI's ``{user_id}``."""
    return PATH_PARAM.sub(r"{\1}", path)


def _operation(op: Operation, body_schema: dict[type, Any]) -> dict[str, Any]:
    success: dict[str, Any] = {"description": op.summary}
    if op.websocket:
        # OpenAPI has no words for a socket: the upgrade is a GET answered 101, and what
        # can go wrong after it is a close code, told in the summary.
        return {
            "operationId": f"socket_{op.endpoint.__name__}",
            "summary": op.summary,
            "tags": [op.tag],
            "responses": {"101": success},
            "parameters": [
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                for name in PATH_PARAM.findall(op.path)
            ],
        }
    if op.response is not None:
        success["content"] = {op.media_type: {"schema": body_schema[op.response]}}
    else:
        untyped = "object" if op.media_type == "application/json" else "string"
        success["content"] = {op.media_type: {"schema": {"type": untyped}}}
    responses: dict[str, Any] = {str(op.status): success}
    failures = (
        *op.failures,
        *(JSON_BODY if op.request is not None else ()),
        *(AUTHENTICATED if op.authenticated else ()),
        *EVERY_ROUTE,
    )
    v1 = is_v1(op.path)
    error_schema = {"$ref": REF.format(name="V1Error" if v1 else "Problem")}
    error_media = "application/json" if v1 else "application/problem+json"
    by_status: dict[int, list[str]] = {}
    for failure in failures:
        code = failure.v1_code if v1 else failure.code
        if code not in by_status.setdefault(failure.status, []):
            by_status[failure.status].append(code)
    for status, codes in sorted(by_status.items()):
        responses[str(status)] = {
            "description": "code: " + ", ".join(codes),
            "content": {error_media: {"schema": error_schema}},
        }
    entry: dict[str, Any] = {
        "operationId": f"{op.method.lower()}_{op.endpoint.__name__}",
        "summary": op.summary,
        "tags": [op.tag],
        "responses": responses,
    }
    params = PATH_PARAM.findall(op.path)
    if params:
        entry["parameters"] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in params
        ]
    if op.request is not None:
        entry["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": body_schema[op.request]}},
        }
    if op.authenticated:
        entry["security"] = [{"ApiKeyHeader": []}, {"Bearer": []}]
    return entry


def render_docs(spec: dict[str, Any]) -> str:
    rows = []
    for path, methods in spec["paths"].items():
        for method, entry in methods.items():
            codes = "".join(
                f"<li><b>{escape(status)}</b> {escape(resp['description'])}</li>"
                for status, resp in entry["responses"].items()
            )
            lock = " &#128273;" if "security" in entry else ""
            rows.append(
                f'<section><h3><span class="m">{method.upper()}</span> <code>{escape(path)}'
                f"</code>{lock}</h3><p>{escape(entry['summary'])}</p><ul>{codes}</ul></section>"
            )
    errors = "".join(
        f'<tr id="{escape(f.code)}"><td>{f.status}</td><td><code>{escape(f.code)}</code></td>'
        f"<td><code>{escape(f.v1_code)}</code></td><td>{escape(f.title)}</td>"
        f"<td>{f.close_code}</td></tr>"
        for f in Failure
    )
    title = escape(spec["info"]["title"])
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{title} API</title><style>{STYLE}</style></head><body>"
        f"<h1>{title} API {escape(spec['info']['version'])}</h1>"
        f"<p>{escape(spec['info']['description'])}</p>"
        "<p>Machine-readable: <a href='/openapi.json'>/openapi.json</a>. &#128273; = needs "
        "<code>X-Api-Key</code> or <code>Authorization: Bearer</code>.</p>"
        f"<h2>Endpoints</h2>{''.join(rows)}<h2>Errors</h2><table><tr><th>HTTP</th>"
        "<th>code (/api/)</th><th>code (/api/v1/)</th><th>title</th><th>WebSocket close</th>"
        f"</tr>{errors}</table></body></html>"
    )


async def openapi_json(request: Request) -> Response:
    return JSON(request.app.state.openapi)


async def docs(request: Request) -> Response:
    return HTMLResponse(
        request.app.state.docs_html,
        headers={
            "Content-Security-Policy": CONTENT_SECURITY_POLICY,
            "Referrer-Policy": "no-referrer",
        },
    )


OPERATIONS = [
    Operation("GET", "/openapi.json", openapi_json, "This API as OpenAPI 3.1.", "docs"),
    Operation(
        "GET",
        "/docs",
        docs,
        "This API as a page, with the error table.",
        "docs",
        media_type="text/html",
    ),
]
