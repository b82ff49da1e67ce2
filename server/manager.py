"""The live side of the server: one :class:`StudyEngine` per study, kept in step with Redis.

Three loops run beside the gRPC servicer on one asyncio event loop:

* *apply*: reads worker events in batches from every active study's stream, applies them to
  the engine and commits inputs, effects and acknowledgements in one transaction per study;
* *dispatch*: counts idle workers per trainer and asks the studies for that many jobs;
* *reap*: jobs whose worker stopped heartbeating become a ``lost`` input (and are retried);
  handoff jobs their worker did not take in time go back to the shared stream.

Continuation affinity: a job that continues a trial (a promotion, the next segment after a
raise of R) goes to the worker that trained the trial's last segment when that worker is idle,
through its own handoff stream, so that it continues from the model it still holds in memory
instead of reading the checkpoint. Any other worker would do as well, only slower; so if the
preferred worker does not take the job within ``handoff_seconds`` (it took another job in the
meantime, or died), the reaper puts the job back on the shared stream.

Every engine mutation and its commit happen under the study's lock, so the log order is the
order the engine saw. If a commit fails, the study is reloaded from Redis, so memory never runs
ahead of what is durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import metrics, tenancy
from .engine import ACTIVE, Effect, EngineError, JobRec, StudyEngine
from .store.redis_store import SNAPSHOT_EVERY, Batch, RedisStore, dumps
from .study import StudyConfig

log = logging.getLogger("hpod.server")


@dataclass
class Settings:
    redis_url: str
    lease_seconds: float = 10.0
    event_batch: int = 500
    tick_seconds: float = 0.05
    consumer: str = "server-1"
    # How long a continuation waits for the idle worker that holds its model (0: no affinity).
    handoff_seconds: float = 1.0


@dataclass
class Live:
    """A study in memory: engine, lock, watchers and lease clocks of external jobs."""

    engine: StudyEngine
    created: float
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    watchers: set[asyncio.Queue] = field(default_factory=set)
    external_seen: dict[str, float] = field(default_factory=dict)
    idle_ask_at: int = -1  # engine.inputs after the last ask that returned nothing
    stale: bool = False  # a commit failed: memory may differ from Redis until reloaded


class StudyManager:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = RedisStore(settings.redis_url)
        self.studies: dict[str, Live] = {}
        self._tasks: list[asyncio.Task] = []
        self._rr = 0
        # Idle workers per trainer as the current dispatch pass saw them, minus those already
        # handed a job in it: where a continuation may go to the worker that holds its model.
        self._idle: dict[str, set[str]] = {}

    # ---------------------------------------------------------------- life cycle

    async def start(self) -> None:
        await self.store.ping()
        for sid in await self.store.study_ids():
            await self._recover(sid)
        await self._apply_pending(list(self.studies))
        # The apply loop needs no pause: its XREADGROUP BLOCK is the wait when idle.
        self._tasks = [asyncio.create_task(self._loop(self._apply_once, 0.0), name="apply"),
                       asyncio.create_task(self._loop(self._dispatch_once), name="dispatch"),
                       asyncio.create_task(self._loop(self._reap_once, 1.0), name="reap")]

    async def stop(self, timeout: float = 5.0) -> None:
        """Cancel the loops and close Redis, each bounded by ``timeout``: a shutdown must not
        hang on a Redis call that does not answer its cancellation."""
        for t in self._tasks:
            t.cancel()
        if self._tasks:
            _, stuck = await asyncio.wait(self._tasks, timeout=timeout)
            if stuck:
                log.warning("loops %s did not stop within %gs", [t.get_name() for t in stuck],
                            timeout)
        try:
            await asyncio.wait_for(self.store.close(), timeout)
        except Exception:
            log.warning("closing the Redis connections failed or timed out", exc_info=True)

    async def _loop(self, step: Any, pause: float | None = None) -> None:
        while True:
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except Exception:  # one bad pass must not stop the server
                log.exception("%s failed; retrying", step.__name__)
                await asyncio.sleep(0.5)
            await asyncio.sleep(pause if pause is not None else self.settings.tick_seconds)

    async def _recover(self, sid: str) -> None:
        meta, snap, tail = await self.store.load_study(sid)
        if not meta:
            return
        config = StudyConfig.from_dict(json.loads(meta["config"]))
        if snap:
            engine = StudyEngine.from_state(sid, config, snap["state"])
        else:
            engine = StudyEngine(sid, config)
        for inp in tail:
            engine.apply(inp)
        engine.take_effects()  # already carried out before the crash
        live = Live(engine, float(meta.get("created", time.time())))
        now = time.time()
        live.external_seen = {j.job_id: now for j in engine.jobs.values() if j.external}
        self.studies[sid] = live
        if config.trainer:
            await self.store.ensure_job_stream(config.trainer)
        await self.store.ensure_event_group(sid)
        log.info("recovered study %s: %d inputs replayed after snapshot", sid, len(tail),
                 extra={"study_id": sid})

    async def _apply_pending(self, sids: list[str] | None = None) -> None:
        """Events read before a crash but not acknowledged: apply them first, in order."""
        sids = list(self.studies) if sids is None else sids
        while True:
            got = await self.store.read_events(sids, self.settings.consumer, 1000, 0, True)
            if not any(entries for _, entries in got):
                return
            for sid, entries in got:
                await self._apply_events(sid, entries)

    # ---------------------------------------------------------------- studies

    async def create(self, config: StudyConfig) -> Live:
        config.check()
        sid = "s" + secrets.token_hex(5)
        await self.store.create_study(sid, config.to_dict(), config.name)
        if config.trainer:
            await self.store.ensure_job_stream(config.trainer)
        live = Live(StudyEngine(sid, config), time.time())
        self.studies[sid] = live
        async with live.lock:
            await self._commit(sid, live, [], [])
        log.info("created study %s (%s, tenant %r)", sid, config.algorithm, config.tenant,
                 extra={"study_id": sid})
        return live

    def get(self, sid: str) -> Live:
        live = self.studies.get(sid)
        # Another tenant's study is reported exactly like a missing one: ids do not leak.
        if live is None or not tenancy.visible(live.engine.config.tenant):
            raise EngineError("not_found", f"no study {sid!r}; list studies with "
                              "`hpod study list`")
        if live.stale:
            raise EngineError("unavailable", f"study {sid} is reloading after a storage "
                              "error; retry in a moment")
        return live

    async def delete(self, sid: str) -> None:
        live = self.get(sid)
        async with live.lock:
            if live.engine.state == ACTIVE:
                await self._mutate(sid, live, {"op": "stop"})
            await self.store.delete_study(sid)
            self.studies.pop(sid, None)
            for q in live.watchers:
                q.put_nowait(None)

    async def submit(self, sid: str, inp: Mapping[str, Any]) -> Any:
        """Apply one input from an RPC (ask/tell, stop, raise R) and commit it."""
        live = self.get(sid)
        async with live.lock:
            if live.stale:
                raise EngineError("unavailable", f"study {sid} is reloading after a storage "
                                  "error; retry in a moment")
            result = await self._mutate(sid, live, inp)
        if inp["op"] == "ask":
            for job in result:
                live.external_seen[job.job_id] = time.time()
        elif "job_id" in inp:
            live.external_seen[inp["job_id"]] = time.time()
        return result

    async def _mutate(self, sid: str, live: Live, inp: Mapping[str, Any]) -> Any:
        result = live.engine.apply(inp)
        await self._commit(sid, live, [inp], [])
        return result

    # ---------------------------------------------------------------- commits

    async def _commit(self, sid: str, live: Live, inputs: list[Mapping[str, Any]],
                      ack_ids: list[str], job_acks: list[tuple[str, str]] | None = None
                      ) -> None:
        eng = live.engine
        effects = eng.take_effects()
        batch = Batch(inputs=list(inputs), ack_ids=ack_ids, job_acks=job_acks or [])
        for eff in effects:
            self._add_effect(eng, batch, eff)
        batch.study_fields = {"state": eng.state, "summary": dumps(self.summary(live))}
        before = eng.inputs - len(inputs)
        # A snapshot every SNAPSHOT_EVERY inputs, and one when the study ends, so a restarted
        # server replays nothing for finished studies (a model-based sampler refits on replay).
        if (eng.inputs // SNAPSHOT_EVERY != before // SNAPSHOT_EVERY
                or (inputs and eng.state != ACTIVE)):
            batch.snapshot = dumps({"inputs": eng.inputs, "state": eng.state_dict()})
        try:
            await self.store.commit(sid, batch)
        except Exception:
            # Memory may now be ahead of Redis (or not: EXEC may have run before the connection
            # broke). Redis is the truth: reload the study from it, now or once Redis is back.
            log.exception("commit for study %s failed; reloading it from Redis", sid,
                          extra={"study_id": sid})
            live.stale = True
            await self._reload(sid)
            raise
        self._publish(live, effects)

    async def _reload(self, sid: str) -> None:
        old = self.studies.get(sid)
        try:
            await self._recover(sid)
        except Exception:
            log.warning("study %s could not be reloaded yet; will retry", sid)
            return
        new = self.studies.get(sid)
        if old is not None and new is not None and new is not old:
            new.watchers = old.watchers
        # Events of the failed batch are still pending for this consumer: apply them now
        # (applying an event twice changes nothing, so an overlap with the apply loop is safe).
        await self._apply_pending([sid])

    def _add_effect(self, eng: StudyEngine, batch: Batch, eff: Effect) -> None:
        if eff.kind == "trial" and eff.trial_id is not None:
            batch.trials[eff.trial_id] = dumps(vars(eng.trials[eff.trial_id]))
        elif eff.kind == "enqueue" and eff.job is not None:
            batch.jobs.append((eng.config.trainer, self._handoff_to(eng, eff.job),
                               dumps(self.job_payload(eng, eff.job))))
        elif eff.kind == "stop_job" and eff.job is not None:
            batch.stop_jobs.append(eff.job.job_id)

    def _handoff_to(self, eng: StudyEngine, job: JobRec) -> str:
        """The idle worker that trained this trial's last segment, or "" (any worker)."""
        if self.settings.handoff_seconds <= 0 or job.from_resource <= 0 or job.attempt:
            return ""
        wid = eng.trials[job.trial_id].worker
        idle = self._idle.get(eng.config.trainer, set())
        if not wid or wid not in idle:
            return ""
        idle.discard(wid)  # one job per idle worker and pass
        metrics.HANDOFFS.inc()
        return wid

    def job_payload(self, eng: StudyEngine, job: JobRec) -> dict[str, Any]:
        cfg = eng.config
        return {"study_id": eng.study_id, "job_id": job.job_id, "trial_id": job.trial_id,
                "config": job.config, "from_resource": job.from_resource,
                "to_resource": job.to_resource, "bracket": job.bracket, "rung": job.rung,
                "attempt": job.attempt, "trainer": cfg.trainer,
                "max_resource": eng.max_resource(),
                "seed": (cfg.seed * 1_000_003 + job.trial_id) % (2**63),
                "trainer_settings": dict(cfg.trainer_settings)}

    def _publish(self, live: Live, effects: list[Effect]) -> None:
        events = [e for e in effects if e.kind == "event"]
        if not events or not live.watchers:
            return
        for q in list(live.watchers):
            for e in events:
                q.put_nowait(e)

    def summary(self, live: Live) -> dict[str, Any]:
        eng = live.engine
        best = eng.best_trial()
        return {**eng.counts(), "resource_used": eng.resource_used,
                "cost_used": eng.cost_used,
                "best": None if best is None else {"trial": best.id, "value": best.value}}

    # ---------------------------------------------------------------- apply loop

    async def _apply_once(self) -> None:
        sids = [sid for sid, lv in self.studies.items()
                if lv.engine.state == ACTIVE and not lv.stale]
        if not sids:
            await asyncio.sleep(0.1)
            return
        got = await self.store.read_events(sids, self.settings.consumer,
                                           self.settings.event_batch, 100)
        for sid, entries in got:
            if entries:
                await self._apply_events(sid, entries)

    async def _apply_events(self, sid: str, entries: list[tuple[str, dict]]) -> None:
        live = self.studies.get(sid)
        if live is None or live.stale:
            return
        async with live.lock:
            applied = []
            for _eid, ev in entries:
                inp = _event_to_input(ev)
                if inp is None:
                    continue
                try:
                    live.engine.apply(inp)
                except EngineError as e:
                    # Late or duplicated worker reports (a lost job's old worker, a redelivery)
                    # are expected and change nothing.
                    log.debug("ignored event for %s: %s", sid, e.message)
                    continue
                applied.append(inp)
            await self._commit(sid, live, applied, [eid for eid, _ in entries])
            metrics.EVENTS_APPLIED.inc(len(applied))
            metrics.WARM_RESUMES.inc(sum(1 for i in applied if i.get("warm")))

    # ---------------------------------------------------------------- dispatch

    async def _dispatch_once(self) -> None:
        by_trainer: dict[str, list[str]] = {}
        for sid, lv in self.studies.items():
            if lv.engine.state == ACTIVE and lv.engine.config.trainer and not lv.stale:
                by_trainer.setdefault(lv.engine.config.trainer, []).append(sid)
        if not by_trainer:
            return
        idle = await self.store.idle_workers(self.settings.lease_seconds)
        self._idle = {t: set(ids) for t, ids in idle.items()}
        self._rr += 1
        for trainer, sids in by_trainer.items():
            queued = sum(self.studies[s].engine.queued_jobs() for s in sids if s in self.studies)
            free = len(idle.get(trainer, ())) - queued
            if free <= 0:
                continue
            order = sids[self._rr % len(sids):] + sids[:self._rr % len(sids)]
            for sid in order:
                if free <= 0:
                    break
                free -= await self._ask(sid, free)

    async def _ask(self, sid: str, free: int) -> int:
        live = self.studies.get(sid)
        if live is None or live.stale:
            return 0
        async with live.lock:
            eng = live.engine
            if eng.state != ACTIVE or live.idle_ask_at == eng.inputs:
                return 0  # nothing changed since it last had nothing to give
            jobs = await self._mutate(sid, live, {"op": "ask", "free": free})
            live.idle_ask_at = eng.inputs if not jobs else -1
            return len(jobs)

    # ---------------------------------------------------------------- leases

    async def _reap_once(self) -> None:
        for sid in [sid for sid, lv in self.studies.items() if lv.stale]:
            await self._reload(sid)
        lease = self.settings.lease_seconds
        if self.settings.handoff_seconds > 0:
            metrics.HANDOFFS_RETURNED.inc(
                await self.store.return_handoffs(self.settings.handoff_seconds, lease))
        for queue, eid, job in await self.store.expired_jobs(lease):
            live = self.studies.get(job["study_id"]) if job else None
            if live is None:
                await self.store.commit(job["study_id"] if job else "_",
                                        Batch(job_acks=[(queue, eid)]))
                continue
            async with live.lock:
                inp = {"op": "lost", "job_id": job["job_id"]}
                try:
                    live.engine.apply(inp)
                    inputs = [inp]
                except EngineError:
                    inputs = []  # already ended: only the stale lease entry remains
                metrics.LEASE_EXPIRIES.inc()
                log.warning("job %s lost with its worker", job["job_id"],
                            extra={"study_id": job["study_id"], "job_id": job["job_id"],
                                   "trial_id": job.get("trial_id")})
                await self._commit(job["study_id"], live, inputs, [], [(queue, eid)])
        now = time.time()
        for sid, live in list(self.studies.items()):
            stale = [j for j, seen in live.external_seen.items() if now - seen > lease]
            for job_id in stale:
                live.external_seen.pop(job_id, None)
                if job_id in live.engine.jobs:
                    with contextlib.suppress(EngineError):
                        await self.submit(sid, {"op": "lost", "job_id": job_id})
                        live.external_seen.pop(job_id, None)

    # ---------------------------------------------------------------- watch

    async def watch(self, sid: str) -> AsyncIterator[Effect | None]:
        live = self.get(sid)
        q: asyncio.Queue = asyncio.Queue()
        live.watchers.add(q)
        try:
            if live.engine.state != ACTIVE:
                yield Effect("event", event="study_ended")
                return
            while True:
                item = await q.get()
                if item is None:
                    return
                yield item
                if item.event == "study_ended":
                    return
        finally:
            live.watchers.discard(q)


def _event_to_input(ev: Mapping[str, Any]) -> dict[str, Any] | None:
    op = ev.get("op")
    if op == "start":
        return {"op": "start", "job_id": ev["job_id"], "worker": ev.get("worker", "")}
    if op == "progress":
        return {"op": "progress", "job_id": ev["job_id"], "resource": ev["resource"],
                "value": ev["value"]}
    if op == "complete":
        inp = {"op": "complete", "job_id": ev["job_id"], "value": ev["value"],
               "resource": ev.get("resource"), "cost": ev.get("cost"),
               "samples_per_second": ev.get("samples_per_second")}
        if ev.get("warm"):
            inp["warm"] = True
        return inp
    if op == "fail":
        return {"op": "fail", "job_id": ev["job_id"], "reason": ev.get("reason", "")}
    return None
