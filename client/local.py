"""A whole hpod on one machine: embedded Redis, the server and N worker processes.

Used by ``hpod local``, ``hpod demo`` and the end-to-end tests, so all three run the real
parts as separate processes.

``hpod local`` keeps everything in one working directory (``./.hpod`` unless ``--workdir``
says otherwise): Redis's append-only file (fsync every second), the checkpoints and one log per
process. Run it again in the same directory and every study resumes where it was.

Every hpod child runs in a session of its own and Redis with SIGINT blocked, so a Ctrl-C in the
terminal reaches only ``hpod local``, which then stops them in order (workers and server, then
Redis) with bounded waits; and each hpod child is told by the kernel to exit if ``hpod local``
dies without that chance (Linux).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .parent import PARENT_ENV
from .sdk import Client

if TYPE_CHECKING:
    import argparse

    from hpod.server.store.embedded import EmbeddedRedis

DEFAULT_TRAINERS = ("mlp", "analytic")
STOP_SECONDS = 8.0  # how long a child gets after SIGTERM before SIGKILL




class LocalCluster:
    def __init__(self, workers: int = 2, trainers: tuple[str, ...] = DEFAULT_TRAINERS,
                 port: int | None = None, redis_url: str | None = None,
                 workdir: str | None = None, data_dir: str | None = None,
                 lease_seconds: float = 10.0, quiet: bool = True,
                 server_args: tuple[str, ...] = (),
                 client_options: dict | None = None, slots: int = 1,
                 worker_args: tuple[str, ...] = (), host: str = "127.0.0.1",
                 cleanup: bool = False) -> None:
        self.n_workers = workers
        self.slots = slots  # jobs each worker process runs at once (`hpod worker --slots`)
        self.trainers = tuple(trainers)
        self.host = host
        self.port = port or free_port()
        self.cleanup = cleanup  # delete the working directory at stop (the demo's temp folder)
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
        self.replicas: dict[int, subprocess.Popen] = {}  # further servers by port
        self.workers: list[subprocess.Popen] = []
        self.worker_trainers: list[tuple[str, ...]] = []  # what each worker runs
        self.worker_logs: list[Path] = []

    @property
    def address(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"{host}:{self.port}"

    def _spawn(self, *args: str, log_name: str) -> subprocess.Popen:
        log = open(self.workdir / f"{log_name}.log", "ab")  # noqa: SIM115 (lives with the child)
        out = log if self.quiet else None
        env = {**os.environ, "PYTHONUNBUFFERED": "1", PARENT_ENV: str(os.getpid())}
        return subprocess.Popen([sys.executable, "-m", "hpod.client.cli", *args],
                                stdout=out, stderr=out, env=env, start_new_session=True)

    def start(self) -> LocalCluster:
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
            if self.redis_url is None:
                from hpod.server.store.embedded import EmbeddedRedis

                # Started with SIGINT blocked (a child inherits the mask): a Ctrl-C in the
                # terminal reaches the whole foreground group, and Redis must outlive the
                # workers and the server, which hand their jobs back to it as they stop.
                old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
                try:
                    self.redis = EmbeddedRedis(str(self.workdir / "redis")).start()
                finally:
                    signal.pthread_sigmask(signal.SIG_SETMASK, old)
                self.redis_url = self.redis.url
            self.start_server()
            for _ in range(self.n_workers):
                self.add_worker()
        except BaseException:
            self.stop()
            raise
        return self

    def start_server(self) -> None:
        self.server = self.launch_server(self.port, "server")

    def launch_server(self, port: int, log_name: str) -> subprocess.Popen:
        proc = self._spawn("server", "--host", self.host, "--port", str(port),
                           "--redis-url", str(self.redis_url), "--lease-seconds",
                           str(self.lease_seconds), "--checkpoint-dir",
                           str(self.workdir / "checkpoints"), *self.server_args,
                           log_name=log_name)
        host = self.address.rpartition(":")[0]
        with Client(f"{host}:{port}", **self.client_options) as c:
            c.wait_ready(60)
        return proc

    def add_replica(self, port: int) -> subprocess.Popen:
        """One more server on the same Redis (a replica: ``server/ownership.py``), logging to
        ``server-<port>.log``; stopped with the cluster."""
        proc = self.launch_server(port, f"server-{port}")
        self.replicas[port] = proc
        return proc

    def add_worker(self, trainers: tuple[str, ...] | None = None) -> subprocess.Popen:
        trainers = tuple(trainers or self.trainers)
        args = ["worker", "--redis-url", str(self.redis_url), "--checkpoint-dir",
                str(self.workdir / "checkpoints"), "--lease-seconds", str(self.lease_seconds)]
        for t in trainers:
            args += ["--trainer", t]
        if self.data_dir:
            args += ["--data-dir", self.data_dir]
        share = max(1, (os.cpu_count() or 1) // max(1, self.n_workers * self.slots))
        args += ["--threads", str(share)]
        if self.slots != 1:
            args += ["--slots", str(self.slots)]
        name = f"worker{len(self.workers)}"
        proc = self._spawn(*args, *self.worker_args, log_name=name)
        self.workers.append(proc)
        self.worker_trainers.append(trainers)
        self.worker_logs.append(self.workdir / f"{name}.log")
        return proc

    def served_trainers(self) -> set[str]:
        return {t for p, ts in zip(self.workers, self.worker_trainers, strict=True)
                if p.poll() is None for t in ts}

    def client(self) -> Client:
        return Client(self.address, **self.client_options)

    def stop(self, timeout: float = STOP_SECONDS) -> None:
        """SIGTERM to every worker and the server at once, SIGKILL to any still running after
        ``timeout`` s, then Redis (which writes its append-only file on SIGTERM)."""
        procs = [p for p in [*self.workers, self.server, *self.replicas.values()]
                 if p is not None]
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.redis is not None:
            self.redis.stop()
        if self.cleanup:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalError(RuntimeError):
    """``hpod local`` cannot start; the message says why and what to do."""


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


class _Lock:
    """``WORKDIR/local.pid``: one ``hpod local`` per working directory (two Redis servers on
    one append-only file would corrupt it)."""

    def __init__(self, workdir: Path) -> None:
        self.path = workdir / "local.pid"

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            pid = int(self.path.read_text().strip())
        except (OSError, ValueError):
            pid = 0
        if pid and pid != os.getpid() and _alive(pid):
            raise LocalError(f"another hpod local (pid {pid}) is using {self.path.parent}; "
                             "stop it, or pass --workdir DIR for a separate one")
        self.path.write_text(f"{os.getpid()}\n")

    def release(self) -> None:
        try:
            if self.path.read_text().strip() == str(os.getpid()):
                self.path.unlink()
        except OSError:
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _studies_needing_trainers(client: Client) -> dict[str, str]:
    """Active study id -> its trainer, for studies that hpod workers run."""
    from hpod.v1 import hpod_pb2 as pb

    return {s.id: s.spec.trainer for s in client.list_studies()
            if s.state == pb.STUDY_STATE_ACTIVE and s.spec.trainer}


class _Terminated(Exception):
    """SIGTERM or SIGHUP arrived: stop like Ctrl-C does."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise _Terminated(signal.Signals(signum).name)


