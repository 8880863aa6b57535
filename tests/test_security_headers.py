"""Issue 21's small findings, against a real ``rapport serve``: security headers on every
answer and a CSP on ``/docs``; 415 for a JSON route sent another body type; failed
authentication spending the per-IP ``Global`` window; X-Forwarded-For believed only from
RAPPORT_FORWARDED_ALLOW_IPS; ``/metrics`` behind RAPPORT_METRICS_TOKEN."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import time
from collections.abc import Iterator
from html.parser import HTMLParser

import httpx
import pytest

from loadtest.result import ServerSample
from loadtest.server_stats import METRICS_TOKEN_ENV, sample
from tests.conftest import Server, running_together

METRICS_TOKEN = "metrics-" + "0123456789abcdef" * 2
GLOBAL_IP_RPM = 3


@pytest.fixture(scope="module")
def windowed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    """(``proxied``, ``unproxied``), started at once."""
    both = (
        Server(
            tmp_path_factory.mktemp("proxied") / "data",
            RAPPORT_FORWARDED_ALLOW_IPS="127.0.0.1",
            RAPPORT_GLOBAL_IP_RPM=str(GLOBAL_IP_RPM),
            RAPPORT_METRICS_TOKEN=METRICS_TOKEN,
        ),
        Server(
            tmp_path_factory.mktemp("unproxied") / "data", RAPPORT_GLOBAL_IP_RPM=str(GLOBAL_IP_RPM)
        ),
    )
    with running_together(*both):
        yield both


@pytest.fixture(scope="module")
def proxied(windowed: tuple[Server, Server]) -> Server:
    """Behind a proxy on 127.0.0.1, with a tiny Global window and a metrics token. Each
    test picks its own client address with X-Forwarded-For, so windows stay apart."""
    return windowed[0]


@pytest.fixture(scope="module")
def unproxied(windowed: tuple[Server, Server]) -> Server:
    """The default: no proxy named, and the same tiny Global window."""
    return windowed[1]


def answers(server: Server) -> dict[str, httpx.Response]:
    """One answer of each kind: success, each error family, each middleware refusal."""
    key = {"X-Api-Key": server.demo_key}
    with server.client() as client:
        return {
            "api 200": client.get("/api/subscription/limits", headers=key),
            "api 401": client.get("/api/subscription/limits"),
            "api 404": client.get("/api/no-such-route", headers=key),
            "api 413": client.post("/api/sessions", content=b"{" * 2_000_000, headers=key),
            "api 415": client.put(
                "/api/personas/default", content=b"persona_id=x", headers=key | FORM
            ),
            "v1 400": client.post("/api/v1/conversation", json={}, headers=key),
            "healthz": client.get("/healthz"),
            "readyz": client.get("/readyz"),
            "metrics": client.get("/metrics"),
            "openapi": client.get("/openapi.json"),
            "docs": client.get("/docs"),
        }


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def test_every_answer_says_nosniff_and_no_store(server: Server) -> None:
    got = answers(server)
    statuses = {name: answer.status_code for name, answer in got.items()}
    assert statuses["api 401"] == 401 and statuses["api 413"] == 413
    assert statuses["api 404"] == 404 and statuses["v1 400"] == 400
    assert statuses["metrics"] == 200  # without RAPPORT_METRICS_TOKEN, open as before
    for name, answer in got.items():
        assert answer.headers.get_list("x-content-type-options") == ["nosniff"], name
        assert answer.headers.get_list("cache-control") == ["no-store"], name
    # The pages keep their own headers, said once: nosniff, and their revalidation policy.
    with server.client() as client:
        for path in ("/", "/widget.js", "/playground.js", "/playground.css"):
            answer = client.get(path)
            assert answer.status_code == 200, path
            assert answer.headers.get_list("x-content-type-options") == ["nosniff"], path
            assert answer.headers.get_list("cache-control") == ["no-cache"], path


class Page(HTMLParser):
    """What a page would load: elements and attributes that fetch, and inline styles."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.urls: list[str] = []
        self.styles: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self._in_style = tag == "style"
        self.urls += [value or "" for name, value in attrs if name in ("src", "href", "action")]
        assert not any(name == "style" or name.startswith("on") for name, _ in attrs), attrs

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.styles.append(data)


