"""The server's live Optuna mirror: ``hpod server --optuna-storage URL`` (``HPOD_OPTUNA_STORAGE``).

Every study the server holds is written, as it runs, into one Optuna storage (an RDB URL or a
journal file), so ``optuna-dashboard`` and ``optuna.visualization`` read hpod studies live. How a
trial maps to an Optuna trial is ``hpod.server.optuna_mirror``, shared with the client's
``hpod study export``; this module only decides *when* and *what* to write.

It stays off the hot path:

* It follows the studies as a watcher: a collector in each study's watcher set receives the
  trial events the manager publishes after each commit (a list append, stamped with the time),
  so the mirror knows which trials changed and when their points and job segments happened,
  without reading Redis and without the apply loop ever waiting for it.
* Once a period (``interval``), for each study that changed, it copies those trials under the
  study's lock (so it reads only what is committed; a copy of a few records, no I/O), then
  writes them through the Optuna storage in its own thread. Optuna's storages block; the event
  loop never does.
* A write that fails (the database is down, the disk is full) is logged and retried with a
  growing pause, per study; the trials stay marked until a write succeeds. Nothing in the mirror
  can raise into the server.
* It is idempotent across restarts: a mirror opens each Optuna study by name and finds the
  trials it wrote before (``hpod_trial`` user attribute), and the first pass after a start
  syncs every trial the Optuna study does not yet hold as finished, so nothing is missed and
  nothing is duplicated.

A malformed URL (unknown database, missing driver, a journal that cannot be created) is refused
at startup by :func:`check_storage_url`; a storage that is merely unreachable is retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .engine import Effect, TrialRec
from .optuna_mirror import Note, StudyMirror, check_storage_url, open_storage, shown_url

if TYPE_CHECKING:
    from optuna.storages import BaseStorage

    from .manager import Live, StudyManager

log = logging.getLogger("hpod.server.optuna")

MAX_BACKLOG = 100_000  # events kept per study while its writes fail; beyond: resync, untimed
MAX_PAUSE = 60.0  # seconds between retries of a failing study, at most
MAX_BATCH = 2000  # trials one write hands the writer thread


class _Collector:
    """Sits in a study's watcher set (the manager calls ``put_nowait`` after each commit) and
    keeps the events with the time they were published."""

    def __init__(self) -> None:
        self.items: list[tuple[float, Effect | None]] = []

    def put_nowait(self, item: Effect | None) -> None:
        self.items.append((time.time(), item))

    def take(self) -> list[tuple[float, Effect | None]]:
        out, self.items = self.items, []
        return out


@dataclass
class _Followed:
    """The mirror's view of one study."""

    live: Live
    collector: _Collector = field(default_factory=_Collector)
    mirror: StudyMirror | None = None
    full: bool = True  # sync every trial the Optuna study does not hold as finished
    dirty: set[int] = field(default_factory=set)
    notes: dict[int, list[Note]] = field(default_factory=dict)
    backlog: int = 0  # notes kept
    failures: int = 0
    retry_at: float = 0.0


class _Stopped(Exception):
    """The server is stopping: the writer leaves a batch between two trials."""


class _Writer:
    """One daemon thread that runs the blocking Optuna calls in order. A daemon, so a storage
    that hangs cannot hold up the server's exit."""

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="optuna-mirror", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            loop, fut, fn, args = item
            try:
                result, error = fn(*args), None
            except BaseException as e:  # handed to the awaiting task
                result, error = None, e
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is waiting
                loop.call_soon_threadsafe(_settle, fut, result, error)

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._q.put((loop, fut, fn, args))
        return await fut

    def close(self, wait: float) -> None:
        """Stop after the Optuna call under way (waiting at most ``wait`` seconds for it), so
        the process does not exit in the middle of a write: a journal file's lock would be
        left behind for the next server to wait out."""
        self.stopping.set()
        self._q.put(None)
        self._thread.join(wait)


def _settle(fut: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if fut.cancelled():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)


def _copy(t: TrialRec) -> TrialRec:
    # Curve points are lists the engine never changes once appended: a shallow copy is a
    # consistent view. The copy is what the writer thread reads, never the live record.
    return TrialRec(**{**vars(t), "config": dict(t.config), "curve": list(t.curve)})