def run_local(args: argparse.Namespace) -> int:
    """``hpod local``: start, keep the workers matched to the studies, stop on a signal."""
    import json

    workdir = Path(args.workdir).expanduser().resolve()
    lock = _Lock(workdir)
    try:
        lock.acquire()
        if _port_in_use(args.host, args.port):
            raise LocalError(f"port {args.port} on {args.host} is in use (another hpod server "
                             "or hpod local?); pass --port N")
    except LocalError as e:
        print(f"hpod local: {e}", file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_terminated)
    # Even when started with SIGINT ignored (`hpod local &` from a script): SIGINT stops it too.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    explicit = tuple(dict.fromkeys(args.trainer or ()))
    mirror = ("--optuna-storage", args.optuna_storage) if args.optuna_storage else ()
    cluster = LocalCluster(workers=args.workers, port=args.port, redis_url=args.redis_url,
                           workdir=str(workdir), data_dir=args.data_dir, host=args.host,
                           trainers=explicit or DEFAULT_TRAINERS, server_args=mirror)
    try:
        cluster.n_workers = 0  # workers start below, once the stored studies are known
        cluster.start()
        cluster.n_workers = args.workers
        with cluster.client() as client:
            needed = _studies_needing_trainers(client)
            if not explicit:
                cluster.trainers = tuple(dict.fromkeys([*DEFAULT_TRAINERS, *needed.values()]))
            for _ in range(args.workers):
                cluster.add_worker()
            about = {"address": cluster.address, "redis_url": cluster.redis_url,
                     "workdir": str(workdir), "workers": args.workers,
                     "trainers": list(cluster.trainers), "resumed_studies": sorted(needed),
                     "pid": os.getpid()}
            if args.json:
                print(json.dumps(about), flush=True)
            else:
                print(f"hpod local: server {cluster.address}, {args.workers} workers "
                      f"({', '.join(cluster.trainers)}), data and logs in {workdir}"
                      + (f"; resuming {len(needed)} active studies" if needed else "")
                      + "; Ctrl-C stops all", flush=True)
            _supervise(cluster, client, explicit)
    except (KeyboardInterrupt, _Terminated) as e:
        why = "Ctrl-C" if isinstance(e, KeyboardInterrupt) else str(e)
        print(f"hpod local: {why}: stopping server, workers and Redis "
              f"(studies are kept in {workdir})", file=sys.stderr, flush=True)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the stop
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        cluster.stop()
        lock.release()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return 0


