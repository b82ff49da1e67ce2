"""The trainer worker process (``hpod worker``): take a job, train its segment, report.

A worker never decides what to train next. For each job it builds the trainer from the
configuration, loads the trial's checkpoint at ``from_resource`` (a promotion or a retried job
resumes, it does not retrain), trains to ``to_resource`` reporting every resource step (each
report also tells it whether to stop), saves a checkpoint where it stopped, and reports the
device seconds it spent and the samples per second it trained at. A heartbeat thread keeps its
lease while it trains.

Memory (``--keep-models N``, default 1): after a segment the worker keeps the trained model in
memory, up to the N most recent (on a GPU they hold device memory: raise N for small models).
When the server hands it the same trial's next segment (it routes a continuation to the idle
worker that trained the trial last), the worker continues from that model instead of building
a new one and reading the checkpoint. The result is the same either way (the resume tests
check that a checkpoint restores everything a trainer holds), only faster. The completion says
``warm``, and the trial counts its warm resumes.

Slots (``--slots N``): one process may run up to N jobs at once, one per thread, for models far
too small to fill a device (the grokking transformer, the MLP), where a single job leaves a GPU
mostly idle waiting on Python and kernel launches. Each slot is a full worker as the server sees
it (its own worker id, consumer, lease and heartbeat), so the server needs no notion of slots:
it counts N idle workers and hands out N jobs. The trade-off: slots share the device and the
process, so each job runs slower than it would alone and its reported device seconds are the
wall time of a shared device (a cost-aware search sees every trial slowed alike, which keeps
comparisons fair but inflates absolute cost); all slots share one CUDA context and host memory,
and one process crashing loses all N jobs (each is then retried after its lease expires). On a
CPU, give each slot its share of the cores (``--threads``), or the slots fight over them.

Trainers (``trainers/base.py``): a built-in name, an installed ``hpod.trainers`` entry point, or
``module:attribute`` naming a Trainer class or a plain function ``fn(config, ctx)``
(``trainers/function.py``). Only the trainers asked for are imported, and torch only when one
of them needs it: a worker of the analytic trainer or of a numpy function never loads it.

Checkpoints (``trainers/checkpoints.py``): a trial keeps only its newest one. Once a segment's
completion is recorded, the checkpoint it resumed from is deleted; a job stopped for good (a
STOP decision, a stopped study) or failed writes none and deletes the one it resumed from.
Deletions wait ``DELETE_AFTER_SECONDS`` (10 s): a Redis that loses its last second of writes
may hand the segment out again, and it must still find its start.
A job that may be retried elsewhere (its lease lapsed: the server may have handed it on) keeps
every file, since the retry resumes from the segment's start. Whether the lease lapsed is known
from the renewals themselves: each returns whether the entry was still ours, and a gap between
renewals longer than half the lease counts as a lapse. The completion reports the trial's
checkpoint bytes (``checkpoint_bytes``).

Redis hiccups (``server/store/worker_queue.py``) are retried inside a bound
(``HPOD_REDIS_RETRY_SECONDS``, default 60); a job whose reports cannot get through is
abandoned, not failed (the server hands it on once the lease
expires), and the worker goes back to waiting for work. Only the trainer's own exceptions
fail a trial.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpod.server.store.worker_queue import Lease, QueueError, WorkerQueue

from . import checkpoints
from .base import TrainerContext, UnknownTrainer, get_trainer
from .function import FunctionTrainer, JobContext

log = logging.getLogger("hpod.worker")


# Trainers seed their model's initialisation through torch's process-wide CPU generator
# (``_common.seeded`` forks and re-seeds it); two slots constructing at once would interleave
# their draws and build different models than the seed says. Construction is short, training
# (which draws only from generators each trainer owns) runs concurrently.
_BUILD_LOCK = threading.Lock()


# How long a checkpoint nothing needs any more is kept (``HPOD_CHECKPOINT_GRACE_SECONDS``):
# longer than the writes a Redis with `appendfsync everysec` can lose (its last second), so a
# segment run again after such a loss still finds the checkpoint it starts from.
DELETE_AFTER_SECONDS = 10.0

class Released(Exception):
    """SIGTERM arrived mid-segment: stop at this step and hand the job back."""


def _torch() -> Any:
    """torch if some trainer imported it, else None: the worker never imports it itself."""
    return sys.modules.get("torch")


class LeaseWatch:
    """Whether this worker held a job's lease all along, as far as the server could tell.

    The server takes a job back when its entry sits idle longer than the lease; every renewal
    (report, heartbeat, the final acknowledgement) resets the idle time and answers whether the
    entry was still ours. Held throughout, with no gap between renewals longer than ``limit``
    (half the lease), means no retry of this segment can exist, so its start checkpoint is
    free to go."""

    def __init__(self, limit: float, since: float) -> None:
        self.limit = limit
        self.last_sent = since  # send time of the latest successful renewal (monotonic)
        self.max_gap = 0.0
        self.lost = False
        self.ending = False  # the job's end is being recorded: its XACK has the last word
        self._lock = threading.Lock()

    def end(self) -> None:
        """From here on a heartbeat that finds the entry gone has only met our own XACK."""
        with self._lock:
            self.ending = True

    def renewed(self, sent: float, held: bool, final: bool = False) -> None:
        with self._lock:
            if not held and (final or not self.ending):
                self.lost = True
            if not held:
                return
            self.max_gap = max(self.max_gap, time.monotonic() - self.last_sent)
            self.last_sent = max(self.last_sent, sent)

    def kept(self) -> bool:
        with self._lock:
            gap = max(self.max_gap, time.monotonic() - self.last_sent)
            return not self.lost and gap < self.limit


@dataclass
class JobRun:
    """One job on this worker: its lease and what happened to it."""

    lease: Lease
    watch: LeaseWatch
    stopped: bool = False  # told to stop (a STOP decision, a stopped study, a lost lease)
    released: bool = False  # SIGTERM: hand the job back
    queue_error: QueueError | None = None  # Redis unreachable past the retry bound
    saved: Path | None = None  # the checkpoint this segment wrote

    @property
    def job(self) -> dict[str, Any]:
        return self.lease.job

    def start_checkpoint(self, root: str) -> Path | None:
        r0 = float(self.job["from_resource"])
        if r0 <= 0:
            return None
        return checkpoints.checkpoint_path(root, self.job["study_id"], self.job["trial_id"], r0)


class Worker:
    def __init__(self, redis_url: str, trainers: list[str], checkpoint_dir: str,
                 data_dir: str | None = None, worker_id: str | None = None,
                 lease_seconds: float = 10.0, keep_models: int = 1,
                 retry_seconds: float | None = None, socket_timeout: float = 5.0,
                 delete_after: float | None = None) -> None:
        self.classes = resolve(trainers)
        if delete_after is None:
            delete_after = float(os.environ.get("HPOD_CHECKPOINT_GRACE_SECONDS",
                                                DELETE_AFTER_SECONDS))
        self.delete_after = delete_after
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        if retry_seconds is None:
            retry_seconds = float(os.environ.get("HPOD_REDIS_RETRY_SECONDS", "60"))
        self.q = WorkerQueue(redis_url, self.worker_id, trainers, retry_seconds=retry_seconds,
                             socket_timeout=socket_timeout)
        self.checkpoint_dir = checkpoint_dir
        self.data_dir = data_dir
        self.lease_seconds = lease_seconds
        self.run_: JobRun | None = None  # the job in hand, for the heartbeat thread
        self.draining = threading.Event()
        self.beats_done = threading.Event()
        self.needs_idle = False  # a job was abandoned: say idle again once Redis answers
        self.jobs_done = 0
        # Its own CUDA stream per slot (``--slots``), so that the kernels of concurrent slots
        # may overlap instead of queueing on the device's one default stream.
        self.use_stream = False
        self.stream: Any = None
        self._device: Any = None
        self.keep_models = keep_models
        # The last trained models, oldest first: identity -> (resource reached, trainer).
        self.kept: OrderedDict[tuple, tuple[float, Any]] = OrderedDict()
        # Checkpoints no job needs any more, deleted once their time comes: (when, path).
        self.doomed: list[tuple[float, Path]] = []

    @property
    def lease(self) -> Lease | None:
        run = self.run_
        return run.lease if run is not None else None

    @property
    def device(self) -> Any:
        """The torch device once a trainer has loaded torch (``device.pick_device``), else
        None: a trainer without torch needs none."""
        if self._device is None and _torch() is not None:
            from .device import pick_device

            self._device = pick_device()
        return self._device

    # ---------------------------------------------------------------- main loop

    def run(self, max_jobs: int | None = None) -> None:
        try:
            self.q.ensure_streams()
            self.q.register()
        except QueueError as e:
            raise SystemExit(f"hpod worker: cannot reach Redis: {e}") from None
        beat = threading.Thread(target=self._heartbeats, daemon=True, name="heartbeat")
        beat.start()
        log.info("worker %s ready (trainers %s, device %s)", self.worker_id,
                 ",".join(self.q.trainers), self.device or "not needed")
        try:
            while not self.draining.is_set():
                if max_jobs is not None and self.jobs_done >= max_jobs:
                    break
                self._delete_due()
                try:
                    if self.needs_idle:
                        self.q.set_idle()
                        self.needs_idle = False
                    taken_at = time.monotonic()
                    lease = self.q.take(block_ms=500)
                except QueueError as e:
                    if not self.draining.is_set():
                        log.error("%s; still trying", e)
                    self.draining.wait(1.0)  # a lasting error (ACL, config) must not spin
                    continue
                if lease is not None:
                    self.run_job(lease, taken_at)
        finally:
            self._delete_due(every=True)
            self.draining.set()
            self.beats_done.set()
            self.q.close()  # from here on, one attempt per call: shutdown never waits
            try:
                self.q.unregister()
            except QueueError as e:
                log.warning("could not unregister: %s", e)

    def _heartbeats(self) -> None:
        while not self.beats_done.wait(self.lease_seconds / 4):
            run = self.run_
            sent = time.monotonic()
            try:
                held = self.q.heartbeat(run.lease if run is not None else None)
            except Exception as e:  # Redis blips are survived; the next beat tries again
                log.warning("heartbeat failed: %s: %s", type(e).__name__, e)
                continue
            if run is not None and held is not None:
                run.watch.renewed(sent, held)

    def drain(self, *_: Any) -> None:
        """SIGTERM: stop at the next resource step, give the job back (the server hands it on
        at once, from the segment's start checkpoint), then exit. Waiting for the segment to
        end could outlast the container's grace period and leave the job to the lease
        timeout. Nothing waits on Redis any more: a call in trouble gives up at once."""
        self.draining.set()
        self.q.close()

    # ---------------------------------------------------------------- one job

    def run_job(self, lease: Lease, taken_at: float | None = None) -> None:
        job = lease.job
        run = JobRun(lease, LeaseWatch(self.lease_seconds / 2, taken_at or time.monotonic()))
        self.run_ = run
        try:
            self.q.start(lease)
            log.info("job %s: trial %s %s -> %s", lease.job_id, job["trial_id"],
                     job["from_resource"], job["to_resource"], extra=_ids(lease))
            outcome = self._train(run)
        except Released:
            log.info("job %s released on SIGTERM", lease.job_id, extra=_ids(lease))
            self.run_ = None  # the heartbeat thread must not renew a released lease
            self._release(lease)
        except QueueError as e:
            self._abandon(run, e)
        except Exception as e:
            if run.queue_error is not None:  # raised through a function trainer's own code
                self._abandon(run, run.queue_error)
            else:
                log.exception("job %s failed", lease.job_id)
                reason = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=5)}"
                self._end(run, "fail", reason=reason)
        else:
            self._end(run, "complete", **outcome)
        finally:
            self.run_ = None
            self.jobs_done += 1

    def _release(self, lease: Lease) -> None:
        try:
            self.q.release(lease)
        except QueueError as e:  # the lease expires on its own; the server hands it on then
            log.warning("job %s: could not release: %s", lease.job_id, e)

    def _abandon(self, run: JobRun, e: QueueError) -> None:
        """Redis did not take this job's reports within the retry bound: not the trial's
        fault. Stop renewing its lease, so the server hands it on from the segment's start
        checkpoint, which therefore stays."""
        log.error("job %s abandoned, Redis unreachable: %s", run.lease.job_id, e,
                  extra=_ids(run.lease))
        self.run_ = None
        self.kept.pop(_identity(run.job), None)
        self.needs_idle = True

    def _end(self, run: JobRun, op: str, **fields: Any) -> None:
        """Record the job's end, then delete the checkpoints nothing can resume from."""
        final = op == "fail" or run.stopped  # the trial will never continue from here
        doomed = self._doomed(run, final) if run.watch.kept() else []
        if op == "complete":
            folder = checkpoints.trial_dir(self.checkpoint_dir, run.job["study_id"],
                                           run.job["trial_id"])
            # Files already doomed but still in their grace period are not the trial's.
            going = {*doomed, *(p for _, p in self.doomed if p.parent == folder)}
            fields["checkpoint_bytes"] = max(0, checkpoints.folder_bytes(folder) - sum(
                p.stat().st_size for p in going if p.exists()))
        sent = time.monotonic()
        run.watch.end()
        try:
            held = self.q.finish(run.lease, op, **fields)
        except QueueError as e:
            self._abandon(run, e)
            return
        run.watch.renewed(sent, held, final=True)
        if final:
            self.kept.pop(_identity(run.job), None)
        if doomed and run.watch.kept():
            # Not at once: Redis may still lose the write that recorded this end (with
            # `appendfsync everysec`, about its last second), and then the segment runs again
            # from the checkpoint it resumed from.
            when = time.monotonic() + self.delete_after
            self.doomed += [(when, path) for path in doomed]
            if self.delete_after <= 0:
                self._delete_due()

    def _delete_due(self, every: bool = False) -> None:
        """Delete the doomed checkpoints whose time has come (all of them with ``every``)."""
        now = time.monotonic()
        due = [p for when, p in self.doomed if every or when <= now]
        self.doomed = [(when, p) for when, p in self.doomed if not (every or when <= now)]
        for path in due:
            checkpoints.delete(path)

    def _doomed(self, run: JobRun, final: bool) -> list[Path]:
        """Checkpoints of this trial that no job can need once this one's end is recorded:
        the one it resumed from, and, when the trial ends here, the one it wrote."""
        start = run.start_checkpoint(self.checkpoint_dir)
        doomed = [start] if start is not None and start != run.saved else []
        if final and run.saved is not None:
            doomed.append(run.saved)
        return doomed

    def _report(self, run: JobRun, resource: float, value: float) -> bool:
        """One learning-curve point to the server; True when the job must stop."""
        if run.queue_error is not None:
            raise run.queue_error
        if run.released:
            raise Released
        sent = time.monotonic()
        try:
            stop, held = self.q.progress(run.lease, resource, value)
        except QueueError as e:
            run.queue_error = e
            raise
        run.watch.renewed(sent, held)
        if stop or not held:  # a STOP decision, a stopped study, or the job went elsewhere
            run.stopped = True
            return True
        if self.draining.is_set() and resource < float(run.job["to_resource"]) - 1e-9:
            run.released = True
            raise Released
        return False

    def _train(self, run: JobRun) -> dict[str, Any]:
        job = run.job
        cls = self.classes.get(job["trainer"]) or get_trainer(job["trainer"])
        if issubclass(cls, FunctionTrainer):
            return self._train_function(cls, run)
        return self._train_class(cls, run)

    def _train_function(self, cls: type[FunctionTrainer], run: JobRun) -> dict[str, Any]:
        job = run.job
        ctx = JobContext(job, self.checkpoint_dir, lambda r, v: self._report(run, r, v),
                         data_dir=self.data_dir, device=self._device_name)
        start = time.perf_counter()
        try:
            cls.fn(dict(job["config"]), ctx)
        finally:
            run.saved = ctx.saved
        # The function may have caught what a report raised: the job's fate is the worker's.
        if run.queue_error is not None:
            raise run.queue_error
        if run.released:
            raise Released
        cost = time.perf_counter() - start
        if ctx.last is None:
            raise RuntimeError(f"trainer {job['trainer']} reported no step between "
                               f"{job['from_resource']} and {job['to_resource']}: call "
                               "ctx.report(resource, value) after each step")
        if ctx.saved is None and not run.stopped \
                and ctx.last[0] < float(job["max_resource"]) - 1e-9:
            log.warning("job %s: trial %s stopped at %g without ctx.save(): a later "
                        "segment of it will find no checkpoint", run.lease.job_id,
                        job["trial_id"], ctx.last[0], extra=_ids(run.lease))
        return {"value": ctx.last[1], "resource": ctx.last[0], "cost": cost}

    def _device_name(self) -> str:
        from .device import pick_device

        self._device = self._device or pick_device()
        return str(self._device)

    def _trainer(self, cls: type, job: dict[str, Any]) -> tuple[Any, bool]:
        """The trainer for this job, and whether it is a model kept in memory (warm) rather
        than one built and loaded from the checkpoint."""
        identity = _identity(job)
        r0 = float(job["from_resource"])
        kept = self.kept.pop(identity, None)
        if kept is not None and r0 > 0 and kept[0] == r0:
            return kept[1], True
        # Make room before building: on a GPU the kept models hold device memory.
        while self.kept and len(self.kept) >= self.keep_models:
            self.kept.popitem(last=False)
        settings = job.get("trainer_settings") or {}
        device = self.device
        ctx = TrainerContext(seed=int(job["seed"]), max_resource=float(job["max_resource"]),
                             data_dir=self.data_dir or settings.get("data_dir"),
                             device=str(device) if device is not None else None,
                             settings=settings)
        with _BUILD_LOCK:
            trainer = cls(job["config"], ctx)
        if r0 > 0:
            trainer.load_state_dict(self._load(job, r0))
        return trainer, False

    def _train_class(self, cls: type, run: JobRun) -> dict[str, Any]:
        torch = _torch()
        device = self.device
        if self.use_stream and self.stream is None and device is not None \
                and device.type == "cuda":
            self.stream = torch.cuda.Stream(device)
        if self.stream is not None:
            with torch.cuda.stream(self.stream):
                return self._train_segment(cls, run)
        return self._train_segment(cls, run)

    def _train_segment(self, cls: type, run: JobRun) -> dict[str, Any]:
        job = run.job
        trainer, warm = self._trainer(cls, job)
        r0, r1 = float(job["from_resource"]), float(job["to_resource"])
        # Trainers that count their samples (every torch one) get a samples/s report; the
        # count comes from the checkpoint, so subtract where this segment started.
        seen0 = getattr(trainer, "samples_seen", None)
        self._sync()
        start = time.perf_counter()
        last: tuple[float, float] | None = None
        for resource, value in trainer.train(r0, r1):
            last = (float(resource), float(value))
            if self._report(run, *last):
                break  # STOP decision, lost lease or stopped study
        self._sync()
        cost = time.perf_counter() - start
        if last is None:
            raise RuntimeError(f"trainer {job['trainer']} reported no step between {r0} and {r1}")
        outcome: dict[str, Any] = {"value": last[1], "resource": last[0], "cost": cost}
        if warm:
            outcome["warm"] = True
        if seen0 is not None and cost > 0:
            # Over the whole segment (evaluation and reports included): what a job achieves,
            # not the peak of the training loop alone (bench/trainers.py measures that).
            outcome["samples_per_second"] = (trainer.samples_seen - seen0) / cost
        if run.stopped:
            return outcome  # nothing resumes from here: no checkpoint, no kept model
        run.saved = checkpoints.checkpoint_path(self.checkpoint_dir, job["study_id"],
                                                job["trial_id"], last[0])
        checkpoints.write(run.saved, trainer.state_dict())
        if self.keep_models > 0:
            self.kept[_identity(job)] = (last[0], trainer)
            while len(self.kept) > self.keep_models:
                self.kept.popitem(last=False)  # least recently trained first
        return outcome

    def _sync(self) -> None:
        """Wait for this slot's kernels only: other slots' work is not this job's time."""
        if self.stream is not None:
            self.stream.synchronize()
        elif self.device is not None:
            from .device import synchronize

            synchronize(self.device)

    def _load(self, job: dict[str, Any], resource: float) -> Any:
        path = checkpoints.checkpoint_path(self.checkpoint_dir, job["study_id"],
                                           job["trial_id"], resource)
        if not path.exists():
            raise FileNotFoundError(
                f"checkpoint {path} is missing: workers must share one checkpoint directory "
                "(--checkpoint-dir on a shared volume) to resume promoted trials")
        return checkpoints.read(path, map_location=self.device)


def resolve(trainers: list[str]) -> dict[str, type]:
    """Each trainer name's class (or function wrapper); a clear exit for a name that
    resolves to nothing."""
    if not trainers:
        raise SystemExit("hpod worker: name at least one trainer (--trainer NAME)")
    out = {}
    for name in trainers:
        if "," in name or "|" in name:
            raise SystemExit(f"hpod worker: trainer name {name!r} may not contain ',' or '|'")
        try:
            out[name] = get_trainer(name)
        except (UnknownTrainer, TypeError) as e:
            raise SystemExit(f"hpod worker: {e}") from None
    return out


def _identity(job: dict[str, Any]) -> tuple:
    """What makes a kept model the one a job continues: same study, trial and seed, and the
    same schedule (a raise of R changes the maximum resource its schedule is defined on)."""
    return (job["study_id"], job["trial_id"], job["trainer"], job["seed"],
            float(job["max_resource"]), repr(sorted(job["config"].items())),
            repr(sorted((job.get("trainer_settings") or {}).items())))


def _ids(lease: Lease) -> dict[str, Any]:
    return {"study_id": lease.study_id, "job_id": lease.job_id,
            "trial_id": lease.job.get("trial_id")}


def run_slots(workers: list[Worker], max_jobs: int | None = None) -> None:
    """Run each worker (slot) in its own thread until all have drained. The main thread only
    waits, so that it stays free to run the SIGTERM handler, which drains every slot."""
    for w in workers:
        w.use_stream = True
    threads = [threading.Thread(target=w.run, args=(max_jobs,), name=f"slot{i}", daemon=True)
               for i, w in enumerate(workers)]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.5)


