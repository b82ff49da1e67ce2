"""Worker events applied per second with 1, 2 and 3 server replicas, on one Redis and on a
Redis Cluster.

    python bench/replicas.py [--json] [--replicas 1,2,3] [--studies 6] [--events 20000]
                             [--redis single,cluster]

For each replica count and Redis, a fresh embedded Redis (``single``) or Redis Cluster of 3
masters with one replica each (``cluster``, all on this machine), and that many ``hpod
server`` processes
(``LocalCluster`` with no trainer workers; every replica on this machine). ``--studies``
ask/tell studies are created and spread over the replicas by their leases; each hands out 8
jobs. Then the replicas are paused (SIGSTOP; their study leases are longer than the pause),
``--events`` progress events in the worker's format (round robin over the studies and their
jobs, every one a new curve point) are written into the studies' streams, the replicas resume
(SIGCONT), and the time is taken until every study's event stream has been read and
acknowledged by its owner: events applied per second by the replicas together, without the
writer competing for the CPU while they apply.

Every replica, Redis and this writer share this machine's cores, so the figure shows the
capacity of N replicas *on this machine*, not on N machines: with fewer cores than replicas
plus Redis, more replicas mostly share the same CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from service import _id_ge, external_spec, machine  # noqa: E402

JOBS_PER_STUDY = 8


def _spread(r: Any, sids: list[str], replicas: int) -> bool:
    from hpod.server.store import keys
    from hpod.server.store.leases import replica_of

    owners = [replica_of(r.get(keys.owner(s))) for s in sids]
    return all(owners) and len(set(owners)) == replicas


async def _burst(redis_url: str, jobs: dict[str, list[str]], total: int,
                 pids: list[int]) -> dict[str, float]:
    from hpod.server.store import keys
    from hpod.server.store.connect import async_client

    r = async_client(redis_url, decode_responses=True)
    sids = list(jobs)
    last: dict[str, str] = {}
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        for lo in range(0, total, 1000):
            async with r.pipeline(transaction=False) as p:
                order = []
                for i in range(lo, min(lo + 1000, total)):
                    sid = sids[i % len(sids)]
                    ids = jobs[sid]
                    k = i // len(sids)
                    body = {"op": "progress", "job_id": ids[k % len(ids)],
                            "resource": 1 + k // len(ids), "value": 0.5}
                    p.xadd(keys.events(sid), {"e": json.dumps(body)})
                    order.append(sid)
                for sid, eid in zip(order, await p.execute(), strict=True):
                    last[sid] = eid
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    t0 = time.perf_counter()
    try:
        end = await _drained(r, last)
    finally:
        await r.aclose()
    return {"events": total, "applied_per_s": total / (end - t0), "seconds": end - t0}


async def _drained(r: Any, last: dict[str, str], timeout: float = 600) -> float:
    """When every study's server group has read past its last event and acknowledged all."""
    from hpod.server.store import keys

    deadline = time.perf_counter() + timeout
    todo = dict(last)
    while todo:
        if time.perf_counter() > deadline:
            raise TimeoutError(f"events of {sorted(todo)} not applied within {timeout}s")
        for sid in list(todo):
            groups = await r.xinfo_groups(keys.events(sid))
            g = next(g for g in groups if g["name"] == keys.SERVER_GROUP)
            if g["pending"] == 0 and _id_ge(g["last-delivered-id"], todo[sid]):
                del todo[sid]
        await asyncio.sleep(0.01)
    return time.perf_counter()


def run_one(replicas: int, studies: int, events: int, kind: str = "single") -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="hpod-bench-replicas-") as work:
        if kind == "single":
            return {"redis": kind, **_run(replicas, studies, events, work, None)}
        from hpod.server.store.embedded import EmbeddedCluster

        with EmbeddedCluster(os.path.join(work, "cluster")) as rc:
            return {"redis": kind, **_run(replicas, studies, events, work, rc.url)}


def _run(replicas: int, studies: int, events: int, work: str,
         redis_url: str | None) -> dict[str, Any]:
    from hpod.client.local import LocalCluster, free_port
    from hpod.client.sdk import Client
    from hpod.server.store.connect import sync_client

    with LocalCluster(workers=0, trainers=(), workdir=work, redis_url=redis_url,
                      server_args=("--study-lease-seconds", "15")) as cluster:
        for _ in range(replicas - 1):
            cluster.add_replica(free_port())
        target = "ipv4:" + ",".join(f"127.0.0.1:{p}" for p in [cluster.port, *cluster.replicas])
        with Client(target, timeout=60) as client:
            made = [client.create_study(external_spec(JOBS_PER_STUDY, 1e9))
                    for _ in range(studies)]
            r = sync_client(str(cluster.redis_url), decode_responses=True)
            deadline = time.time() + 60
            while not _spread(r, [s.id for s in made], min(replicas, studies)):
                if time.time() > deadline:
                    raise SystemExit("the studies did not spread over the replicas in 60 s")
                time.sleep(0.2)
            time.sleep(1.0)  # the moved studies are rebuilt by their new owners
            jobs = {}
            for s in made:
                asked = [s.ask(wait=False) for _ in range(JOBS_PER_STUDY)]
                jobs[s.id] = [j.id for j in asked if j is not None]
            pids = [p.pid for p in [cluster.server, *cluster.replicas.values()] if p]
            out = asyncio.run(_burst(cluster.redis_url, jobs, events, pids))
            for s in made:
                s.stop()
    return {"replicas": replicas, "studies": studies, **out}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--replicas", default="1,2,3")
    ap.add_argument("--studies", type=int, default=6)
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--redis", default="single",
                    help="comma-separated: single (one Redis), cluster (3 masters + 3 replicas)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    counts = [int(x) for x in a.replicas.split(",") if x.strip()]
    kinds = [x.strip() for x in a.redis.split(",") if x.strip()]
    if not counts or min(counts) < 1 or a.studies < 1 or a.events < 1:
        raise SystemExit("--replicas needs counts >= 1, --studies and --events positive")
    if not kinds or set(kinds) - {"single", "cluster"}:
        raise SystemExit(f"--redis {a.redis!r}: give single, cluster or both (single,cluster)")
    rows = [run_one(n, a.studies, a.events, kind) for kind in kinds for n in counts]
    if a.json:
        print(json.dumps({"machine": machine(), "runs": rows}, indent=2))
        return 0
    print(f"{'redis':>8} {'replicas':>8} {'events':>7} {'applied/s':>10} {'seconds':>8}")
    for row in rows:
        print(f"{row['redis']:>8} {row['replicas']:>8} {row['events']:>7} "
              f"{row['applied_per_s']:>10.0f} {row['seconds']:>8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
