"""Error shapes on both route families, request ids, body limits, metrics, logs, OpenAPI."""

from __future__ import annotations

import json
import re
import socket

import httpx
import pytest

from api.app import create_app
from api.docs import openapi_path
from engine.config import Settings
from tests.conftest import Server

LIMITS = "/api/subscription/limits"
PROBLEM_FIELDS = {"type", "title", "status", "detail", "code", "instance", "traceId"}


@pytest.fixture
def authed(server: Server):
    with server.client(headers={"X-Api-Key": server.demo_key}) as client:
        yield client


def assert_problem(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert set(body) >= PROBLEM_FIELDS
    assert body["status"] == status and body["code"] == code
    assert body["type"] == f"/docs#{code}"
    assert body["traceId"] == response.headers["x-request-id"]
    return body


def assert_v1(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"detail"}
    assert set(body["detail"]) == {"code", "message", "request_id"}
    assert body["detail"]["code"] == code
    assert body["detail"]["request_id"] == response.headers["x-request-id"]
    return body


def test_unknown_routes_in_each_family(authed: httpx.Client) -> None:
    assert_problem(authed.get("/api/nothing/here"), 404, "resource.not_found")
    assert_v1(authed.get("/api/v1/nothing"), 404, "not_found")
    assert_problem(authed.get("/nowhere"), 404, "resource.not_found")


def test_wrong_methods_in_each_family(authed: httpx.Client) -> None:
    response = authed.delete(LIMITS)
    assert_problem(response, 405, "request.method_not_allowed")
    assert "GET" in response.headers["allow"]
    assert_problem(authed.post("/healthz"), 405, "request.method_not_allowed")


def test_head_is_answered_where_get_is(authed: httpx.Client) -> None:
    assert authed.head("/healthz").status_code == 200


def test_every_response_carries_a_request_id(server: Server, authed: httpx.Client) -> None:
    seen = set()
    for response in (authed.get("/healthz"), authed.get(LIMITS), authed.get("/api/x")):
        request_id = response.headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{16}", request_id)
        seen.add(request_id)
    assert len(seen) == 3


@pytest.mark.parametrize(
    ("incoming", "kept"),
    [
        ("req-usr-42-001", True),
        ("4611686018427387904-7-a1b2c3", True),
        ("a" * 128, True),
        ("a" * 129, False),
        ("has space", False),
        ("<script>", False),
        ("", False),
    ],
)
def test_a_sane_incoming_request_id_is_echoed(server: Server, incoming: str, kept: bool) -> None:
    with server.client() as client:
        response = client.get("/api/v1/x", headers={"X-Request-Id": incoming})
    echoed = response.headers["x-request-id"]
    assert (echoed == incoming) is kept
    assert response.json()["detail"]["request_id"] == echoed


def raw_exchange(server: Server, head: str, body: bytes) -> tuple[int, dict, bytes]:
    """Send ``head`` and part of a body over a raw socket; read whatever the server says."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head.encode() + body)
        data = b""
        while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + 2:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        try:  # read the rest of the response body, if any
            sock.settimeout(1)
            while chunk := sock.recv(65536):
                data += chunk
        except OSError:
            pass
    head_bytes, _, payload = data.partition(b"\r\n\r\n")
    lines = head_bytes.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, payload


@pytest.mark.parametrize(
    ("path", "v1"), [("/api/v1/conversation", True), ("/api/knowledge/docs", False)]
)
def test_a_50_mb_body_is_refused_before_it_is_read(server: Server, path: str, v1: bool) -> None:
    declared = 50 * 1024 * 1024
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"X-Api-Key: {server.demo_key}\r\nContent-Length: {declared}\r\n\r\n"
    )
    # Only 64 KiB of the 50 MB is ever sent: the answer cannot have waited for the rest.
    status, headers, payload = raw_exchange(server, head, b"x" * 65536)
    assert status == 413
    body = json.loads(payload)
    if v1:
        assert body["detail"]["code"] == "payload_too_large"
    else:
        assert headers["content-type"] == "application/problem+json"
        assert body["code"] == "request.body_too_large"


def test_a_malformed_content_length_is_a_bad_request_not_a_crash(server: Server) -> None:
    # The HTTP parser refuses it before the app sees it (RFC 9110 §8.6: 1*DIGIT).
    head = "POST /api/knowledge/docs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -5\r\n\r\n"
    status, _, _ = raw_exchange(server, head, b"")
    assert status == 400
    with server.client() as client:
        assert client.get("/healthz").status_code == 200


def test_error_bodies_never_carry_internals(authed: httpx.Client) -> None:
    for response in (authed.get("/api/v1/x"), authed.delete(LIMITS), authed.get("/nope")):
        text = response.text
        assert "Traceback" not in text and 'File "' not in text and "starlette" not in text


def test_readyz_reports_each_component(server: Server) -> None:
    with server.client() as client:
        response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {"redis": "ok", "chroma": "ok"}}


def test_metrics_count_requests_by_route_template_and_status(authed: httpx.Client) -> None:
    before = authed.get("/metrics").text
    authed.get(LIMITS)
    authed.get(LIMITS)
    authed.get("/api/v1/unknown-route-abc")
    with httpx.Client(base_url=str(authed.base_url)) as anonymous:
        anonymous.get(LIMITS)
    after = authed.get("/metrics")
    assert after.headers["content-type"].startswith("text/plain")

    def count(text: str, route: str, method: str, status: int) -> float:
        pattern = (
            rf'rapport_http_requests_total\{{method="{method}",route="{re.escape(route)}",'
            rf'status="{status}"\}} ([0-9.e+]+)'
        )
        found = re.search(pattern, text)
        return float(found.group(1)) if found else 0.0

    assert count(after.text, LIMITS, "GET", 200) - count(before, LIMITS, "GET", 200) == 2
    assert count(after.text, LIMITS, "GET", 401) - count(before, LIMITS, "GET", 401) == 1
    unmatched = count(after.text, "<unmatched>", "GET", 404) - count(
        before, "<unmatched>", "GET", 404
    )
    assert unmatched == 1
    assert "unknown-route-abc" not in after.text, "raw paths must not become labels"
    histogram = f'rapport_http_request_duration_seconds_count{{method="GET",route="{LIMITS}"}}'
    assert histogram in after.text


def test_access_log_is_one_json_object_per_request(server: Server) -> None:
    with server.client() as client:
        request_id = client.get("/healthz", headers={"X-Request-Id": "log-probe-1"}).headers[
            "x-request-id"
        ]
    assert request_id == "log-probe-1"
    entry = server.wait_for_log("log-probe-1")
    assert entry["route"] == "/healthz" and entry["status"] == 200
    assert entry["method"] == "GET" and entry["latency_ms"] >= 0
    assert entry["level"] == "info"


def test_openapi_describes_every_route(server: Server) -> None:
    with server.client() as client:
        spec = client.get("/openapi.json").json()
        page = client.get("/docs")
    assert spec["openapi"].startswith("3.1")
    # Every route the app's router answers, walked from the router itself.
    app = create_app(Settings())
    routed = {
        # A WebSocket route is an upgraded GET.
        (openapi_path(route.path), method)
        for route in app.routes
        for method in getattr(route, "methods", {"GET"})
    }
    routed -= {(path, "HEAD") for path, _ in routed}  # Starlette adds HEAD to every GET
    described = {(path, method.upper()) for path, ops in spec["paths"].items() for method in ops}
    assert described == routed
    ids = [op["operationId"] for ops in spec["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))  # clients generate a method per operation id
    limits = spec["paths"][LIMITS]["get"]
    assert limits["security"]
    assert "auth.api_key_disabled" in limits["responses"]["401"]["description"]
    schema = spec["components"]["schemas"]["UsageView"]
    assert set(schema["properties"]) == {
        "knowledgeUnitsUsed",
        "knowledgeUnitsLimit",
        "storageUnitsUsed",
        "storageUnitsLimit",
        "requestBalance",  # our addition
    }
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert LIMITS in page.text and 'id="auth.api_key_disabled"' in page.text
    assert "http://" not in page.text.replace("http://127", "") and "https://" not in page.text
