"""Service overhead: hpod's round trips next to the floor of this machine.

    python bench/service.py [--json] [--rounds 500] [--seconds 3] [--workers 1,16,256]

In one run, against one embedded Redis and one hpod server process (``LocalCluster`` with no
trainer workers):

* the floor: a plain gRPC unary echo round trip (a proto-free generic handler served by
  ``grpc.aio`` in its own process, as hpod's server is) and a Redis ``PING`` round trip;
* hpod's ask/tell round (``AskJob`` then ``CompleteJob`` through the SDK) and its
  ``ReportProgress`` round trip, on an external study with the ``random`` algorithm;
* events applied per second by the server from a study's Redis event stream with 1, 16 and
  256 concurrent simulated workers, each writing ``progress`` events in the worker's own format
  and pipeline (``XADD`` to the study's stream plus the stop-flag read), as fast as the
  server's answers allow; the rate counts events the server has applied and acknowledged.
  On a small machine the writers themselves can be the limit, so a *burst* follows: many
  events (round robin over the same jobs) written at once, and the time until the server has
  applied them all, which is the server's own capacity.

Medians and p99 in microseconds, and the ratio of each median to the floor.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

ECHO_METHOD = "/bench.Echo/Echo"


# ------------------------------------------------------------------ helpers


def summarise(samples_s: list[float]) -> dict[str, float]:
    """Median and p99 of latencies given in seconds, in microseconds."""
    us = sorted(s * 1e6 for s in samples_s)
    p99 = us[min(len(us) - 1, int(round(0.99 * (len(us) - 1))))]
    return {"median_us": statistics.median(us), "p99_us": p99, "n": len(us)}


def timed(fn: Callable[[], Any], rounds: int, warmup: int = 20) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                       cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "system": f"{platform.system()} {platform.release()}",
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


# ------------------------------------------------------------------ the gRPC floor


def serve_echo(port: int) -> None:
    """A proto-free unary echo on grpc.aio: bytes in, the same bytes out."""
    import grpc

    async def echo(request: bytes, context: Any) -> bytes:
        return request

    async def main() -> None:
        server = grpc.aio.server()
        handler = grpc.method_handlers_generic_handler(
            "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)})
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        print("ready", flush=True)
        await server.wait_for_termination()

    asyncio.run(main())


def bench_echo(rounds: int) -> dict[str, float]:
    import grpc
    from hpod.server.store.embedded import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve-echo", str(port)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            call = ch.unary_unary(ECHO_METHOD)  # no serializers: raw bytes both ways
            payload = b"x" * 64
            return summarise(timed(lambda: call(payload, timeout=10), rounds))
    finally:
        proc.terminate()
        proc.wait(10)


def bench_ping(redis_url: str, rounds: int) -> dict[str, float]:
    import redis

    r = redis.Redis.from_url(redis_url)
    try:
        return summarise(timed(r.ping, rounds))
    finally:
        r.close()


# ------------------------------------------------------------------ hpod round trips


def external_spec(max_trials: int, max_resource: float) -> dict[str, Any]:
    """An ask/tell study (no trainer): random search, one float parameter."""
    return {"name": "bench", "objective": {"metric": "loss", "direction": "minimize"},
            "resource": {"name": "step", "max_resource": max_resource, "min_resource": 1,
                         "eta": 3},
            "algorithm": {"name": "random"}, "max_trials": max_trials,
            "search_space": {"x": {"type": "float", "low": 0.0, "high": 1.0}}}


def bench_ask_tell(client: Any, rounds: int) -> dict[str, dict[str, float]]:
    study = client.create_study(external_spec(rounds + 40, 10))
    asks: list[float] = []
    completes: list[float] = []
    for i in range(rounds + 20):
        t0 = time.perf_counter()
        job = study.ask(wait=False)
        t1 = time.perf_counter()
        assert job is not None
        job.complete(job.config["x"], resource=job.to_resource)
        t2 = time.perf_counter()
        if i >= 20:  # warm-up rounds are not counted
            asks.append(t1 - t0)
            completes.append(t2 - t1)
    study.stop()
    return {"ask": summarise(asks), "complete": summarise(completes),
            "ask_tell_round": summarise([a + c for a, c in zip(asks, completes, strict=True)])}


def bench_report(client: Any, rounds: int) -> dict[str, float]:
    study = client.create_study(external_spec(1, rounds + 40))
    job = study.ask(wait=False)
    assert job is not None
    step = iter(range(1, rounds + 40))
    samples = timed(lambda: job.report(float(next(step)), 0.5), rounds)
    study.stop()
    return summarise(samples)


# ------------------------------------------------------------------ events applied per second


async def _writer(r: Any, sid: str, job_id: str, deadline: float) -> tuple[int, str]:
    """One simulated worker: progress reports in the worker's format and pipeline, one
    round trip each (WorkerQueue.progress without the job-stream lease, which an external
    job does not have)."""
    from hpod.server.store import keys

    sent, last_id, resource = 0, "0-0", 0
    while time.perf_counter() < deadline:
        resource += 1
        body = {"op": "progress", "job_id": job_id, "resource": resource, "value": 1.0 / resource}
        async with r.pipeline(transaction=False) as p:
            p.xadd(keys.events(sid), {"e": json.dumps(body)})
            p.sismember(keys.stopped_jobs(sid), job_id)
            last_id, _ = await p.execute()
        sent += 1
    return sent, last_id


async def _drained(r: Any, sid: str, last_id: str, timeout: float) -> float:
    """Wait until the server's group has read past ``last_id`` and acknowledged everything."""
    from hpod.server.store import keys

    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        groups = await r.xinfo_groups(keys.events(sid))
        g = next(g for g in groups if g["name"] == keys.SERVER_GROUP)
        if g["pending"] == 0 and _id_ge(g["last-delivered-id"], last_id):
            return time.perf_counter()
        await asyncio.sleep(0.002)
    raise TimeoutError(f"server did not apply the events of {sid} within {timeout}s")


