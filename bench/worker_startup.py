"""CPU time and wall time from ``hpod worker`` start to its first finished job.

One job of the chosen trainer waits in its stream before the worker starts; the worker runs
with ``--max-jobs 1`` and exits after it, so the child's CPU time (user + system, from
``getrusage``) is what a worker spends importing, connecting and training its first segment.
Also reports whether the worker process imported torch (from its ``HPOD_BENCH_MODULES``
dump) and the CPU time of a bare ``import hpod.trainers.worker``.

    python bench/worker_startup.py                      # analytic, 5 runs
    python bench/worker_startup.py --trainer mlp --runs 3
    python bench/worker_startup.py --shutdown           # SIGTERM to exit, Redis SIGSTOPped

``--shutdown`` instead times a busy worker's exit on SIGTERM while Redis is stopped (SIGSTOP:
connections hang, nothing answers), the case where a worker without socket timeouts waits on
Redis for minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
from hpod.server.store import keys
from hpod.server.store.embedded import EmbeddedRedis


def child_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_child(args: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one child process run to its end."""
    cpu0, t0 = child_cpu(), time.perf_counter()
    subprocess.run(args, check=True, env=env, stdout=subprocess.DEVNULL)
    return child_cpu() - cpu0, time.perf_counter() - t0


def enqueue(url: str, trainer: str, n: int, to: float = 1.0,
            settings: dict | None = None) -> None:
    r = redis.Redis.from_url(url)
    job = {"study_id": f"bench{n}", "job_id": f"bench{n}-j1", "trial_id": 0,
           "config": {}, "from_resource": 0.0, "to_resource": to, "bracket": 0, "rung": 0,
           "attempt": 0, "trainer": trainer, "max_resource": to, "seed": 0,
           "trainer_settings": settings or {}}
    r.xadd(keys.jobs(trainer), {"j": json.dumps(job)})


def shutdown(runs: int) -> None:
    """Seconds from SIGTERM to exit of a busy analytic worker while Redis is SIGSTOPped."""
    out = []
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(str(Path(tmp) / "redis")) as rs:
        r = redis.Redis.from_url(rs.url)
        for n in range(runs):
            enqueue(rs.url, "analytic", n, to=1000.0, settings={"step_seconds": 0.2})
            proc = subprocess.Popen([sys.executable, "-m", "hpod.client.cli", "worker",
                                     "--redis-url", rs.url, "--trainer", "analytic",
                                     "--checkpoint-dir", str(Path(tmp) / "ckpt")],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.time() + 60
            while not r.xlen(keys.events(f"bench{n}")) > 2 and time.time() < deadline:
                time.sleep(0.1)  # busy: reporting progress
            os.kill(rs.proc.pid, signal.SIGSTOP)
            try:
                t0 = time.perf_counter()
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(600)
                except subprocess.TimeoutExpired:
                    proc.kill()
                out.append(time.perf_counter() - t0)
            finally:
                os.kill(rs.proc.pid, signal.SIGCONT)
            r.delete(keys.jobs("analytic"))
    print(json.dumps({"sigterm_to_exit_seconds_redis_stopped": [round(x, 2) for x in out]}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trainer", default="analytic")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--shutdown", action="store_true")
    args = ap.parse_args()
    if args.shutdown:
        shutdown(args.runs)
        return
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(str(Path(tmp) / "redis")) as rs:
        cpu, wall = [], []
        for n in range(args.runs):
            enqueue(rs.url, args.trainer, n)
            c, w = run_child([sys.executable, "-m", "hpod.client.cli", "worker", "--redis-url",
                              rs.url, "--trainer", args.trainer, "--checkpoint-dir",
                              str(Path(tmp) / "ckpt"), "--max-jobs", "1", "--threads", "1"])
            cpu.append(c)
            wall.append(w)
        probe = ("import sys, hpod.trainers.worker as w; "
                 f"w.Worker  # noqa\nfrom hpod.trainers.base import get_trainer; "
                 f"get_trainer({args.trainer!r}); print('torch' in sys.modules)")
        out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True,
                             text=True).stdout.strip()
        imp_cpu, _ = run_child([sys.executable, "-c", "import hpod.trainers.worker"])
    print(json.dumps({
        "trainer": args.trainer, "runs": args.runs,
        "cpu_seconds_to_first_job": {"median": round(statistics.median(cpu), 3),
                                     "min": round(min(cpu), 3)},
        "wall_seconds_to_first_job": {"median": round(statistics.median(wall), 3)},
        "import_worker_cpu_seconds": round(imp_cpu, 3),
        "torch_imported_by_worker_and_trainer": out == "True",
        "cpus": os.cpu_count(),
    }, indent=2))


if __name__ == "__main__":
    main()
