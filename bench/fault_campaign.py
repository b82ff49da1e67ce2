"""A fault-injection campaign, as an operator would run one: random faults while studies run.

    python bench/fault_campaign.py [--json] [--faults 20] [--studies 5] [--seed 0]

A real redis-server with AOF (``appendfsync always``, so Redis itself loses nothing), one
``hpod server``, four ``analytic`` workers and ``--studies`` concurrent studies (hyperband,
asha with a trial limit, async-hyperband, idhb raised once). Every few seconds one fault,
drawn at random: kill -9 of a worker (a new one is started), kill -9 of the server
(restarted), kill -9 of Redis (restarted from its AOF), Redis paused past the lease
(SIGSTOP/SIGCONT), Redis refusing writes for a few seconds (maxmemory), a worker paused past its
lease. At the end: every study must complete; for each, every learning-curve point is present
once and in order, the resource used equals the plan's (no segment counted twice), and no
worker event is left unapplied in Redis. Reported: faults injected by kind, studies completed,
curve points accepted, events left unapplied, server restarts, hangs (a wait that timed out).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import time
from typing import Any

LEASE = 3.0
SPECS = [
    {"algorithm": {"name": "hyperband"}, "resource": {"max_resource": 9, "eta": 3}},
    {"algorithm": {"name": "asha"}, "resource": {"max_resource": 9, "eta": 3}, "max_trials": 20},
    {"algorithm": {"name": "async-hyperband"}, "resource": {"max_resource": 9, "eta": 3},
     "max_trials": 20},
    {"algorithm": {"name": "idhb"}, "resource": {"max_resource": 3, "eta": 3}},
    {"algorithm": {"name": "hyperband"}, "resource": {"max_resource": 27, "eta": 3}},
]
KINDS = ("kill_worker", "kill_server", "kill_redis", "pause_redis", "redis_oom", "pause_worker")


def run(n_faults: int, n_studies: int, seed: int) -> dict[str, Any]:
    import redis
    from hpod.client.local import LocalCluster
    from hpod.client.sdk import HpodError
    from hpod.server.store import keys
    from hpod.server.store.embedded import EmbeddedRedis

    rng = random.Random(seed)
    store = EmbeddedRedis(fsync_always=True).start()
    injected: dict[str, int] = {}
    restarts = hangs = 0
    try:
        with LocalCluster(workers=4, trainers=("analytic",), redis_url=store.url,
                          lease_seconds=LEASE) as cluster, cluster.client() as client:
            r = redis.Redis.from_url(store.url, decode_responses=True)
            studies = []
            for i in range(n_studies):
                spec = {**SPECS[i % len(SPECS)], "trainer": "analytic", "seed": seed * 100 + i,
                        "trainer_settings": {"step_seconds": 0.1}}
                studies.append(client.create_study(spec))
            raised = False
            for _ in range(n_faults):
                time.sleep(rng.uniform(1.0, 3.0))
                kind = rng.choice(KINDS)
                injected[kind] = injected.get(kind, 0) + 1
                if kind == "kill_worker":
                    os.kill(rng.choice(cluster.workers).pid, signal.SIGKILL)
                    cluster.workers = [w for w in cluster.workers if w.poll() is None]
                    cluster.add_worker()
                elif kind == "pause_worker":
                    w = rng.choice(cluster.workers)
                    os.kill(w.pid, signal.SIGSTOP)
                    time.sleep(2 * LEASE)
                    os.kill(w.pid, signal.SIGCONT)
                elif kind == "kill_server":
                    cluster.server.kill()
                    cluster.server.wait()
                    cluster.start_server()
                    restarts += 1
                elif kind == "kill_redis":
                    store.proc.kill()
                    store.proc.wait()
                    time.sleep(0.5)
                    store.start()
                elif kind == "pause_redis":
                    os.kill(store.proc.pid, signal.SIGSTOP)
                    time.sleep(2 * LEASE)
                    os.kill(store.proc.pid, signal.SIGCONT)
                elif kind == "redis_oom":
                    r.config_set("maxmemory-policy", "noeviction")
                    r.config_set("maxmemory", 1)
                    time.sleep(3.0)
                    r.config_set("maxmemory", 0)
                if not raised and n_studies > 3:
                    try:
                        if studies[3].refresh().state == 2:
                            studies[3].raise_max_resource()
                            raised = True
                    except HpodError:  # UNAVAILABLE during a fault: try after the next one
                        pass
                # a worker that died of a fault is replaced, as a scheduler would
                dead = [w for w in cluster.workers if w.poll() is not None]
                cluster.workers = [w for w in cluster.workers if w.poll() is None]
                for _ in dead:
                    cluster.add_worker()
            results = []
            for study in studies:
                try:
                    info = study.wait(timeout=600)
                except TimeoutError:
                    hangs += 1
                    continue
                trials = study.trials()
                whole = all([x for x, _ in t.curve] == list(range(1, int(t.resource) + 1))
                            for t in trials if t.state == "completed")
                pending = r.xpending(keys.events(study.id), keys.SERVER_GROUP)["pending"]
                results.append({
                    "algorithm": info.spec.algorithm.name, "state": info.state,
                    "trials": len(trials), "points": sum(len(t.curve) for t in trials),
                    "curves_whole": whole, "events_unapplied": pending,
                    "resource_used": info.resource_used,
                    "plan_resource": info.plan.incremental_resource,
                    "worker_failures": sum(t.state == "failed" for t in trials),
                    "lost_jobs": sum(t.lost_jobs for t in trials)})
            server_alive = cluster.server.poll() is None
    finally:
        store.stop()
    return {"faults": injected, "server_restarts": restarts, "hangs": hangs,
            "server_exited_on_its_own": not server_alive, "studies": results,
            "completed": sum(s["state"] == 2 for s in results),
            "points_accepted": sum(s["points"] for s in results),
            "events_unapplied": sum(s["events_unapplied"] for s in results)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--faults", type=int, default=20)
    ap.add_argument("--studies", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    res = run(args.faults, args.studies, args.seed)
    if args.json:
        print(json.dumps(res, indent=2))
        return
    print(f"faults injected: {sum(res['faults'].values())} {res['faults']}")
    print(f"studies completed: {res['completed']}/{args.studies}; hangs: {res['hangs']}; "
          f"server restarts (injected): {res['server_restarts']}; server exited on its own: "
          f"{res['server_exited_on_its_own']}")
    print(f"curve points accepted: {res['points_accepted']}; events left unapplied: "
          f"{res['events_unapplied']}")
    for s in res["studies"]:
        doubled = s["resource_used"] - s["plan_resource"]
        print(f"  {s['algorithm']:<16} trials {s['trials']:>3}  points {s['points']:>4}  "
              f"curves whole {s['curves_whole']}  resource over plan {doubled:g}  "
              f"lost jobs {s['lost_jobs']}  failed trials {s['worker_failures']}")


if __name__ == "__main__":
    main()