class LiveMirror:
    """Mirrors every study of ``manager`` into the Optuna storage at ``url``."""

    def __init__(self, manager: StudyManager, url: str, interval: float = 1.0) -> None:
        problem = check_storage_url(url)
        if problem is not None:
            raise ValueError(f"--optuna-storage {url!r}: {problem}")
        self.manager = manager
        self.url = url
        self.interval = interval
        self.storage: BaseStorage | None = None
        self.followed: dict[str, _Followed] = {}
        self._writer = _Writer()
        self._task: asyncio.Task | None = None
        self._storage_failures = 0
        self._storage_retry_at = 0.0

    # ---------------------------------------------------------------- life cycle

    def start(self) -> LiveMirror:
        self._task = asyncio.create_task(self._loop(), name="optuna-mirror")
        log.info("mirroring studies live into Optuna storage %s", shown_url(self.url))
        return self

    async def stop(self, flush_seconds: float = 3.0) -> None:
        """Stop following; first write what changed since the last pass (at most
        ``flush_seconds``: a restart catches up anyway)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if flush_seconds > 0:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.flush(), flush_seconds)
        for f in self.followed.values():
            f.live.watchers.discard(f.collector)
        await asyncio.to_thread(self._writer.close, 2.0)

    async def _loop(self) -> None:
        while True:
            try:
                await self.sync_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # never into the server; the next pass tries again
                log.exception("optuna mirror pass failed; retrying")
            await asyncio.sleep(self.interval)

    # ---------------------------------------------------------------- passes

    async def flush(self) -> None:
        """Passes until every change is written, or waits on a failing storage's pause."""
        while True:
            await self.sync_once()
            now = time.time()
            if self.storage is None or not any(
                    (f.collector.items or f.dirty or f.full) and now >= f.retry_at
                    for f in self.followed.values()):
                return

    async def sync_once(self) -> None:
        """One pass: follow new studies, drop deleted ones, write what changed."""
        studies = self.manager.studies
        for sid in [s for s in self.followed if s not in studies]:
            f = self.followed.pop(sid)
            f.live.watchers.discard(f.collector)
        for sid, live in list(studies.items()):
            f = self.followed.get(sid)
            if f is None:
                f = self.followed[sid] = _Followed(live)
            if f.live is not live or f.collector not in live.watchers:
                # Reloaded after a storage error (the manager hands the watchers on, but the
                # mirror may have looked in between): events may be missed, so read it all.
                f.live.watchers.discard(f.collector)
                f.live, f.full = live, True
                live.watchers.add(f.collector)
            if not (f.collector.items or f.dirty or f.full):
                continue
            if time.time() < f.retry_at:
                self._fold(f, f.collector.take())  # keep memory bounded while failing
                continue
            if not await self._ensure_storage():
                self._fold(f, f.collector.take())
                continue
            try:
                await self._sync_study(sid, f)
            except Exception as e:
                f.failures += 1
                pause = min(MAX_PAUSE, self.interval * 2 ** f.failures)
                f.retry_at = time.time() + pause
                if f.failures == 1:
                    log.warning("optuna mirror of study %s failed; retrying in %.0f s",
                                sid, pause, exc_info=True, extra={"study_id": sid})
                else:
                    log.warning("optuna mirror of study %s failed again (%s: %s); retrying "
                                "in %.0f s", sid, type(e).__name__, e, pause,
                                extra={"study_id": sid})
            else:
                if f.failures:
                    log.info("optuna mirror of study %s is writing again", sid,
                             extra={"study_id": sid})
                f.failures, f.retry_at = 0, 0.0

    async def _ensure_storage(self) -> bool:
        if self.storage is not None:
            return True
        if time.time() < self._storage_retry_at:
            return False
        try:
            self.storage = await self._writer.call(open_storage, self.url)
        except Exception as e:
            self._storage_failures += 1
            pause = min(MAX_PAUSE, self.interval * 2 ** self._storage_failures)
            self._storage_retry_at = time.time() + pause
            log.warning("optuna storage %s cannot be opened (%s: %s); retrying in %.0f s",
                        shown_url(self.url), type(e).__name__, e, pause)
            return False
        if self._storage_failures:
            log.info("optuna storage %s is open", shown_url(self.url))
        self._storage_failures = 0
        return True

    def _fold(self, f: _Followed, items: list[tuple[float, Effect | None]]) -> None:
        """Published events -> trials to sync and the times of their points and segments."""
        for t, eff in items:
            if eff is None or eff.trial_id is None:
                continue
            f.dirty.add(eff.trial_id)
            rung = f.live.engine.trials[eff.trial_id].rung \
                if eff.trial_id in f.live.engine.trials else 0
            f.notes.setdefault(eff.trial_id, []).append(Note(eff.event, t, eff.resource, rung))
            f.backlog += 1
        if f.backlog > MAX_BACKLOG:  # failing for long: keep which trials, not when
            f.notes, f.backlog, f.full = {}, 0, True

    async def _sync_study(self, sid: str, f: _Followed) -> None:
        live = f.live
        if f.mirror is None:
            from .service.convert import study_to_pb

            async with live.lock:
                info = study_to_pb(live.engine, live.created)
            f.mirror = await self._writer.call(StudyMirror, self.storage, info)
        async with live.lock:  # a consistent, committed view; no awaits inside
            if live.stale or self.manager.studies.get(sid) is not live:
                return
            eng = live.engine
            self._fold(f, f.collector.take())
            if f.full:
                done = f.mirror.trials
                ids = sorted(tid for tid in eng.trials
                             if tid not in done or not done[tid].finished)
            else:
                ids = sorted(tid for tid in f.dirty if tid in eng.trials)
            # A bounded batch (a first pass over a large study), so the other studies and a
            # shutdown flush wait for one batch at most; the rest is the next pass's.
            ids, rest = ids[:MAX_BATCH], ids[MAX_BATCH:]
            trials = [_copy(eng.trials[tid]) for tid in ids]
            max_resource = eng.max_resource()
            notes = {tid: f.notes.pop(tid) for tid in ids if tid in f.notes}
            if not rest:
                f.notes = {}
            f.backlog = sum(len(ns) for ns in f.notes.values())
            was_full, f.full, f.dirty = f.full, False, set(rest)
        if not trials:
            return
        try:
            await self._writer.call(_write, f.mirror, trials, notes, max_resource, time.time(),
                                    self._writer.stopping)
        except BaseException:  # failed, or cancelled at shutdown
            # Everything in this batch is synced again next time (syncing is idempotent);
            # the notes of trials not yet written are kept.
            f.dirty.update(t.id for t in trials)
            f.full = f.full or was_full
            for tid, ns in notes.items():
                f.notes.setdefault(tid, [])[:0] = ns
            raise


def _write(mirror: StudyMirror, trials: list[TrialRec], notes: dict[int, list[Note]],
           max_resource: float, now: float, stopping: threading.Event) -> None:
    """In the writer thread: the trials, in id order, with the notes that time them."""
    mirror.info.spec.resource.max_resource = max_resource  # ID-HB may have raised it
    for t in trials:
        if stopping.is_set():
            raise _Stopped
        mirror.sync_trial(t, now, notes.pop(t.id, ()))
