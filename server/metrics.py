"""Prometheus metrics (``--metrics-port``): counters the server bumps as it works, gauges read
from the live studies at scrape time, and an interceptor that times every RPC.

Counters are always kept (an increment is a few hundred nanoseconds); they are only served when
a metrics port is set. Without ``prometheus_client`` installed every metric is a no-op and
``--metrics-port`` is refused with a message saying what to install.

Events applied per second is ``rate(hpod_events_applied_total[1m])`` in PromQL.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc

from .residency import trial_states

try:
    import prometheus_client as prom
    from prometheus_client.core import GaugeMetricFamily
except ImportError:  # optional: the server runs without it
    prom = None

if TYPE_CHECKING:
    from .manager import StudyManager


class _Noop:
    def labels(self, *_: Any, **__: Any) -> _Noop:
        return self

    def inc(self, *_: Any) -> None: ...

    def dec(self, *_: Any) -> None: ...

    def set(self, *_: Any) -> None: ...

    def observe(self, *_: Any) -> None: ...


if prom is not None:
    REGISTRY = prom.CollectorRegistry()
    EVENTS_APPLIED = prom.Counter("hpod_events_applied", "Worker events applied to studies",
                                  registry=REGISTRY)
    LEASE_EXPIRIES = prom.Counter("hpod_lease_expiries", "Jobs lost with their worker (lease "
                                  "expired or released on SIGTERM)", registry=REGISTRY)
    RPC_SECONDS = prom.Histogram("hpod_rpc_seconds", "Latency of unary RPCs", ["method"],
                                 registry=REGISTRY,
                                 buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25,
                                          .5, 1, 2.5, 5))
    RPCS = prom.Counter("hpod_rpcs", "RPCs by method and status code", ["method", "code"],
                        registry=REGISTRY)
    WORKERS = prom.Gauge("hpod_workers", "Live workers by status (idle|busy)", ["status"],
                         registry=REGISTRY)
    UTILISATION = prom.Gauge("hpod_worker_utilisation", "Busy workers / live workers",
                             registry=REGISTRY)
    WATCHES = prom.Gauge("hpod_watches", "Open WatchStudy streams", registry=REGISTRY)
    HANDOFFS = prom.Counter("hpod_handoffs", "Continuations handed to the idle worker that "
                            "holds the trial's model", registry=REGISTRY)
    HANDOFFS_RETURNED = prom.Counter("hpod_handoffs_returned", "Handoffs not taken in time, "
                                     "put back for any worker", registry=REGISTRY)
    WARM_RESUMES = prom.Counter("hpod_warm_resumes", "Segments a worker continued from the "
                                "model in its memory instead of the checkpoint",
                                registry=REGISTRY)
    STUDIES_FAILED = prom.Counter("hpod_studies_failed", "Studies failed because their "
                                  "algorithm raised", registry=REGISTRY)
else:
    REGISTRY = None
    EVENTS_APPLIED = LEASE_EXPIRIES = RPC_SECONDS = RPCS = WORKERS = UTILISATION = WATCHES = \
        HANDOFFS = HANDOFFS_RETURNED = WARM_RESUMES = STUDIES_FAILED = _Noop()


class StudyCollector:
    """Gauges computed from the manager's studies when Prometheus scrapes (no bookkeeping on
    the hot path). Reads plain dicts from the scrape thread; a count may be one event old."""

    def __init__(self, manager: StudyManager) -> None:
        self.m = manager

    def collect(self) -> Iterator[Any]:
        studies = GaugeMetricFamily("hpod_studies", "Studies by state", labels=["state"])
        trials = GaugeMetricFamily("hpod_trials", "Trials by state", labels=["state"])
        jobs = GaugeMetricFamily("hpod_jobs", "Jobs by state (queued|leased)", labels=["state"])
        by_study: dict[str, int] = {}
        by_trial: dict[str, int] = {}
        by_job = {"queued": 0, "leased": 0}
        for live in list(self.m.studies.values()):
            eng = live.engine
            by_study[eng.state] = by_study.get(eng.state, 0) + 1
            for state, n in trial_states(eng).items():
                by_trial[state] = by_trial.get(state, 0) + n
            for j in list(eng.jobs.values()):
                by_job["queued" if j.state == "queued" else "leased"] += 1
        # Ended studies resting out of memory still count, with the trial counts they were
        # put to rest with.
        for rest in list(self.m.residency.resting.values()):
            by_study[rest.state] = by_study.get(rest.state, 0) + 1
            for state, n in rest.trials.items():
                by_trial[state] = by_trial.get(state, 0) + n
        for family, counts in ((studies, by_study), (trials, by_trial), (jobs, by_job)):
            for state, n in sorted(counts.items()):
                family.add_metric([state], n)
            yield family


def serve(port: int, manager: StudyManager, host: str = "0.0.0.0") -> None:
    if prom is None:
        raise SystemExit("--metrics-port needs prometheus_client: pip install prometheus-client")
    REGISTRY.register(StudyCollector(manager))
    prom.start_http_server(port, addr=host, registry=REGISTRY)


async def update_workers(manager: StudyManager) -> None:
    """Worker gauges from Redis (the workers' own registry); called by a server loop."""
    if prom is None:
        return
    counts = await manager.store.worker_status(manager.settings.lease_seconds)
    for status in ("idle", "busy"):
        WORKERS.labels(status).set(counts.get(status, 0))
    total = sum(counts.values())
    UTILISATION.set(counts.get("busy", 0) / total if total else 0.0)


async def worker_loop(manager: StudyManager, every: float = 2.0) -> None:
    while True:
        try:
            await update_workers(manager)
        except Exception:  # Redis away: keep the last values, try again
            pass
        await asyncio.sleep(every)


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Times unary RPCs and counts every RPC by status code."""

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None or prom is None:
            return handler
        method = details.method.rsplit("/", 1)[-1]
        inner = handler.unary_unary

        async def timed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            code = "OK"
            try:
                return await inner(request, context)
            except BaseException:
                code = _code_name(context) or "UNKNOWN"
                raise
            finally:
                RPC_SECONDS.labels(method).observe(time.perf_counter() - start)
                RPCS.labels(method, code).inc()

        return handler._replace(unary_unary=timed)


def _code_name(context: grpc.aio.ServicerContext) -> str | None:
    try:
        code = context.code()
    except Exception:  # older grpc: no code() on aio contexts
        return None
    return getattr(code, "name", None) if code is not None else None