def main(redis_url: str, trainers: list[str], checkpoint_dir: str, data_dir: str | None,
         lease_seconds: float, max_jobs: int | None = None, threads: int | None = None,
         log_format: str = "text", slots: int = 1, keep_models: int = 1) -> None:
    from hpod.server import logs

    logs.setup(log_format)
    if threads:
        # Several CPU workers on one machine: give each its share of the cores instead of
        # letting every process spin a full-size thread pool against the others. The variable
        # covers a torch imported later (by a function trainer's own code).
        os.environ["OMP_NUM_THREADS"] = str(threads)
    if slots < 1:
        raise SystemExit(f"--slots must be at least 1, got {slots}")
    if slots == 1:
        worker = Worker(redis_url, trainers, checkpoint_dir, data_dir,
                        lease_seconds=lease_seconds, keep_models=keep_models)
        _set_threads(threads)
        signal.signal(signal.SIGTERM, worker.drain)
        signal.signal(signal.SIGINT, worker.drain)
        worker.run(max_jobs)
        return
    base = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    workers = [Worker(redis_url, trainers, checkpoint_dir, data_dir, worker_id=f"{base}-s{i}",
                      lease_seconds=lease_seconds, keep_models=keep_models)
               for i in range(slots)]
    _set_threads(threads)

    def drain_all(*_: Any) -> None:
        for w in workers:
            w.drain()

    signal.signal(signal.SIGTERM, drain_all)
    signal.signal(signal.SIGINT, drain_all)
    run_slots(workers, max_jobs)


def _set_threads(threads: int | None) -> None:
    torch = _torch()
    if threads and torch is not None:  # the trainers imported it
        torch.set_num_threads(threads)