def test_the_docs_page_may_load_nothing_but_its_own_style(server: Server) -> None:
    with server.client() as client:
        answer = client.get("/docs")
    assert answer.status_code == 200
    policy = {
        name: value
        for name, _, value in (
            directive.partition(" ")
            for directive in answer.headers["content-security-policy"].split("; ")
        )
    }
    assert policy["default-src"] == "'none'"
    assert policy["frame-ancestors"] == "'none'" and policy["base-uri"] == "'none'"
    assert set(policy) <= {"default-src", "style-src", "base-uri", "form-action", "frame-ancestors"}
    page = Page()
    page.feed(answer.text)
    # Nothing that fetches, and links only within this server.
    assert not page.tags & {"script", "link", "img", "iframe", "object", "embed", "form"}
    assert page.urls and all(re.match(r"^(/[^/]|#)", url) for url in page.urls), page.urls
    # Each inline stylesheet is allowed by its hash, and nothing else is.
    hashes = {
        "'sha256-" + base64.b64encode(hashlib.sha256(style.encode()).digest()).decode() + "'"
        for style in page.styles
    }
    assert page.styles and set(policy["style-src"].split()) == hashes


def test_a_json_route_reads_json_and_refuses_other_body_types(server: Server) -> None:
    key = {"X-Api-Key": server.demo_key}
    refused = [
        ("PUT", "/api/personas/default", FORM),  # curl -d without -H
        ("PATCH", "/api/personas/default", FORM),  # the {persona_id} route's, not the above's
        ("POST", "/api/sessions", {"Content-Type": "text/plain;charset=UTF-8"}),
        ("PUT", "/api/knowledge/docs", {"Content-Type": "multipart/form-data; boundary=x"}),
        ("POST", "/api/kb/store-pages", {"Content-Type": "application/jsonx"}),
    ]
    with server.client(headers=key) as client:
        for method, path, headers in refused:
            answer = client.request(method, path, content=b"{}", headers=headers)
            assert answer.status_code == 415, (path, answer.text)
            assert answer.headers["content-type"] == "application/problem+json"
            assert answer.json()["code"] == "request.unsupported_media_type", path
        # The conversation family answers in its own shape.
        v1 = client.post("/api/v1/conversation", content=b"user_id=u&message=hi", headers=FORM)
        assert v1.status_code == 415
        assert v1.json()["detail"]["code"] == "unsupported_media_type"
        # Still no key, no answer: authentication comes first.
        anonymous = httpx.put(
            f"{server.base_url}/api/personas/default", content=b"{}", headers=FORM
        )
        assert anonymous.status_code == 401
        # JSON with parameters, a +json type, and no type at all are read.
        for headers in (
            {"Content-Type": "application/json; charset=utf-8"},
            {"Content-Type": "Application/JSON"},
            {"Content-Type": "application/merge-patch+json"},
            {},  # undeclared: read as JSON (README, "Errors")
        ):
            # Read and validated: the missing persona_id is a 400, not a 415.
            answer = client.put("/api/personas/default", content=b"{}", headers=headers)
            assert answer.status_code == 400, (headers, answer.text)
            assert answer.json()["code"] == "validation.failed"
        # Routes with bodies of their own types keep them: NDJSON streaming, multipart files.
        streamed = client.post(
            "/api/kb/stream-pages?stream_id=s",
            content=b"this line is not json\n",
            headers={"Content-Type": "application/x-ndjson"},
        )
        assert streamed.status_code == 200, streamed.text
        uploaded = client.post("/api/knowledge/files", files={"file": ("a.exe", b"MZ\x90\x00")})
        assert uploaded.json()["code"] == "upload.unsupported_type"


