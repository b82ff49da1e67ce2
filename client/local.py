"""A whole hpod on one machine: embedded Redis, the server and N worker processes.

Used by ``hpod local``, ``hpod demo`` and the end-to-end tests, so all three run the real
parts as separate processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from hpod.server.store.embedded import EmbeddedRedis, free_port

from .sdk import Client


class LocalCluster:
    def __init__(self, workers: int = 2, trainers: tuple[str, ...] = ("mlp", "analytic"),
                 port: int | None = None, redis_url: str | None = None,
                 workdir: str | None = None, data_dir: str | None = None,
                 lease_seconds: float = 10.0, quiet: bool = True,
                 server_args: tuple[str, ...] = (),
                 client_options: dict | None = None, slots: int = 1,
                 worker_args: tuple[str, ...] = ()) -> None:
        self.n_workers = workers
        self.slots = slots  # jobs each worker process runs at once (`hpod worker --slots`)
        self.trainers = trainers
        self.port = port or free_port()
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="hpod-local-"))
        self.redis_url = redis_url
        self.redis: EmbeddedRedis | None = None
        self.data_dir = data_dir
        self.lease_seconds = lease_seconds
        self.quiet = quiet
        self.server_args = server_args  # extra `hpod server` flags (TLS, tokens, limits, ...)
        self.worker_args = worker_args  # extra `hpod worker` flags (--keep-models, ...)
        self.client_options = client_options or {}  # Client(...) keywords: token, tls_ca, ...
        self.server: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _spawn(self, *args: str, log_name: str) -> subprocess.Popen:
        log = open(self.workdir / f"{log_name}.log", "ab")  # noqa: SIM115 (lives with the child)
        out = log if self.quiet else None
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        return subprocess.Popen([sys.executable, "-m", "hpod.client.cli", *args],
                                stdout=out, stderr=out, env=env)

    def start(self) -> LocalCluster:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.redis_url is None:
            self.redis = EmbeddedRedis(str(self.workdir / "redis")).start()
            self.redis_url = self.redis.url
        self.start_server()
        for _ in range(self.n_workers):
            self.add_worker()
        return self

    def start_server(self) -> None:
        self.server = self._spawn("server", "--port", str(self.port), "--redis-url",
                                  str(self.redis_url), "--lease-seconds",
                                  str(self.lease_seconds), *self.server_args,
                                  log_name="server")
        with Client(self.address, **self.client_options) as c:
            c.wait_ready(60)

    def add_worker(self) -> subprocess.Popen:
        args = ["worker", "--redis-url", str(self.redis_url), "--checkpoint-dir",
                str(self.workdir / "checkpoints"), "--lease-seconds", str(self.lease_seconds)]
        for t in self.trainers:
            args += ["--trainer", t]
        if self.data_dir:
            args += ["--data-dir", self.data_dir]
        share = max(1, (os.cpu_count() or 1) // max(1, self.n_workers * self.slots))
        args += ["--threads", str(share)]
        if self.slots != 1:
            args += ["--slots", str(self.slots)]
        proc = self._spawn(*args, *self.worker_args, log_name=f"worker{len(self.workers)}")
        self.workers.append(proc)
        return proc

    def client(self) -> Client:
        return Client(self.address, **self.client_options)

    def stop(self) -> None:
        for proc in [*self.workers, self.server]:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in [*self.workers, self.server]:
            if proc is None:
                continue
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.redis is not None:
            self.redis.stop()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
