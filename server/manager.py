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
ahead of what is durable; the copy that failed can no longer commit (every commit checks, under
the lock, that its copy is still the one the manager holds).

The event loop only does bookkeeping. A study whose algorithm fits a model (or whose inputs
have once taken more than a few milliseconds) has its inputs applied on a thread of the policy
pool, still under the study's lock so their order is the log's; recovery after a restart
replays there too, after the port is bound, and a study still being rebuilt answers
UNAVAILABLE. An algorithm that raises fails its own study (state FAILED, with the message),
never the server or another study.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import multiprocessing
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from . import metrics, plugins, tenancy
from .algorithms import offload
from .engine import (
    ACTIVE,
    QUEUED,
    RUNNING,
    STUDY_QUARANTINED,
    AlgorithmFailure,
    Effect,
    EngineError,
    JobRec,
    StudyEngine,
    ask_record,
)
from .ownership import Ownership
from .residency import (
    Residency,
    Resting,
    listing_command,
    restable,
    stored_resting,
    trial_states,
)
from .store.redis_store import SNAPSHOT_EVERY, Batch, LeaseLost, RedisStore, dumps
from .study import StudyConfig

# Algorithms and samplers that fit a model on every suggestion: their inputs never run on the
# event loop. Any other study joins them once one of its inputs takes longer than SLOW_INPUT_S.
MODEL_BASED = frozenset({"cqr", "asha-cqr", "carbs", "asha-carbs", "tpe", "auto", "mfkde", "mfgp"})
SLOW_INPUT_S = 0.003
# A snapshot is also taken once the algorithm has spent this much CPU since the last one, so
# replaying a model-based study after a crash never refits for long.
SNAPSHOT_CPU_S = 2.0
# Events the group delivered this long ago and never acknowledged are read again.
RECLAIM_IDLE_MS = 2000

log = logging.getLogger("hpod.server")


@dataclass
class Settings:
    redis_url: str
    lease_seconds: float = 10.0
    event_batch: int = 500
    tick_seconds: float = 0.05
    # This replica's id: its consumer name on the event streams and its name on study leases.
    # A replica restarted under the same id takes its studies back at once.
    consumer: str = "server-1"
    # How long a study stays owned by a replica that stopped renewing its lease (it died):
    # about the failover time. Renewed every third of it.
    study_lease_seconds: float = 10.0
    advertise_address: str = ""  # host:port where other replicas forward this one's calls
    # How long a continuation waits for the idle worker that holds its model (0: no affinity).
    handoff_seconds: float = 1.0
    policy_threads: int = 4  # threads that run model-based studies' inputs, off the loop
    # Processes for algorithms' CPU-heavy pure functions (model fits that hold the GIL);
    # 0 runs them on the policy threads.
    fit_processes: int = 2
    recovery_concurrency: int = 2  # studies rebuilt at once after a restart
    # How much lower the fit processes run than the event loop (nice steps). Not the policy
    # threads: a thread holding the GIL must not be the one the kernel runs last.
    background_niceness: int = 10
    # The workers' checkpoint directory, when this server can reach it too (a shared volume,
    # or `hpod local`): a study's checkpoints are pruned when it ends, keeping the best trials'.
    checkpoint_dir: str = ""
    keep_checkpoints: int = 3  # trials whose checkpoints survive the end of their study
    # Jobs a model-based ask/tell study keeps ready beyond what is asked of it (asked in the
    # background: a client's ask then never waits on a model fit). The price: a ready
    # suggestion may not have seen the last result. 0: suggest on demand.
    suggestion_buffer: int = 1
    # Ended studies leave memory after this long unused, or beyond this many (server/residency.py)
    rest_after_seconds: float = 60.0
    ended_in_memory: int = 32


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
    # Rebuilt, and applying the events an earlier reader left unacknowledged: the apply loop
    # reads none of its newer events until then, or they would be applied first.
    catching_up: bool = False
    offloaded: bool = False  # its inputs run on the policy pool, not on the event loop
    busy: bool = False  # an input of it is being applied off the loop right now
    snapshot_at: int = 0  # engine.inputs at its last snapshot
    log_len: int = 0  # entries its log in Redis holds: every commit checks it (StaleLog)
    cpu_since_snapshot: float = 0.0
    fence: str | None = None  # the lease this copy was loaded under; every commit checks it
    # Ask/tell jobs made ready and not handed to a client yet (mirrors the study's ready list
    # in Redis), and whether a background ask is filling it.
    ready: deque[str] = field(default_factory=deque)
    refill: asyncio.Task | None = None
    listed: Any = None  # how a listing last showed it (shown again while an input runs)
    outbox: bool = True  # its outbox in Redis may hold entries (checked by the reaper)