def test_failed_authentication_spends_the_ip_window(proxied: Server) -> None:
    guesser = {"X-Forwarded-For": "203.0.113.9"}
    with proxied.client(headers=guesser) as client:
        for n in range(GLOBAL_IP_RPM):
            wrong = {"X-Api-Key": f"rk_live_guess{n}"} if n else {}
            assert client.get("/api/subscription/limits", headers=wrong).status_code == 401
        flooded = client.get("/api/subscription/limits", headers={"X-Api-Key": "rk_live_x"})
        assert flooded.status_code == 429
        assert flooded.json()["code"] == "limits.rate_exceeded"
        assert int(flooded.headers["retry-after"]) >= 1
        # The right key from that address waits too: a guess cannot tell it is right.
        right = client.get("/api/subscription/limits", headers={"X-Api-Key": proxied.demo_key})
        assert right.status_code == 429


def limited_from(server: Server, addresses: list[str]) -> list[int]:
    with server.client(headers={"X-Api-Key": server.demo_key}) as client:
        return [
            client.get("/api/subscription/limits", headers={"X-Forwarded-For": address}).status_code
            for address in addresses
        ]


def socket_scheme(server: Server, address: str) -> str:
    """The scheme of a minted session's ``ws_url`` when the request says it came over TLS."""
    with server.client(headers={"X-Api-Key": server.demo_key}) as client:
        minted = client.post(
            "/api/sessions",
            json={"user_id": "behind-a-proxy", "mode": "chat"},
            headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": address},
        )
    assert minted.status_code == 201, minted.text
    return minted.json()["ws_url"].partition(":")[0]


def test_forwarded_headers_are_believed_only_from_a_named_proxy(
    unproxied: Server, proxied: Server
) -> None:
    # By default every request is 127.0.0.1's over plain HTTP, whatever it claims: the
    # mint spends one of the window, and the last of the others is over it.
    assert socket_scheme(unproxied, "198.51.100.99") == "ws"
    addresses = [f"198.51.100.{n}" for n in range(GLOBAL_IP_RPM)]
    assert limited_from(unproxied, addresses) == [200] * (GLOBAL_IP_RPM - 1) + [429]
    # From a named proxy each address has its own window, and its TLS is the socket's.
    assert socket_scheme(proxied, "192.0.2.99") == "wss"
    addresses = [f"192.0.2.{n}" for n in range(GLOBAL_IP_RPM + 1)]
    assert limited_from(proxied, addresses) == [200] * (GLOBAL_IP_RPM + 1)
    request_id = "forwarded-for-check"
    with proxied.client() as client:
        client.get(
            "/healthz", headers={"X-Forwarded-For": "192.0.2.77", "X-Request-Id": request_id}
        )
    assert proxied.wait_for_log(request_id)["client"] == "192.0.2.77"


def test_metrics_need_the_token_when_one_is_set(proxied: Server) -> None:
    with proxied.client() as client:
        refused = [
            client.get("/metrics"),
            client.get("/metrics", headers={"Authorization": "Bearer wrong-token-of-some-length"}),
            client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}x"}),
            client.get("/metrics", headers={"X-Api-Key": METRICS_TOKEN}),  # bearer only
        ]
        allowed = client.get("/metrics", headers={"Authorization": f"bearer {METRICS_TOKEN}"})
    for answer in refused:
        assert answer.status_code == 401
        assert answer.headers["www-authenticate"].startswith("Bearer")
        assert "process_resident_memory_bytes" not in answer.text
    assert allowed.status_code == 200
    assert "process_resident_memory_bytes" in allowed.text


def test_the_load_tester_reads_metrics_with_the_token(
    proxied: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(METRICS_TOKEN_ENV, METRICS_TOKEN)
    samples: list[ServerSample] = []

    async def sample_briefly() -> None:
        task = asyncio.create_task(sample(proxied.base_url, time.monotonic(), samples, 0.5))
        await asyncio.sleep(1.6)
        task.cancel()

    asyncio.run(sample_briefly())
    # Any sample answered in time has the figures; without the token none would.
    assert any(s.rss_bytes for s in samples), samples