def _id_ge(a: str, b: str) -> bool:
    return tuple(map(int, a.split("-"))) >= tuple(map(int, b.split("-")))


async def _events_run(redis_url: str, sid: str, job_ids: list[str], seconds: float
                      ) -> dict[str, float]:
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(redis_url, decode_responses=True,
                                max_connections=len(job_ids) + 4)
    try:
        t0 = time.perf_counter()
        deadline = t0 + seconds
        done = await asyncio.gather(*(_writer(r, sid, j, deadline) for j in job_ids))
        sent_at = time.perf_counter()
        last = max((last for _, last in done), key=lambda i: tuple(map(int, i.split("-"))))
        end = await _drained(r, sid, last, 120)
    finally:
        await r.aclose()
    total = sum(n for n, _ in done)
    return {"events": total, "sent_per_s": total / (sent_at - t0),
            "applied_per_s": total / (end - t0), "drain_after_writers_s": end - sent_at}


async def _burst_run(redis_url: str, sid: str, job_ids: list[str], total: int
                     ) -> dict[str, float]:
    """The server's capacity: ``total`` events (round robin over the jobs) written in large
    pipelines, far faster than the server applies them, then the time until all are applied."""
    import redis.asyncio as aioredis
    from hpod.server.store import keys

    r = aioredis.Redis.from_url(redis_url, decode_responses=True)
    stream, n, last = keys.events(sid), len(job_ids), "0-0"
    start_at = 10**6  # above the paced run's resources: every event is a new curve point
    try:
        t0 = time.perf_counter()
        for lo in range(0, total, 1000):
            async with r.pipeline(transaction=False) as p:
                for i in range(lo, min(lo + 1000, total)):
                    body = {"op": "progress", "job_id": job_ids[i % n],
                            "resource": start_at + i // n, "value": 0.5}
                    p.xadd(stream, {"e": json.dumps(body)})
                last = (await p.execute())[-1]
        written = time.perf_counter()
        end = await _drained(r, sid, last, 300)
    finally:
        await r.aclose()
    return {"burst_events": total, "burst_written_per_s": total / (written - t0),
            "burst_applied_per_s": total / (end - t0)}


def bench_events(client: Any, redis_url: str, workers: int, seconds: float,
                 burst: int) -> dict[str, float]:
    study = client.create_study(external_spec(workers, 1e9))
    jobs = [study.ask(wait=False) for _ in range(workers)]
    job_ids = [j.id for j in jobs if j is not None]
    assert len(job_ids) == workers
    out = asyncio.run(_events_run(redis_url, study.id, job_ids, seconds))
    if burst:
        out.update(asyncio.run(_burst_run(redis_url, study.id, job_ids, burst)))
    trial = study.trial(jobs[0].trial_id)  # type: ignore[union-attr]
    # Every event was applied, not just acknowledged: the first job's curve holds all of its.
    out["curve_points_job0"] = len(trial.curve)
    study.stop()
    return {"workers": workers, **out}


# ------------------------------------------------------------------ main


def ratios(results: dict[str, Any]) -> dict[str, float]:
    echo = results["floor"]["grpc_echo"]["median_us"]
    ping = results["floor"]["redis_ping"]["median_us"]
    h = results["hpod"]
    return {"ask_vs_echo": h["ask"]["median_us"] / echo,
            "complete_vs_echo": h["complete"]["median_us"] / echo,
            "ask_tell_round_vs_2_echo": h["ask_tell_round"]["median_us"] / (2 * echo),
            "report_vs_echo": h["report_progress"]["median_us"] / echo,
            "report_vs_echo_plus_ping": h["report_progress"]["median_us"] / (echo + ping)}


def run(rounds: int, seconds: float, workers: list[int], burst: int,
        log: Callable[[str], None]) -> dict:
    from hpod.client.local import LocalCluster

    results: dict[str, Any] = {"machine": machine(), "rounds": rounds}
    log("grpc echo floor ...")
    results["floor"] = {"grpc_echo": bench_echo(rounds)}
    # Long leases: the bench's external jobs report through Redis, not RPCs, for a while.
    with LocalCluster(workers=0, trainers=(), lease_seconds=3600) as cluster:
        results["floor"]["redis_ping"] = bench_ping(str(cluster.redis_url), rounds)
        with cluster.client() as client:
            log("ask/tell ...")
            results["hpod"] = bench_ask_tell(client, rounds)
            log("report progress ...")
            results["hpod"]["report_progress"] = bench_report(client, rounds)
            results["events"] = []
            for n in workers:
                log(f"events applied, {n} workers ...")
                results["events"].append(bench_events(client, str(cluster.redis_url), n,
                                                       seconds, burst))
    results["ratios"] = ratios(results)
    return results


def print_table(res: dict[str, Any]) -> None:
    m = res["machine"]
    print(f"{m['date']}  {m['cpu']}, {m['cores']} cores, Python {m['python']}")
    rows = [("grpc echo (floor)", res["floor"]["grpc_echo"]),
            ("redis PING (floor)", res["floor"]["redis_ping"]),
            ("hpod AskJob", res["hpod"]["ask"]), ("hpod CompleteJob", res["hpod"]["complete"]),
            ("hpod ask/tell round", res["hpod"]["ask_tell_round"]),
            ("hpod ReportProgress", res["hpod"]["report_progress"])]
    print(f"{'round trip':24}{'median us':>12}{'p99 us':>12}")
    for name, s in rows:
        print(f"{name:24}{s['median_us']:12.0f}{s['p99_us']:12.0f}")
    for k, v in res["ratios"].items():
        print(f"  {k}: {v:.2f}x")
    print(f"{'workers':>8}{'events':>10}{'sent/s':>10}{'applied/s':>11}"
          f"{'burst applied/s':>17}")
    for e in res["events"]:
        burst = f"{e['burst_applied_per_s']:17.0f}" if "burst_applied_per_s" in e else ""
        print(f"{e['workers']:8}{e['events']:10}{e['sent_per_s']:10.0f}"
              f"{e['applied_per_s']:11.0f}{burst}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--rounds", type=int, default=500)
    ap.add_argument("--seconds", type=float, default=3.0, help="writing time per worker count")
    ap.add_argument("--workers", default="1,16,256", help="concurrent simulated workers")
    ap.add_argument("--burst", type=int, default=10000,
                    help="events written at once per worker count to measure the server's "
                    "capacity (0: skip)")
    ap.add_argument("--serve-echo", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve_echo:
        serve_echo(args.serve_echo)
        return 0
    quiet = args.json
    res = run(args.rounds, args.seconds, [int(w) for w in args.workers.split(",")], args.burst,
              lambda s: None if quiet else print(s, file=sys.stderr, flush=True))
    if args.json:
        print(json.dumps(res))
    else:
        print_table(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