def _last_line(path: Path) -> str:
    """The last line a process logged: usually why it exited."""
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    return " ".join(lines[-1].split())[:300] if lines else "nothing logged"


def _supervise(cluster: LocalCluster, client: Client, explicit: tuple[str, ...]) -> None:
    """Until the server exits: start workers for a new study's trainer (unless ``--trainer``
    fixed the set, then say plainly that it waits), and report workers that died."""
    warned: set[str] = set()
    reported: set[int] = set()
    while cluster.server is not None and cluster.server.poll() is None:
        time.sleep(1.0)
        for i, proc in enumerate(cluster.workers):
            if proc.poll() is not None and i not in reported:
                reported.add(i)
                print(f"hpod local: worker {i} ({', '.join(cluster.worker_trainers[i])}) exited "
                      f"with code {proc.returncode}: {_last_line(cluster.worker_logs[i])} (see "
                      f"{cluster.worker_logs[i]})", file=sys.stderr, flush=True)
        try:
            needed = _studies_needing_trainers(client)
        except Exception:  # the server is stopping or busy: try again next second
            continue
        served = cluster.served_trainers()
        for sid, trainer in sorted(needed.items()):
            if trainer in served or trainer in warned:
                continue
            warned.add(trainer)
            if explicit:
                print(f"hpod local: study {sid} needs trainer {trainer!r}, which no worker here "
                      f"runs (--trainer {' --trainer '.join(explicit)}); it waits. Restart "
                      f"with --trainer {trainer} as well", file=sys.stderr, flush=True)
                continue
            print(f"hpod local: study {sid} needs trainer {trainer!r}: starting "
                  f"{cluster.n_workers} workers for it", file=sys.stderr, flush=True)
            for _ in range(max(1, cluster.n_workers)):
                cluster.add_worker((trainer,))
    if cluster.server is not None and cluster.server.returncode not in (None, 0):
        print(f"hpod local: the server exited with code {cluster.server.returncode}; see "
              f"{cluster.workdir / 'server.log'}", file=sys.stderr, flush=True)
