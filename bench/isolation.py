"""No study slows another down: read latency of an idle study while model-based studies are
asked continuously, next to the same figure with nothing else running, in one run.

    python bench/isolation.py [--json] [--calls 400] [--cqr 3] [--carbs 1] [--seconds 40]

One embedded Redis and one ``hpod server`` process (``LocalCluster`` with no trainer
workers). A small random-search study is the sentinel: ``GetStudy`` is called on it
``--calls`` times with nothing else running (idle), then again while ``--cqr`` CQR studies and
``--carbs`` CARBS studies are each driven by an ask/tell client in a process of its own (so
the load generators do not share this process's GIL), asking and completing as fast as the
server answers. Reported: p50 and p99 of the sentinel's ``GetStudy`` in both phases, their
ratios (the goal: p50 <= 2x idle, p99 <= 5x idle), and how many suggestions the loaded studies
got meanwhile (so a run where the load did nothing is visible), with the median AskJob and
CompleteJob times their own clients saw. ``HPOD_SUGGESTION_BUFFER=0`` in the environment
turns suggesting ahead off (compare the AskJob medians). On a machine shared with other work,
run it as ``nice -n -10 python bench/isolation.py`` so the other work does not set the figures.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(__file__))
from service import summarise  # noqa: E402

SPACE = {"x1": {"type": "float", "low": -5.0, "high": 10.0},
         "x2": {"type": "float", "low": 0.0, "high": 15.0},
         "x3": {"type": "float", "low": 0.0, "high": 1.0}}


def branin(c: dict[str, Any]) -> float:
    import math

    x1, x2 = c["x1"], c["x2"]
    return ((x2 - 5.1 / (4 * math.pi ** 2) * x1 ** 2 + 5 / math.pi * x1 - 6) ** 2
            + 10 * (1 - 1 / (8 * math.pi)) * math.cos(x1) + 10 + c["x3"])


def spec(algorithm: str, seed: int) -> dict[str, Any]:
    return {"name": f"load-{algorithm}-{seed}", "seed": seed, "search_space": SPACE,
            "resource": {"max_resource": 9, "eta": 3},
            "algorithm": {"name": algorithm}, "max_trials": 100_000}


def drive(address: str, algorithm: str, seed: int, stop_at: float, out: Any) -> None:
    """An ask/tell client: asks and completes (full resource at once) until ``stop_at``."""
    from hpod.client import Client

    done, error, asks, tells = 0, "", [], []
    try:
        with Client(address, timeout=120) as client:
            study = client.create_study(spec(algorithm, seed))
            while time.time() < stop_at:
                t0 = time.perf_counter()
                job = study.ask(wait=False)
                if job is None:
                    time.sleep(0.05)
                    continue
                t1 = time.perf_counter()
                job.complete(branin(job.config) / (1 + job.to_resource))
                asks.append(t1 - t0)
                tells.append(time.perf_counter() - t1)
                done += 1
    except Exception as e:  # reported, so a load generator that broke is visible
        error = f"{algorithm} {seed}: {e!r}"[:500]
    out.put((algorithm, done, error, asks, tells))


def latencies(client: Any, sid: str, calls: int) -> list[float]:
    from hpod.v1 import hpod_pb2 as pb

    req = pb.GetStudyRequest(study_id=sid)
    out = []
    for _ in range(calls):
        t0 = time.perf_counter()
        client.stub.GetStudy(req, timeout=60)
        out.append(time.perf_counter() - t0)
        time.sleep(0.01)
    return out


def run(calls: int, n_cqr: int, n_carbs: int, seconds: float) -> dict[str, Any]:
    from hpod.client import Client
    from hpod.client.local import LocalCluster

    with LocalCluster(workers=0, trainers=(), lease_seconds=600.0) as cluster, \
            Client(cluster.address, timeout=120) as client:
        sentinel = client.create_study({**spec("random", 0), "name": "sentinel"})
        for _ in range(20):
            job = sentinel.ask(wait=False)
            job.complete(branin(job.config))
        idle = summarise(latencies(client, sentinel.id, calls))

        ctx = mp.get_context("spawn")
        out = ctx.Queue()
        stop_at = time.time() + seconds
        loaders = [ctx.Process(target=drive, args=(cluster.address, algo, i, stop_at, out))
                   for i, algo in enumerate(["cqr"] * n_cqr + ["carbs"] * n_carbs)]
        for p in loaders:
            p.start()
        time.sleep(min(15.0, seconds / 3))  # past the random warm-up: the models now fit
        loaded = summarise(latencies(client, sentinel.id, calls))
        suggestions: dict[str, int] = {}
        errors, rounds = [], {}
        for _ in loaders:
            algo, done, error, asks, tells = out.get(timeout=seconds + 300)
            suggestions[algo] = suggestions.get(algo, 0) + done
            got = rounds.setdefault(algo, ([], []))
            got[0].extend(asks)
            got[1].extend(tells)
            if error:
                errors.append(error)
        for p in loaders:
            p.join()
    return {"idle": idle, "loaded": loaded,
            "p50_ratio": loaded["median_us"] / idle["median_us"],
            "p99_ratio": loaded["p99_us"] / idle["p99_us"],
            "load": {"cqr_studies": n_cqr, "carbs_studies": n_carbs,
                     "suggestions": suggestions, "seconds": seconds, "errors": errors,
                     # what the loaded studies' own clients waited, per call (median ms)
                     "ask_ms": {a: _median_ms(r[0]) for a, r in rounds.items()},
                     "tell_ms": {a: _median_ms(r[1]) for a, r in rounds.items()}},
            "cpus": os.cpu_count()}


def _median_ms(xs: list[float]) -> float | None:
    return round(sorted(xs)[len(xs) // 2] * 1e3, 1) if xs else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=400)
    ap.add_argument("--cqr", type=int, default=3)
    ap.add_argument("--carbs", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=40.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    res = run(args.calls, args.cqr, args.carbs, args.seconds)
    if args.json:
        print(json.dumps(res, indent=2))
        return
    print(f"GetStudy on an idle random-search study ({args.calls} calls each), "
          f"{res['cpus']} CPUs")
    print(f"{'phase':<28}{'p50 ms':>10}{'p99 ms':>10}")
    print(f"{'nothing else running':<28}{res['idle']['median_us'] / 1e3:>10.2f}"
          f"{res['idle']['p99_us'] / 1e3:>10.2f}")
    label = f"{args.cqr} CQR + {args.carbs} CARBS asked"
    print(f"{label:<28}{res['loaded']['median_us'] / 1e3:>10.2f}"
          f"{res['loaded']['p99_us'] / 1e3:>10.2f}")
    print(f"ratio: p50 {res['p50_ratio']:.2f}x (goal <= 2), p99 {res['p99_ratio']:.2f}x "
          f"(goal <= 5); suggestions served meanwhile: {res['load']['suggestions']}")
    print(f"the loaded studies' own clients, median ms per AskJob {res['load']['ask_ms']} "
          f"and per CompleteJob {res['load']['tell_ms']}")
    for error in res["load"]["errors"]:
        print(f"a load generator stopped early: {error}")


if __name__ == "__main__":
    main()
