"""Cost growth through the service: one long ask/tell study, measured early and late.

    python bench/growth.py [--json] [--algorithm random|asha] [--trials 20000] [--early 1000]
    python bench/growth.py --finished 40 [--finished-trials 300]

One embedded Redis and one ``hpod server`` process (``LocalCluster`` with no workers). A
single client runs ask/tell rounds (``AskJob`` then ``CompleteJob`` at the job's resource) on
one study until it has ``--trials`` trials. Around ``--early`` trials and over the last
``--early`` trials it reports: the round's p50 and p99, the server's CPU seconds per trial
(from /proc, user + system), the server's resident memory, and Redis's memory per trial. The
goal is a late/early ratio <= 1.5 for the round p99 and the CPU per trial.

``--finished N`` measures instead the server's peak RSS after N ended ASHA studies, with every
ended study kept in memory and with each put to rest as it ends (server/residency.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(__file__))
from service import summarise  # noqa: E402


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def spec(algorithm: str, trials: int) -> dict[str, Any]:
    return {"name": f"growth-{algorithm}", "seed": 0, "max_trials": trials,
            "resource": {"max_resource": 27, "eta": 3}, "algorithm": {"name": algorithm},
            "search_space": {"x": {"type": "float", "low": 0.0, "high": 1.0},
                             "y": {"type": "float", "low": 0.0, "high": 1.0}}}


def window(study: Any, pid: int, redis: Any, rounds: int) -> tuple[dict[str, Any], int]:
    """``rounds`` ask/tell rounds, with their latencies and the server's CPU meanwhile."""
    lat: list[float] = []
    trials_before = study.refresh().trials_total
    cpu0 = cpu_seconds(pid)
    for _ in range(rounds):
        t0 = time.perf_counter()
        job = study.ask(wait=False)
        if job is None:
            info = study.refresh()
            if not lat:
                raise RuntimeError(f"no job to hand out at {info.trials_total} trials "
                                   f"(state {info.state}, {info.trials_running} running)")
            break
        job.complete(job.config["x"] + job.config["y"] / (1 + job.to_resource),
                     resource=job.to_resource)
        lat.append(time.perf_counter() - t0)
    cpu = cpu_seconds(pid) - cpu0
    trials = study.refresh().trials_total
    made = max(1, trials - trials_before)
    out = {**summarise(lat), "trials": trials, "server_cpu_ms_per_trial": 1e3 * cpu / made,
           "server_rss_mb": rss_mb(pid),
           "redis_bytes_per_trial": redis.info("memory")["used_memory"] / max(1, trials)}
    return out, len(lat)


def run(algorithm: str, trials: int, early: int) -> dict[str, Any]:
    import redis as redis_py
    from hpod.client import Client
    from hpod.client.local import LocalCluster

    with LocalCluster(workers=0, trainers=(), lease_seconds=600.0) as cluster, \
            Client(cluster.address, timeout=120) as client:
        r = redis_py.Redis.from_url(cluster.redis_url)
        pid = cluster.server.pid
        study = client.create_study(spec(algorithm, trials))
        # Rounds until `early` trials exist, the early window, then on to the late window.
        while study.refresh().trials_total < early // 2:
            window(study, pid, r, 200)
        first, _ = window(study, pid, r, early)
        while (left := trials - early - study.refresh().trials_total) > 0:
            window(study, pid, r, min(2000, left))
        last, _ = window(study, pid, r, early)
    return {"algorithm": algorithm, "early": first, "late": last,
            "p99_ratio": last["p99_us"] / first["p99_us"],
            "cpu_ratio": last["server_cpu_ms_per_trial"] / first["server_cpu_ms_per_trial"]}


