"""Upload memory (issue 21, items 3 and 2): the peak memory of reading a crafted .docx, and
of a large JSON body sent to ``POST /api/kb/stream-pages``.

The crafted file is a valid .docx (python-docx's own package, its word/document.xml
replaced) whose document.xml is ``--mib`` MiB of the densest text Word markup,
``<w:p><w:r><w:t>x</w:t></w:r></w:p>`` over and over: a few hundred KB zipped. Each
measurement runs in a fresh Python process (so no other allocation counts) and reports
its peak resident set during the call (VmHWM, reset by ``/proc/self/clear_refs`` just
before it) less its resident set then (VmRSS), and the call's wall time:

- ``estimate+extract``: ``kb.extract.estimate_pages`` then ``kb.extract.extract``, what an
  upload costs the API process and then the worker. Over ``MAX_DOCX_UNPACKED_BYTES`` it is
  refused from the archive's directory (413 ``upload.file_too_large``) before any parsing.
- ``3 at once``: the same, in three threads of one process, as three uploads to one server
  (the issue's three crafted uploads at once reached 6.1 GB); at most ``DOCX_PARSES`` (2)
  parse at a time.
- ``python-docx`` (the peer, the code path before issue 21): ``docx.Document`` on the same
  bytes, which builds the whole lxml tree of every part, as ``kb.extract`` did to count the
  pages and read the text.

- with ``--before FILE``, ``estimate+extract before``: the same calls of an earlier
  ``kb/extract.py`` (``git show b68954a:kb/extract.py > /tmp/extract_before.py``), which
  read the pages and text from python-docx's tree.

Sizes: ``--mib`` for the refused file (default 100, the issue's crafted upload unpacked to
128 MiB) and just under the cap (31 MiB) for the largest file that is parsed.

stream-pages (item 2): one valid JSON document, ``{"stream_data": {..., "pages": [{"title":
"t", "content": "xxx..."}]}}`` with ``--stream-mib`` MiB of content (default 512, at most
1024), sent chunked (no ``Content-Length``) in 1 MiB chunks over loopback, with the demo key,
to a real ``rapport serve`` (one process, a fresh data dir). The server's own
``/proc/<pid>/status`` gives the figures: its peak resident set over the request (VmHWM, reset
through ``/proc/<pid>/clear_refs`` just before), and VmRSS sampled every 2 ms as a check, each
less its VmRSS before; and its VmRSS once it has answered. With the answer's status and code:

- ``after``: this tree, whose JSON branch reads at most ``BODY_LIMIT`` (16 MiB): 413.
- ``before``, with ``--before-tree DIR``: the same, served by the code in DIR (``git worktree
  add /tmp/rapport-b68954a b68954a``) with this interpreter, whose JSON branch read the whole
  body (``await request.body()``) and decoded it: 400, the page's content being too long.
- ``peer``: a bare Starlette endpoint that reads ``await request.body()`` (what the branch
  before did, without the decode) and answers its length, in its own uvicorn process.

    .venv/bin/python -m bench.upload_memory [--mib 100] [--before /tmp/extract_before.py]
        [--stream-mib 512] [--before-tree /tmp/rapport-b68954a] [--only docx|stream]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import docx

from bench.harness import run_bench, spawn_ready_rapport
from bench.http_overhead import LOOPBACK, Server, free_port, serve_like_rapport, spawn, wait_ready

DENSE = b"<w:p><w:r><w:t>x</w:t></w:r></w:p>"
W = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"


def crafted_docx(mib: float) -> bytes:
    """A valid .docx whose document.xml is ``mib`` MiB of one-character paragraphs."""
    blank = io.BytesIO()
    docx.Document().save(blank)
    count = int(mib * 1024 * 1024) // len(DENSE)
    xml = b"".join(
        (f'<w:document xmlns:w="{W}"><w:body>'.encode(), DENSE * count, b"</w:body></w:document>")
    )
    out = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(blank.getvalue())) as source,
        zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as target,
    ):
        for info in source.infolist():
            data = xml if info.filename == "word/document.xml" else source.read(info)
            target.writestr(info.filename, data)
    return out.getvalue()


# Run in a fresh interpreter: reads the file, measures one call, prints JSON.
MEASURE = """
import json, sys, time
data = open(sys.argv[2], "rb").read()
if sys.argv[1] in ("ours", "ours3", "before"):
    if sys.argv[1] != "before":
        from kb.extract import FileTooLarge, estimate_pages, extract
    else:
        import importlib.util
        spec = importlib.util.spec_from_file_location("before", sys.argv[3])
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        FileTooLarge, estimate_pages, extract = (
            module.FileTooLarge, module.estimate_pages, module.extract
        )
    def call():
        try:
            pages = estimate_pages("docx", data)
            return f"{pages} pages, text of {len(extract('docx', data, max_pages=10**9).text)}"
        except FileTooLarge as error:
            return f"refused: {error.failure.code}: {error.message}"