class StudyManager:
    def __init__(self, settings: Settings) -> None:
        plugins.load_plugins()
        self.settings = settings
        self.store = RedisStore(settings.redis_url)
        self.studies: dict[str, Live] = {}
        # Studies found in Redis at start-up and not rebuilt yet: id -> what they wait for.
        self.loading: dict[str, str] = {}
        self._tasks: list[asyncio.Task] = []
        self._background: set[asyncio.Task] = set()
        self._pool = ThreadPoolExecutor(settings.policy_threads, thread_name_prefix="policy")
        self._fits: ProcessPoolExecutor | None = None
        if settings.fit_processes > 0:
            # spawn: a fork of this process (threads, an event loop, sockets) is unsafe, and a
            # forkserver would outlive a killed server; spawned workers die with it.
            self._fits = ProcessPoolExecutor(
                settings.fit_processes, mp_context=multiprocessing.get_context("spawn"),
                initializer=offload.fit_process_started,
                initargs=(settings.background_niceness,))
            offload.set_runner(lambda fn, *args: self._fits.submit(fn, *args).result())
            # Started now, each importing the algorithms (torch, scikit-learn: seconds) in
            # the background, so a study's first fit does not pay for it.
            for _ in range(settings.fit_processes):
                self._fits.submit(offload.ready)
        self._rr = 0
        self._last_reclaim = 0.0
        # The studies whose events the apply loop is reading right now, and when it is done.
        self._reading: tuple[frozenset[str], asyncio.Event] | None = None
        self._redis_run_id: str | None = None
        # Idle workers per trainer as the current dispatch pass saw them, minus those already
        # handed a job in it: where a continuation may go to the worker that holds its model.
        self._idle: dict[str, set[str]] = {}
        self.ownership = Ownership(self.store.leases, settings.consumer,
                                   settings.advertise_address, settings.study_lease_seconds,
                                   self.store.study_ids, self._adopt, self._give_up, self._drop)
        self._gate: asyncio.Semaphore | None = None
        self._ownership_task: asyncio.Task | None = None
        self.residency = Residency(settings.rest_after_seconds, settings.ended_in_memory)

    # ---------------------------------------------------------------- life cycle

    async def start(self) -> None:
        """Take this replica's share of the stored studies and start the loops; the studies
        are rebuilt in the background, so the caller can bind its port at once; a study
        answers UNAVAILABLE until it is rebuilt."""
        await self.store.ping()
        self._gate = asyncio.Semaphore(max(1, self.settings.recovery_concurrency))
        await self.ownership.step()
        self._tasks = [asyncio.create_task(self._loop(self._apply_once, 0.0), name="apply"),
                       asyncio.create_task(self._loop(self._dispatch_once), name="dispatch"),
                       asyncio.create_task(self._loop(self._reap_once, 1.0), name="reap")]
        self._ownership_task = asyncio.create_task(self.ownership.run(), name="ownership")

    async def _adopt(self, sid: str, fence: str) -> None:
        """A study this replica just took: rebuilt in the background (UNAVAILABLE till then),
        or, if it ended and rests in Redis unchanged, taken back resting (loaded on first use)."""
        if await self._take_resting(sid):
            return
        self.loading[sid] = "being rebuilt after a restart or a failover"

        async def rebuild() -> None:
            assert self._gate is not None
            async with self._gate:
                await self._recover_with_retries(sid)

        self._spawn(rebuild(), f"recover {sid}")

    async def _give_up(self, sid: str) -> None:
        """Out of memory before the lease is released: no write of it can follow."""
        live = self.studies.get(sid)
        if live is None:
            self._drop(sid)
            return
        async with live.lock:
            self._drop(sid)
        # A read of its events already sent to Redis puts them on this replica's pending list,
        # which the next owner claims before it reads on: the lease is released only once
        # that read has returned (none reads it after the drop above).
        reading = self._reading
        if reading is not None and sid in reading[0]:
            await reading[1].wait()

    def _drop(self, sid: str) -> None:
        """Forget a study this replica no longer owns (given back, lease lost, deleted)."""
        self.loading.pop(sid, None)
        self.residency.forget(sid)
        live = self.studies.pop(sid, None)
        if live is None:
            return
        live.stale = True  # this copy never writes again
        for q in live.watchers:
            q.put_nowait(None)  # a watch ends; the client watches again, on the new owner

    def is_local(self, sid: str) -> bool:
        """Whether this replica owns the study (loaded or being loaded)."""
        return sid in self.studies or sid in self.loading or sid in self.residency.resting

    async def drain(self) -> None:
        """SIGTERM: stop the loops and give every study back, so the other replicas take
        them within one ownership period; calls still arriving are forwarded to them."""
        tasks = [*self._tasks, *([self._ownership_task] if self._ownership_task else [])]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)
        self._tasks = []
        self._ownership_task = None
        await self.ownership.drain()

    async def ready(self) -> None:
        """Wait until every study found at start-up is rebuilt (or quarantined)."""
        while self.loading:
            await asyncio.sleep(0.05)

    async def stop(self, timeout: float = 5.0) -> None:
        """Cancel the loops and close Redis, each bounded by ``timeout``: a shutdown must not
        hang on a Redis call that does not answer its cancellation."""
        tasks = [*self._tasks, *self._background,
                 *([self._ownership_task] if self._ownership_task else [])]
        for t in tasks:
            t.cancel()
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=timeout)
            if stuck:
                log.warning("loops %s did not stop within %gs", [t.get_name() for t in stuck],
                            timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._fits is not None:
            offload.set_runner(None)
            self._fits.shutdown(wait=False, cancel_futures=True)
        try:
            await asyncio.wait_for(self.store.close(), timeout)
        except Exception:
            log.warning("closing the Redis connections failed or timed out", exc_info=True)

    async def _loop(self, step: Any, pause: float | None = None) -> None:
        while True:
            if not self.ownership.fresh():
                # Woken from a pause past its leases (or Redis away): nothing of any study is
                # read or written until the next renewal says which studies are still ours.
                await asyncio.sleep(0.05)
                continue
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except Exception:  # one bad pass must not stop the server
                log.exception("%s failed; retrying", step.__name__)
                await asyncio.sleep(0.5)
            await asyncio.sleep(pause if pause is not None else self.settings.tick_seconds)

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _recover_with_retries(self, sid: str) -> None:
        delay = 0.5
        while sid in self.ownership.held:
            try:
                await self._recover(sid)
                return
            except RedisError:
                log.warning("study %s: Redis unreachable while rebuilding it; retrying in %gs",
                            sid, delay, extra={"study_id": sid})
            except Exception:
                log.exception("rebuilding study %s failed; retrying", sid,
                              extra={"study_id": sid})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def _recover(self, sid: str, apply_pending: bool = True) -> None:
        fence = self.ownership.held.get(sid)
        try:
            if fence is None:  # not (or no longer) ours
                return
            meta, snap, tail = await self.store.load_study(sid)
            if not meta:
                # Deleted (its id leaves the set last), or a creation that died half-way: a
                # creator holds the lease while it writes, so holding it here means neither
                # is under way, and the id is dropped for good.
                self.ownership.forget(sid)
                await self.store.forget_study_id(sid)
                await self.store.leases.release(sid, fence)
                return
            config = StudyConfig.from_dict(json.loads(meta["config"]))
            loop = asyncio.get_running_loop()
            engine, problem = await loop.run_in_executor(
                self._pool, _rebuild, sid, config, snap, tail)
            if self.ownership.held.get(sid) != fence:
                return  # lost while it was rebuilt
            ready = await self.store.ready_jobs(sid)
            live = Live(engine, float(meta.get("created", time.time())), fence=fence,
                        catching_up=apply_pending)
            live.offloaded = _model_based(config) or meta.get("off_loop") == "1"
            live.snapshot_at = engine.inputs - len(tail)
            # The log starts at input `log_base`; what it holds before the tail is older
            # than the snapshot (a log written before logs were trimmed).
            base = int(meta.get("log_base", 0) or 0)
            live.log_len = (snap["inputs"] if snap else 0) - base + len(tail)
            if problem:
                await self._quarantine(sid, live, problem)
                return
            # External clients get one lease of grace on top: they were cut off by the restart
            # and may sit in their channel's reconnect backoff for a while.
            grace = time.time() + self.settings.lease_seconds
            live.ready = deque(j for j in ready if _waits_for_client(engine.jobs.get(j)))
            live.external_seen = {j.job_id: grace for j in engine.jobs.values()
                                  if j.external and j.job_id not in live.ready}
            old = self.studies.get(sid)
            if old is not None:
                live.watchers = old.watchers
            self.studies[sid] = live
            if config.trainer:
                await self.store.ensure_job_stream(config.trainer)
            await self.store.ensure_event_group(sid)
            if engine.state == ACTIVE:
                async with live.lock:
                    if self._owns(sid, live):
                        await self._mutate(sid, live, _new_epoch())
                        await self._restore_ready(sid, live)
            log.info("recovered study %s: %d inputs replayed after snapshot", sid, len(tail),
                     extra={"study_id": sid})
        finally:
            self.loading.pop(sid, None)
        if apply_pending and self.studies.get(sid) is live:
            # Events a previous owner read and never acknowledged are taken over first, so
            # they are applied in stream order, before any newer one (the apply loop leaves
            # the study alone till then).
            try:
                await self.store.take_pending(sid, self.settings.consumer)
                await self._apply_pending([sid])
            except BaseException:
                live.stale = True  # the reaper rebuilds it and catches up again
                raise
            live.catching_up = False

    async def _restore_ready(self, sid: str, live: Live) -> None:
        """An ask/tell study that suggests ahead and has handed out jobs had its ready jobs
        made right after its last hand-out, before any later input; a crash may have cut that
        background ask short. It is asked again here, before any input, so the study goes on
        exactly as it would have without the restart. Caller holds the lock."""
        want = self.settings.suggestion_buffer - len(live.ready)
        eng = live.engine
        if want > 0 and live.offloaded and not eng.config.trainer and eng.job_seq > 0:
            await self._ask_ahead(sid, live, want)

    async def _quarantine(self, sid: str, live: Live, problem: str) -> None:
        """Keep a study whose stored state does not replay, read-only, with the reason."""
        eng = live.engine
        eng.state, eng.error = STUDY_QUARANTINED, problem
        self.studies[sid] = live
        await self.store.mark_study(sid, STUDY_QUARANTINED, problem, live.fence)
        log.error("study %s quarantined: %s", sid, problem, extra={"study_id": sid})

    async def _apply_pending(self, sids: list[str] | None = None) -> None:
        """Events read before a crash but not acknowledged: apply them first, in order."""
        lives = {s: self.studies[s] for s in (list(self.studies) if sids is None else sids)
                 if s in self.studies and not self.studies[s].stale}
        while lives:
            got = await self.store.read_events(list(lives), self.settings.consumer, 1000, 0,
                                               True)
            if not any(entries for _, entries in got):
                return
            for sid, entries in got:
                await self._apply_events(sid, entries)
            # A copy that could not apply them (reloaded, or moved) leaves them pending for
            # the copy that replaced it: reading them again here would never end.
            lives = {s: lv for s, lv in lives.items()
                     if self.studies.get(s) is lv and not lv.stale}

    # ---------------------------------------------------------------- studies

    async def create(self, config: StudyConfig) -> Live:
        config.check()
        sid = "s" + secrets.token_hex(5)
        fence = await self.ownership.take_new(sid)  # its creator owns it
        try:
            await self.store.create_study(sid, config.to_dict(), config.name, fence)
        except BaseException:
            self.ownership.forget(sid)
            raise
        if config.trainer:
            await self.store.ensure_job_stream(config.trainer)
        live = Live(StudyEngine(sid, config), time.time(), fence=fence)
        live.offloaded = _model_based(config)
        self.studies[sid] = live
        async with live.lock:
            await self._mutate(sid, live, _new_epoch())
        log.info("created study %s (%s, tenant %r)", sid, config.algorithm, config.tenant,
                 extra={"study_id": sid})
        return live

    def get(self, sid: str) -> Live:
        live = self.studies.get(sid)
        if live is None and sid in self.loading:
            raise EngineError("unavailable", f"study {sid} is {self.loading[sid]}; retry in a "
                              "moment")
        rest = self.residency.resting.get(sid) if live is None else None
        if rest is not None and tenancy.visible(rest.tenant):  # callers wake() it first
            raise EngineError("unavailable", f"study {sid} is being loaded; retry in a moment")
        # Another tenant's study is reported exactly like a missing one: ids do not leak.
        if live is None or not tenancy.visible(live.engine.config.tenant):
            raise EngineError("not_found", f"no study {sid[:80]!r}; list studies with "
                              "`hpod study list`")
        if live.stale:
            raise EngineError("unavailable", f"study {sid} is reloading after a storage "
                              "error; retry in a moment")
        return live

    async def read(self, sid: str) -> Live:
        """:meth:`get` for a read: waits while an input of that study is being applied off
        the loop, so a read never sees an engine half-way through an input."""
        await self.wake(sid)
        live = self.get(sid)
        if live.busy:
            async with live.lock:
                pass
            live = self.get(sid)
        return live

    async def delete(self, sid: str) -> None:
        await self.wake(sid)
        live = self.get(sid)
        async with live.lock:
            if not self._owns(sid, live):
                raise EngineError("unavailable", f"study {sid} is reloading; retry in a moment")
            if live.engine.state == ACTIVE:
                await self._mutate(sid, live, {"op": "stop"})
            await self.store.delete_study(sid, live.fence)
            self.ownership.forget(sid)
            self.studies.pop(sid, None)
            self.residency.forget(sid)
            live.stale = True  # no late commit may re-create its keys
            for q in live.watchers:
                q.put_nowait(None)

    async def submit(self, sid: str, inp: Mapping[str, Any]) -> Any:
        """Apply one input from an RPC (ask/tell, stop, raise R) and commit it."""
        await self.wake(sid)
        live = self.get(sid)
        async with live.lock:
            if not self._owns(sid, live):
                raise EngineError("unavailable", f"study {sid} is reloading after a storage "
                                  "error; retry in a moment")
            result = await self._mutate(sid, live, inp)
        if inp["op"] == "ask":
            for job in result:
                live.external_seen[job.job_id] = time.time()
        elif "job_id" in inp:
            # The lease clock of a running external job restarts; an ended one has none (a
            # clock kept for every job ever run would make the reaper's pass grow with the
            # study).
            if inp["job_id"] in live.engine.jobs:
                live.external_seen[inp["job_id"]] = time.time()
            else:
                live.external_seen.pop(inp["job_id"], None)
        return result

    async def ask_external(self, sid: str, client: str) -> JobRec | None:
        """A job for an ask/tell client: one made ready in the background (or the retry of a
        lost one) when the study has it, so the client does not wait on a model fit; else
        one asked now. Either way the study then tops its ready jobs up in the background."""
        live = self.get(sid)
        job = await self._claim_ready(sid, live)
        if job is None and live.refill is not None:
            # Already being suggested: that one is as fresh as one asked now would be.
            await asyncio.shield(live.refill)
            job = await self._claim_ready(sid, live)
        if job is None:
            jobs = await self.submit(sid, {"op": "ask", "free": 1, "external": True,
                                           "client": client})
            job = jobs[0] if jobs else None
        self._top_up(sid, live)
        return job

    async def _claim_ready(self, sid: str, live: Live) -> JobRec | None:
        """Hand out the oldest ready job, without waiting for the study's lock: it leaves the
        ready list in Redis first (a restart cannot hand it out twice), its lease clock
        starts, and its ``start`` input is logged once the lock is free."""
        while live.ready and self._owns(sid, live):
            job_id = live.ready.popleft()
            try:
                taken = await self.store.claim_ready(sid, job_id)
            except RedisError:
                live.ready.appendleft(job_id)
                raise
            job = live.engine.jobs.get(job_id)
            if taken and job is not None:
                live.external_seen[job_id] = time.time()
                self._spawn(self._started(sid, live, job_id), f"start {job_id}")
                return job
        return None

    async def _started(self, sid: str, live: Live, job_id: str) -> None:
        """Log that a ready job was handed out (its trial is RUNNING from then on)."""
        async with live.lock:
            job = live.engine.jobs.get(job_id)
            if self._owns(sid, live) and job is not None and job.state != RUNNING:
                with contextlib.suppress(EngineError, RedisError):
                    await self._mutate(sid, live, {"op": "start", "job_id": job_id})

    def _top_up(self, sid: str, live: Live) -> None:
        """Ask a model-based ask/tell study, in the background, for the jobs its ready list
        lacks (``Settings.suggestion_buffer``)."""
        want = self.settings.suggestion_buffer - len(live.ready)
        if (want <= 0 or not live.offloaded or live.refill is not None
                or live.engine.config.trainer or live.engine.state != ACTIVE
                or not self._owns(sid, live)):
            return
        live.refill = asyncio.create_task(self._refill(sid, live, want), name=f"refill {sid}")
        self._background.add(live.refill)
        live.refill.add_done_callback(self._background.discard)

    async def _refill(self, sid: str, live: Live, want: int) -> None:
        try:
            async with live.lock:
                if self._owns(sid, live) and live.engine.state == ACTIVE:
                    await self._ask_ahead(sid, live, want)
        except (EngineError, RedisError) as e:
            log.info("study %s: no ready job made in the background: %s", sid, e,
                     extra={"study_id": sid})
        finally:
            live.refill = None

    async def _ask_ahead(self, sid: str, live: Live, want: int) -> None:
        await self._mutate(sid, live, {"op": "ask", "free": want, "external": True,
                                       "ready": True})

    def runs_off_loop(self, sid: str) -> bool:
        """Whether the study's inputs run on the policy pool (so a call may wait on a fit)."""
        live = self.studies.get(sid)
        return live is not None and live.offloaded

    def _owns(self, sid: str, live: Live) -> bool:
        """Checked under the study's lock before every mutation: only the copy the manager
        holds, and only while it is not stale, may change and commit the study."""
        return self.studies.get(sid) is live and not live.stale

    async def _mutate(self, sid: str, live: Live, inp: Mapping[str, Any]) -> Any:
        result = await self._run(sid, live, live.engine.apply, inp)
        if inp["op"] == "ask":  # an empty ask changed nothing; a full one logs what it gave
            await self._commit(sid, live, [ask_record(inp, result)] if result else [], [])
        else:
            await self._commit(sid, live, [inp], [])
        return result

    async def _run(self, sid: str, live: Live, fn: Callable[..., Any], *args: Any) -> Any:
        """Call ``fn`` (an engine mutation) on the loop, or on the policy pool for a study
        whose inputs are slow; caller holds the study's lock. An algorithm failure rebuilds
        the study from Redis and fails it (or, if transient, only refuses this input)."""
        start = time.thread_time() if not live.offloaded else 0.0
        try:
            if live.offloaded:
                live.busy = True
                try:
                    result, spent = await asyncio.get_running_loop().run_in_executor(
                        self._pool, _timed, fn, *args)
                finally:
                    live.busy = False
            else:
                result = fn(*args)
                spent = time.thread_time() - start
        except AlgorithmFailure as failure:
            live.stale = True  # this copy may be half-mutated: it never commits again
            self._spawn(self._after_failure(sid, failure), f"fail {sid}")
            if failure.fatal:
                raise EngineError("precondition", f"study {sid} failed: {failure.message}"
                                  ) from None
            raise EngineError("unavailable", f"{failure.message}; retry in a moment") from None
        live.cpu_since_snapshot += spent
        if spent > SLOW_INPUT_S and not live.offloaded:
            live.offloaded = True
            log.info("study %s: an input took %.0f ms; its inputs now run off the event loop",
                     sid, spent * 1000, extra={"study_id": sid})
        return result

    async def _after_failure(self, sid: str, failure: AlgorithmFailure) -> None:
        """Rebuild the study without the input that raised; a fatal failure is then logged
        as a ``fail_study`` input, so a restart shows the same FAILED state and message."""
        log.error("study %s: %s", sid, failure.message, extra={"study_id": sid})
        if not failure.fatal:
            await asyncio.sleep(1.0)  # a transient failure: give it a moment before retrying
            await self._reload(sid)
            return
        # Pending events are applied only once the study is FAILED: applied before, the one
        # that raised would raise again.
        await self._reload(sid, apply_pending=False)
        live = self.studies.get(sid)
        if live is None or live.stale:
            return
        async with live.lock:
            if self._owns(sid, live) and live.engine.state == ACTIVE:
                await self._mutate(sid, live, {"op": "fail_study", "error": failure.message})
        metrics.STUDIES_FAILED.inc()
        await self._apply_pending([sid])  # refused now (the study is over) and acknowledged

    # ---------------------------------------------------------------- commits

    async def _commit(self, sid: str, live: Live, inputs: list[Mapping[str, Any]],
                      ack_ids: list[str], job_acks: list[tuple[str, str]] | None = None,
                      stop_jobs: list[str] | None = None) -> None:
        eng = live.engine
        effects = eng.take_effects()
        batch = Batch(inputs=list(inputs), ack_ids=ack_ids, job_acks=job_acks or [],
                      stop_jobs=list(stop_jobs or []))
        for eff in effects:
            self._add_effect(eng, batch, eff)
        batch.study_fields = {"state": eng.state, "error": eng.error,
                              "summary": dumps(self.summary(live)),
                              "off_loop": "1" if live.offloaded else "0"}
        if ack_ids:  # who applied worker events last, and when (failover is measured by it)
            batch.study_fields["applied_by"] = f"{self.settings.consumer} {time.time():.3f}"
        if inputs and self._snapshot_due(live):
            try:
                state = eng.state_dict()
                batch.snapshot = await self._off_loop(live, dumps, {"inputs": eng.inputs,
                                                                    "state": state})
                batch.snapshot_inputs = eng.inputs
            except (TypeError, ValueError):
                # An algorithm whose state cannot be saved: the log alone still restores the
                # study (a longer replay), so the commit goes on without a snapshot.
                log.exception("study %s: its state could not be saved; no snapshot", sid,
                              extra={"study_id": sid})
                batch.snapshot = None
        try:
            await self.store.commit(sid, batch, live.fence, live.log_len)
        except LeaseLost:
            # Another replica owns the study now (this one paused past its lease): nothing
            # was written, and this copy is dropped; the owner answers for it from now on.
            log.warning("study %s: commit refused, its lease is held by another replica; "
                        "dropping it here", sid, extra={"study_id": sid})
            self.ownership.forget(sid)
            self._drop(sid)
            raise EngineError("unavailable", f"study {sid} moved to another server replica; "
                              "retry (the call is forwarded to its new owner)") from None
        except Exception:
            # Memory may now be ahead of Redis (or not: EXEC may have run before the connection
            # broke). Redis is the truth: reload the study from it, now or once Redis is back.
            log.exception("commit for study %s failed; reloading it from Redis", sid,
                          extra={"study_id": sid})
            live.stale = True
            self._spawn(self._reload(sid), f"reload {sid}")
            raise
        live.ready.extend(batch.ready)
        live.log_len = 0 if batch.snapshot is not None else live.log_len + len(inputs)
        live.outbox = live.outbox or bool(batch.jobs)
        if batch.snapshot is not None:
            live.snapshot_at, live.cpu_since_snapshot = eng.inputs, 0.0
        if (self.settings.checkpoint_dir and eng.state != ACTIVE
                and any(e.event == "study_ended" for e in effects)):
            self._spawn(self._prune_checkpoints(sid), f"prune {sid}")
        self._publish(live, effects)

    async def _resend_outboxes(self) -> None:
        """Jobs still queued are copied from their study's outbox again: a no-op for those
        already sent, and the repair when the owner died between a commit and its copy or a
        failed-over job stream lost it; jobs no longer queued leave the outbox."""
        sids = [sid for sid, lv in self.studies.items() if lv.outbox and not lv.stale]
        for sid, entries in (await self.store.outbox(sids)).items():
            live = self.studies.get(sid)
            if live is None:
                continue
            async with live.lock:
                if not self._owns(sid, live):
                    continue
                queued = {j for j, rec in live.engine.jobs.items() if rec.state == QUEUED}
                resend = [e for j, e in entries.items() if j in queued]
                try:
                    # A copy that woke from a pause past its lease may think a job still
                    # queued that the new owner saw start (and whose mark it removed): only
                    # the lease holder copies again.
                    if resend and (await self.store.leases.owners([sid])).get(sid) != live.fence:
                        continue
                    await self.store.send_jobs(sid, resend)
                    await self.store.clear_outbox(
                        sid, {j: e for j, e in entries.items() if j not in queued}, live.fence)
                except RedisError:  # LeaseLost too: the next pass, or the next owner
                    log.warning("study %s: copying its outbox failed; retried shortly", sid,
                                exc_info=True, extra={"study_id": sid})
                    continue
                live.outbox = any(j in queued for j in entries)

    async def _prune_checkpoints(self, sid: str) -> None:
        """Delete an ended study's checkpoints but for its best trials' newest ones, and log
        what is left, so the study reports the disk it still uses."""
        from hpod.trainers.checkpoints import prune_study_checkpoints

        live = self.studies.get(sid)
        if live is None:
            return
        eng = live.engine
        sign = -1.0 if eng.config.maximize else 1.0
        ranked = sorted((sign * t.value, t.id) for t in eng.trials.values()
                        if t.value is not None)
        keep = [tid for _, tid in ranked[:self.settings.keep_checkpoints]]
        try:
            res = await asyncio.get_running_loop().run_in_executor(
                self._pool, prune_study_checkpoints, self.settings.checkpoint_dir, sid, keep)
        except OSError:
            log.warning("pruning the checkpoints of study %s failed", sid, exc_info=True,
                        extra={"study_id": sid})
            return
        log.info("study %s ended: %d bytes of checkpoints freed, %d kept (trials %s)", sid,
                 res.freed, res.kept, keep, extra={"study_id": sid})
        async with live.lock:
            if self._owns(sid, live):
                await self._mutate(sid, live, {"op": "checkpoints_pruned", "kept": keep})

    def _snapshot_due(self, live: Live) -> bool:
        """A snapshot when the study ends (a restart then replays nothing for it), when the
        algorithm has spent SNAPSHOT_CPU_S since the last one, or when the inputs since the last
        one reach the inputs before it (at least SNAPSHOT_EVERY): a snapshot costs O(study),
        so doubling the interval keeps the bytes written per input bounded."""
        eng = live.engine
        since = eng.inputs - live.snapshot_at
        return (eng.state != ACTIVE
                or live.cpu_since_snapshot >= SNAPSHOT_CPU_S
                or since >= max(SNAPSHOT_EVERY, live.snapshot_at))

    async def _off_loop(self, live: Live, fn: Callable[..., Any], *args: Any) -> Any:
        if not live.offloaded and len(live.engine.trials) < 2000:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def _reload(self, sid: str, apply_pending: bool = True) -> None:
        if sid not in self.studies:
            return
        try:
            await self._recover(sid, apply_pending)
        except Exception:
            log.warning("study %s could not be reloaded yet; will retry", sid,
                        exc_info=True, extra={"study_id": sid})

    def _add_effect(self, eng: StudyEngine, batch: Batch, eff: Effect) -> None:
        if eff.kind == "trial" and eff.trial_id is not None:
            batch.trials[eff.trial_id] = dumps(vars(eng.trials[eff.trial_id]))
        elif eff.kind == "enqueue" and eff.job is not None:
            batch.jobs.append((eng.config.trainer, self._handoff_to(eng, eff.job),
                               dumps(self.job_payload(eng, eff.job))))
        elif eff.kind == "stop_job" and eff.job is not None:
            batch.stop_jobs.append(eff.job.job_id)
        elif eff.kind == "ready" and eff.job is not None:
            batch.ready.append(eff.job.job_id)

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

    def _active(self) -> list[str]:
        return [sid for sid, lv in self.studies.items()
                if lv.engine.state == ACTIVE and not lv.stale and not lv.catching_up]

    async def _apply_once(self) -> None:
        sids = self._active()
        if not sids:
            await asyncio.sleep(0.1)
            return
        done = asyncio.Event()
        self._reading = (frozenset(sids), done)
        try:
            got = await self._read_events(sids)
        finally:
            self._reading = None
            done.set()
        for sid, entries in got:
            if entries:
                await self._apply_events(sid, entries)

    async def _read_events(self, sids: list[str]) -> list[tuple[str, list[tuple[str, dict]]]]:
        got = []
        now = time.monotonic()
        if now - self._last_reclaim >= RECLAIM_IDLE_MS / 2000:
            # Entries read but never acknowledged (a read reply lost on the way, a commit that
            # failed part-way through a batch) are taken again here, not only at start-up.
            self._last_reclaim = now
            got = await self.store.reclaim_events(
                sids, self.settings.consumer, RECLAIM_IDLE_MS, self.settings.event_batch)
        return got + await self.store.read_events(sids, self.settings.consumer,
                                                  self.settings.event_batch, 100)

    async def _apply_events(self, sid: str, entries: list[tuple[str, dict]]) -> None:
        live = self.studies.get(sid)
        if live is None or live.stale:
            return
        async with live.lock:
            if not self._owns(sid, live):
                return  # reloaded meanwhile: the entries are still pending for the new copy
            inputs = [inp for _eid, ev in entries if (inp := _event_to_input(ev)) is not None]
            try:
                applied, unknown = await self._run(sid, live, _apply_worker_inputs,
                                                   live.engine, inputs)
            except EngineError:
                return  # the algorithm raised: the study is being rebuilt (and failed)
            # Jobs the study does not know (handed out before a Redis rollback lost them) are
            # told to stop, so a worker does not train on for nothing.
            try:
                await self._commit(sid, live, applied, [eid for eid, _ in entries],
                                   stop_jobs=unknown)
            except EngineError:
                return  # the study moved to another replica: its owner applies them

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
            # The idle workers are shared by every replica, each asking its own studies: each
            # asks for its share, rounded up (a few jobs queued in excess only wait).
            free = math.ceil(len(idle.get(trainer, ())) / self.ownership.live_replicas) - queued
            if free <= 0:
                continue
            order = sids[self._rr % len(sids):] + sids[:self._rr % len(sids)]
            for sid in order:
                if free <= 0:
                    break
                live = self.studies.get(sid)
                if live is None or live.lock.locked():
                    continue  # busy (e.g. a model fit off the loop): asked again next pass
                if live.offloaded:
                    # Never wait on a fit here: the study is asked in the background and the
                    # other studies of the trainer are served meanwhile. No job is suggested
                    # ahead for workers: a fit is short next to a training, and a suggestion
                    # made ahead would not see the result that frees the worker.
                    self._spawn(self._ask_quietly(sid, free), f"ask {sid}")
                    continue
                free -= await self._ask_quietly(sid, free)

    async def _ask_quietly(self, sid: str, free: int) -> int:
        """Ask one study for jobs; a failure of one study never stops the pass."""
        try:
            return await self._ask(sid, free)
        except EngineError as e:
            log.info("dispatch to study %s: %s", sid, e.message, extra={"study_id": sid})
        except RedisError:
            log.warning("dispatch to study %s: Redis error", sid, exc_info=True,
                        extra={"study_id": sid})
        return 0

    async def _ask(self, sid: str, free: int) -> int:
        live = self.studies.get(sid)
        if live is None or live.stale:
            return 0
        async with live.lock:
            eng = live.engine
            if (not self._owns(sid, live) or eng.state != ACTIVE
                    or live.idle_ask_at == eng.inputs):
                return 0  # nothing changed since it last had nothing to give
            jobs = await self._mutate(sid, live, {"op": "ask", "free": free})
            live.idle_ask_at = eng.inputs if not jobs else -1
            return len(jobs)

    # ---------------------------------------------------------------- leases

    async def _check_redis_restart(self) -> None:
        """After Redis restarted (its run id changed) it may have lost its last writes: a
        study whose log no longer has the length this server wrote is reloaded from Redis,
        which is the truth, and continues from there (lost segments are trained again)."""
        run_id = await self.store.run_id()
        if run_id == self._redis_run_id:
            return
        first, self._redis_run_id = self._redis_run_id is None, run_id
        if first:
            return
        sids = [sid for sid, lv in self.studies.items()
                if not lv.stale and lv.engine.state != STUDY_QUARANTINED]
        for sid, n in zip(sids, await self.store.log_lengths(sids), strict=True):
            live = self.studies.get(sid)
            if live is not None and n != live.log_len:
                log.warning("study %s: Redis restarted with %d log entries where %d were "
                            "written; reloading the study from Redis", sid, n, live.log_len,
                            extra={"study_id": sid})
                live.stale = True
                await self._reload(sid)

    async def _reap_once(self) -> None:
        await self._check_redis_restart()
        await self._rest_due()
        for sid in [sid for sid, lv in self.studies.items() if lv.stale]:
            await self._reload(sid)
        await self._resend_outboxes()
        lease = self.settings.lease_seconds
        if self.settings.handoff_seconds > 0:
            metrics.HANDOFFS_RETURNED.inc(
                await self.store.return_handoffs(self.settings.handoff_seconds, lease))
        for queue, eid, job in await self.store.expired_jobs(lease):
            sid = job["study_id"] if job else "_"
            live = self.studies.get(sid)
            if live is None or not job:
                # A study being rebuilt here reaps it once ready, another replica's study is
                # that replica's to reap; only a job of no study at all is dropped here.
                if sid not in self.loading and not (job and await self.store.study_exists(sid)):
                    await self.store.commit(sid, Batch(job_acks=[(queue, eid)]))
                continue
            async with live.lock:
                if not self._owns(sid, live):
                    continue
                inp = {"op": "lost", "job_id": job["job_id"]}
                try:
                    await self._run(sid, live, live.engine.apply, inp)
                    inputs = [inp]
                except EngineError:
                    inputs = []  # already ended: only the stale lease entry remains
                metrics.LEASE_EXPIRIES.inc()
                log.warning("job %s lost with its worker", job["job_id"],
                            extra={"study_id": sid, "job_id": job["job_id"],
                                   "trial_id": job.get("trial_id")})
                if self._owns(sid, live):
                    await self._commit(sid, live, inputs, [], [(queue, eid)])
        now = time.time()
        for sid, live in list(self.studies.items()):
            stale = [j for j, seen in live.external_seen.items() if now - seen > lease]
            for job_id in stale:
                live.external_seen.pop(job_id, None)
                if job_id in live.engine.jobs:
                    with contextlib.suppress(EngineError):
                        await self.submit(sid, {"op": "lost", "job_id": job_id})
                        live.external_seen.pop(job_id, None)

    # ---------------------------------------------------------------- residency

    async def wake(self, sid: str) -> None:
        """Load a resting study (server/residency.py) back before a call uses it."""
        if sid not in self.residency.resting:
            if sid in self.studies:
                self.residency.touch(sid)
            return
        async with self.residency.lock(sid):
            rest = self.residency.resting.get(sid)
            if rest is None or not tenancy.visible(rest.tenant):
                return  # loaded meanwhile, or another tenant's: get() says NOT_FOUND
            await self._recover(sid)
            if sid in self.studies:
                # The creation time it was listed with (Redis holds the creator's a moment
                # earlier than the one the creating server kept in memory).
                self.studies[sid].created = rest.created
                self.residency.resting.pop(sid, None)
                self.residency.touch(sid)

    async def _rest_due(self) -> None:
        """Put ended studies unused for a while to rest: their listing written to the study
        hash, their engine dropped."""
        from .service import convert  # the wire types live there; imported on first use

        pruning = {t.get_name() for t in self._background}
        for sid in self.residency.due(self.studies):
            live = self.studies.get(sid)
            if live is None or f"prune {sid}" in pruning:  # its last input is on the way
                continue
            async with live.lock:
                if not (self._owns(sid, live) and restable(live)):
                    continue
                eng = live.engine
                listing = convert.study_to_pb(eng, live.created, fidelity=False)
                rest = Resting(live.created, eng.config.tenant, listing.SerializeToString(),
                               eng.inputs, eng.state, trial_states(eng))
                try:
                    await self.store.execute(sid, [listing_command(sid, rest)], live.fence, 0)
                except Exception:  # still in memory and answering; tried again next pass
                    log.warning("study %s could not be put to rest", sid, exc_info=True,
                                extra={"study_id": sid})
                    continue
                self.studies.pop(sid, None)
                self.residency.resting[sid] = rest
                live.stale = True  # this copy never writes again

    async def _take_resting(self, sid: str) -> bool:
        try:
            rest = await stored_resting(self.store.r, sid)
        except RedisError:
            return False  # rebuilt as any other study
        if rest is None:
            return False
        self.residency.resting[sid] = rest
        return True

    # ---------------------------------------------------------------- watch

    async def watch(self, sid: str) -> AsyncIterator[Effect | None]:
        await self.wake(sid)
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


def _waits_for_client(job: JobRec | None) -> bool:
    """An ask/tell job made ahead (or retried) that no client was handed yet."""
    return job is not None and job.external and job.state == QUEUED


def _model_based(config: StudyConfig) -> bool:
    sampler = config.settings.get("sampler")
    return config.algorithm in MODEL_BASED or (isinstance(sampler, str)
                                               and sampler in MODEL_BASED)


def _new_epoch() -> dict[str, Any]:
    return {"op": "epoch", "tag": secrets.token_hex(3)}


def _timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    start = time.thread_time()
    result = fn(*args)
    return result, time.thread_time() - start


def _rebuild(sid: str, config: StudyConfig, snap: Mapping[str, Any] | None,
             tail: list[dict]) -> tuple[StudyEngine, str]:
    """The study from its snapshot and log tail (on the policy pool: replaying a model-based
    study refits). Returns the engine and "" or, if the stored state does not replay, the
    engine as far as it replayed and why it stopped there."""
    try:
        engine = (StudyEngine.from_state(sid, config, snap["state"]) if snap
                  else StudyEngine(sid, config))
    except (KeyError, TypeError, ValueError) as e:
        # e.g. a snapshot written by an older algorithm version: kept read-only, with why.
        return StudyEngine(sid, config), f"its stored snapshot does not load: {e}"
    for inp in tail:
        try:
            engine.apply(inp)
        except (EngineError, AlgorithmFailure) as e:
            engine.take_effects()
            return engine, (f"its stored log does not replay: input {engine.inputs + 1} "
                            f"({inp.get('op')!r}) was refused: {getattr(e, 'message', e)}")
    engine.take_effects()  # already carried out before the crash
    for trial, took in engine.adopted:
        log.warning("study %s: replaying its log proposed another configuration for trial %d "
                    "than the one handed out (a model fit rounds differently on this machine "
                    "or library release); the trial keeps the one handed out%s", sid, trial,
                    "" if took else ", but its algorithm keeps its own copy",
                    extra={"study_id": sid})
    engine.adopted.clear()
    return engine, ""


def _apply_worker_inputs(engine: StudyEngine, inputs: list[dict]
                         ) -> tuple[list[dict], list[str]]:
    """Apply a batch of worker events; returns those applied and the unknown job ids.
    Late or duplicated reports (a lost job's old worker, a redelivery) are refused by the
    engine and change nothing."""
    applied, unknown = [], []
    for inp in inputs:
        try:
            engine.apply(inp)
        except EngineError as e:
            if e.code == "not_found" and inp.get("job_id"):
                unknown.append(str(inp["job_id"])[:200])
            continue
        applied.append(inp)
    return applied, unknown


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
        if isinstance(ev.get("checkpoint_bytes"), int):
            inp["checkpoint_bytes"] = ev["checkpoint_bytes"]
        return inp
    if op == "fail":
        return {"op": "fail", "job_id": ev["job_id"], "reason": ev.get("reason", "")}
    return None