_FINISHED = """
import asyncio, json, resource, sys, tempfile
from hpod.server.manager import Settings, StudyManager
from hpod.server.service.convert import config_from_spec
from hpod.client.spec import build_spec
from hpod.server.store.embedded import EmbeddedRedis

a = json.loads(sys.argv[1])

async def go(url):
    m = StudyManager(Settings(redis_url=url, fit_processes=0, rest_after_seconds=1e9,
                              ended_in_memory=a["keep"]))
    await m.start()
    spec = build_spec({"name": "finished", "seed": 0, "max_trials": a["trials"],
                       "resource": {"max_resource": 27, "eta": 3},
                       "algorithm": {"name": "asha"},
                       "search_space": {"x": {"type": "float", "low": 0.0, "high": 1.0},
                                        "y": {"type": "float", "low": 0.0, "high": 1.0}}})
    for _ in range(a["studies"]):
        sid = (await m.create(config_from_spec(spec))).engine.study_id
        while jobs := await m.submit(sid, {"op": "ask", "free": 8, "external": True}):
            for job in jobs:
                for r in range(int(job.from_resource) + 1, int(job.to_resource) + 1):
                    v = job.config["x"] + job.config["y"] / r
                    await m.submit(sid, {"op": "progress", "job_id": job.job_id,
                                         "resource": float(r), "value": v})
                await m.submit(sid, {"op": "complete", "job_id": job.job_id, "value": v})
        await m._rest_due()  # what the reap loop does each second
    out = {"in_memory": len(m.studies), "resting": len(m.residency.resting),
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    await m.stop()
    print(json.dumps(out))

with EmbeddedRedis(tempfile.mkdtemp()) as r:
    asyncio.run(go(r.url))
"""


def finished(studies: int, trials: int) -> dict[str, Any]:
    """Server memory after ``studies`` ended ASHA studies of ``trials`` trials each, all kept
    in memory against ended studies put to rest (server/residency.py): one server (the real
    manager, in its own interpreter for its own peak RSS) on one embedded Redis each."""
    import subprocess

    out = {}
    for name, keep in (("kept", 10**6), ("rested", 0)):
        args = json.dumps({"studies": studies, "trials": trials, "keep": keep})
        proc = subprocess.run([sys.executable, "-c", _FINISHED, args], check=True,
                              capture_output=True, text=True)
        out[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--algorithm", default="random")
    ap.add_argument("--trials", type=int, default=20_000)
    ap.add_argument("--early", type=int, default=1_000)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--finished", type=int, default=0, metavar="N",
                    help="instead: server peak RSS after N ended studies, kept or rested")
    ap.add_argument("--finished-trials", type=int, default=300)
    args = ap.parse_args()
    if args.finished:
        res = finished(args.finished, args.finished_trials)
        print(json.dumps(res, indent=2) if args.json else
              "\n".join(f"{k}: {v['in_memory']} ended studies in memory, {v['resting']} "
                        f"resting, server peak RSS {v['peak_rss_mb']:.0f} MB"
                        for k, v in res.items()))
        return
    res = run(args.algorithm, args.trials, args.early)
    if args.json:
        print(json.dumps(res, indent=2))
        return
    print(f"{args.algorithm}: one ask/tell study, {args.early} rounds per window")
    print(f"{'window':<10}{'trials':>8}{'p50 ms':>9}{'p99 ms':>9}{'cpu ms/trial':>14}"
          f"{'rss MB':>9}{'redis B/trial':>15}")
    for name in ("early", "late"):
        w = res[name]
        print(f"{name:<10}{w['trials']:>8}{w['median_us'] / 1e3:>9.2f}{w['p99_us'] / 1e3:>9.2f}"
              f"{w['server_cpu_ms_per_trial']:>14.2f}{w['server_rss_mb']:>9.0f}"
              f"{w['redis_bytes_per_trial']:>15.0f}")
    print(f"late/early: p99 {res['p99_ratio']:.2f}x, server CPU per trial "
          f"{res['cpu_ratio']:.2f}x (goal <= 1.5 each)")


if __name__ == "__main__":
    main()