else:
    import io, docx
    def call():
        return f"{len(docx.Document(io.BytesIO(data)).element.body)} body elements"
def status_kib(field):
    return int(open("/proc/self/status").read().split(field + ":")[1].split()[0])
if sys.argv[1] == "ours3":
    from concurrent.futures import ThreadPoolExecutor
    one = call
    def call():
        with ThreadPoolExecutor(3) as pool:
            outcomes = set(pool.map(lambda _: one(), range(3)))
        return " / ".join(outcomes) + (" (all three)" if len(outcomes) == 1 else "")
before = status_kib("VmRSS")
with open("/proc/self/clear_refs", "w") as clear:
    clear.write("5")  # the peak (VmHWM) starts again from the resident set now
start = time.perf_counter()
outcome = call()
seconds = time.perf_counter() - start
peak = status_kib("VmHWM")
print(json.dumps({"outcome": outcome, "mib": (peak - before) / 1024, "seconds": seconds}))
"""


MEASURED = (
    ("ours", "estimate+extract"),
    ("ours3", "3 at once, 3 threads"),
    ("peer", "python-docx (before)"),
)


def measure(which: str, path: str, before: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, which, path, before],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)


STREAM_PATH = "/api/kb/stream-pages"
STREAM_PREFIX = b'{"stream_data": {"stream_id": "s", "pages": [{"title": "t", "content": "'
STREAM_SUFFIX = b'"}]}}'
MAX_STREAM_MIB = 1024
"""No more than 1 GiB through any server: the code before held it twice over (the issue's
1 GiB took the process to 2.36 GB)."""
MIB = 1024 * 1024
SAMPLE_S = 0.002


def serve_peer(port: int) -> None:
    """The peer: one Starlette route that reads the whole body, as the JSON branch before did."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def body(request: Request) -> JSONResponse:
        return JSONResponse({"bytes": len(await request.body())})

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    routes = [Route(STREAM_PATH, body, methods=["POST"]), Route("/healthz", healthz)]
    serve_like_rapport(Starlette(routes=routes), port)


def status_kib(pid: int, field: str) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split(f"{field}:")[1].split()[0])


def chunked_json(mib: int) -> Iterator[bytes]:
    """The JSON document with ``mib`` MiB of content, in HTTP/1.1 chunks (RFC 9112 7.1)."""
    piece = b"x" * MIB
    for data in (STREAM_PREFIX, *(piece for _ in range(mib)), STREAM_SUFFIX):
        yield b"%x\r\n%s\r\n" % (len(data), data)
    yield b"0\r\n\r\n"


def post_chunked(port: int, key: str, mib: int) -> bytes:
    """Send the request while reading the answer; the server may answer, and close, before
    the body is done (a 413), which resets the connection (RFC 9112 section 9.6)."""
    sock = socket.create_connection((LOOPBACK, port), timeout=300)
    head = (
        f"POST {STREAM_PATH} HTTP/1.1\r\nHost: {LOOPBACK}\r\nConnection: close\r\n"
        f"X-Api-Key: {key}\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    )

    def send() -> None:
        with contextlib.suppress(OSError):  # answered and closed: the rest is not wanted
            sock.sendall(head.encode())
            for piece in chunked_json(mib):
                sock.sendall(piece)

    sender = threading.Thread(target=send)
    sender.start()
    received = bytearray()
    try:
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                received += chunk
    finally:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # a sender still blocked in sendall gets out
        sender.join(60)
        sock.close()
    return bytes(received)


def answer_of(received: bytes) -> str:
    """The status and the problem's code, or what the peer read: ``413 request.body_too_large``."""
    head, _, body = received.partition(b"\r\n\r\n")
    if not head:
        return "no answer"
    status = head.split(b" ", 2)[1].decode()
    if b"transfer-encoding: chunked" in head.lower():
        size, _, rest = body.partition(b"\r\n")
        body = rest[: int(size, 16)]
    with contextlib.suppress(ValueError):
        got = json.loads(body)
        if "bytes" in got:
            return f"{status}, {got['bytes'] / MIB:.1f} MiB read"
        return f"{status} {got.get('code')}"
    return status


def measure_stream(pid: int, port: int, key: str, mib: int) -> dict[str, object]:
    """The server's memory over one request: VmHWM and sampled VmRSS above VmRSS before."""
    before = status_kib(pid, "VmRSS")
    # "5" resets the peak resident set (VmHWM) to the current one (proc(5), clear_refs).
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    sampled = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(SAMPLE_S):
            sampled.append(status_kib(pid, "VmRSS"))

    sampler = threading.Thread(target=sample)
    sampler.start()
    start = time.perf_counter()
    try:
        received = post_chunked(port, key, mib)
    finally:
        seconds = time.perf_counter() - start
        done.set()
        sampler.join()
    peak = status_kib(pid, "VmHWM")
    time.sleep(1.0)  # what the server keeps once it has answered and settled
    return {
        "answer": answer_of(received),
        "peak": (peak - before) / 1024,
        "sampled": (max(sampled) - before) / 1024,
        "kept": (status_kib(pid, "VmRSS") - before) / 1024,
        "seconds": seconds,
    }


def stream_pages(mib: int, before_tree: str) -> None:
    def body(workdir: Path, servers: list[Server]) -> None:
        targets: list[tuple[str, Server, int, str]] = []
        server, base, key = spawn_ready_rapport(
            workdir / "after", workdir / "after.log", servers, {}
        )
        targets.append(("after: this tree", server, int(base.rsplit(":", 1)[1]), key))
        if before_tree:
            tree = str(Path(before_tree).resolve())
            # -P: no working directory on sys.path, so PYTHONPATH puts the tree's modules
            # ahead of this checkout's (installed editable, found after both).
            command = [sys.executable, "-P", "-m", "api.cli", "serve"]
            server, base, key = spawn_ready_rapport(
                workdir / "before", workdir / "before.log", servers, {"PYTHONPATH": tree}, command
            )
            targets.append(("before: b68954a", server, int(base.rsplit(":", 1)[1]), key))
        port = free_port()
        command = [sys.executable, "-m", "bench.upload_memory", "--serve-peer", str(port)]
        peer = spawn("peer", command, dict(os.environ), workdir / "peer.log")
        servers.append(peer)
        wait_ready(peer, f"http://{LOOPBACK}:{port}/healthz")
        targets.append(("peer: await request.body()", peer, port, ""))
        size = len(STREAM_PREFIX) + mib * MIB + len(STREAM_SUFFIX)
        print(f"\nstream-pages: a chunked JSON body of {size / MIB:.1f} MiB ({size} bytes)")
        for name, server, port, key in targets:
            got = measure_stream(server.proc.pid, port, key, mib)
            print(
                f"  {name:28} peak +{got['peak']:7.1f} MiB (sampled +{got['sampled']:7.1f})  "
                f"kept +{got['kept']:7.1f} MiB  {got['seconds']:6.2f} s  {got['answer']}"
            )

    if run_bench(body, prefix="rapport-upload-memory-"):
        raise SystemExit(130)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=float, default=100.0)
    parser.add_argument("--before", default="", help="an earlier kb/extract.py to measure too")
    parser.add_argument("--stream-mib", type=int, default=512, help="the JSON body's content")
    parser.add_argument("--before-tree", default="", help="a checkout of b68954a to serve too")
    parser.add_argument("--only", choices=("docx", "stream"), help="one of the two parts")
    parser.add_argument("--serve-peer", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_peer:
        serve_peer(args.serve_peer)
        return
    if not 0 < args.stream_mib <= MAX_STREAM_MIB:
        parser.error(f"--stream-mib: 1 to {MAX_STREAM_MIB}")
    measured = [*MEASURED, *([("before", "estimate+extract before")] if args.before else [])]
    print(f"command: {' '.join([sys.executable, '-m', 'bench.upload_memory', *sys.argv[1:]])}")
    load = ", ".join(f"{n:.1f}" for n in os.getloadavg())
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, load average {load}")
    if args.only != "docx":
        stream_pages(args.stream_mib, args.before_tree)
    if args.only == "stream":
        return
    for mib in (args.mib, 31.0):
        data = crafted_docx(mib)
        with tempfile.NamedTemporaryFile(suffix=".docx") as file:
            file.write(data)
            file.flush()
            results = [(name, measure(which, file.name, args.before)) for which, name in measured]
        print(f"\ncrafted docx: {len(data) / 1024:.0f} KiB, document.xml {mib:g} MiB")
        for name, got in results:
            print(
                f"  {name:25} peak +{got['mib']:7.1f} MiB  {got['seconds']:6.2f} s  "
                f"{got['outcome']}"
            )


if __name__ == "__main__":
    main()
