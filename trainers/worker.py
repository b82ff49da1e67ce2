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
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import traceback
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from hpod.server.store.worker_queue import Lease, WorkerQueue

from .base import TrainerContext, get_trainer, load_all
from .device import pick_device, synchronize

log = logging.getLogger("hpod.worker")


# Trainers seed their model's initialisation through torch's process-wide CPU generator
# (``_common.seeded`` forks and re-seeds it); two slots constructing at once would interleave
# their draws and build different models than the seed says. Construction is short, training
# (which draws only from generators each trainer owns) runs concurrently.
_BUILD_LOCK = threading.Lock()


class Released(Exception):
    """SIGTERM arrived mid-segment: stop at this step and hand the job back."""


def checkpoint_path(root: str | os.PathLike, study: str, trial: int, resource: float) -> Path:
    return Path(root) / study / str(trial) / f"r{float(resource):.6g}.pt"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write then rename, so a crash never leaves a half-written checkpoint behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


class Worker:
    def __init__(self, redis_url: str, trainers: list[str], checkpoint_dir: str,
                 data_dir: str | None = None, worker_id: str | None = None,
                 lease_seconds: float = 10.0, keep_models: int = 1) -> None:
        known = load_all()
        unknown = [t for t in trainers if t not in known]
        if unknown:
            raise SystemExit(f"unknown trainer(s) {unknown}; known: {sorted(known)}")
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.q = WorkerQueue(redis_url, self.worker_id, trainers)
        self.checkpoint_dir = checkpoint_dir
        self.data_dir = data_dir
        self.lease_seconds = lease_seconds
        self.device = pick_device()
        self.lease: Lease | None = None
        self.draining = threading.Event()
        self.jobs_done = 0
        # Its own CUDA stream per slot, so that the kernels of concurrent slots may overlap
        # instead of queueing on the device's one default stream (None on the CPU).
        self.stream: torch.cuda.Stream | None = None
        self.keep_models = keep_models
        # The last trained models, oldest first: identity -> (resource reached, trainer).
        self.kept: OrderedDict[tuple, tuple[float, Any]] = OrderedDict()

    # ---------------------------------------------------------------- main loop

    def run(self, max_jobs: int | None = None) -> None:
        self.q.ensure_streams()
        self.q.register()
        beat = threading.Thread(target=self._heartbeats, daemon=True, name="heartbeat")
        beat.start()
        log.info("worker %s ready (trainers %s, device %s)", self.worker_id,
                 ",".join(self.q.trainers), self.device)
        try:
            while not self.draining.is_set():
                if max_jobs is not None and self.jobs_done >= max_jobs:
                    break
                lease = self.q.take(block_ms=500)
                if lease is not None:
                    self.run_job(lease)
        finally:
            self.draining.set()
            self.q.unregister()

    def _heartbeats(self) -> None:
        while not self.draining.wait(self.lease_seconds / 4):
            try:
                self.q.heartbeat(self.lease)
            except Exception:  # Redis blips are survived; the lease is generous
                log.warning("heartbeat failed", exc_info=True)

    def drain(self, *_: Any) -> None:
        """SIGTERM: stop at the next resource step, give the job back (the server hands it on
        at once, from the segment's start checkpoint), then exit. Waiting for the segment to
        end could outlast the container's grace period and leave the job to the lease
        timeout."""
        self.draining.set()

    # ---------------------------------------------------------------- one job

    def run_job(self, lease: Lease) -> None:
        job = lease.job
        self.lease = lease
        self.q.start(lease)
        log.info("job %s: trial %s %s -> %s", lease.job_id, job["trial_id"],
                 job["from_resource"], job["to_resource"], extra=_ids(lease))
        try:
            if self.stream is not None:
                with torch.cuda.stream(self.stream):
                    outcome = self._train(job, lease)
            else:
                outcome = self._train(job, lease)
        except Released:
            log.info("job %s released on SIGTERM", lease.job_id, extra=_ids(lease))
            self.lease = None  # the heartbeat thread must not renew a released lease
            self.q.release(lease)
        except Exception as e:
            log.exception("job %s failed", lease.job_id)
            reason = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=5)}"
            self.q.finish(lease, "fail", reason=reason)
        else:
            self.q.finish(lease, "complete", **outcome)
        finally:
            self.lease = None
            self.jobs_done += 1

    def _trainer(self, job: dict[str, Any]) -> tuple[Any, bool]:
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
        ctx = TrainerContext(seed=int(job["seed"]), max_resource=float(job["max_resource"]),
                             data_dir=self.data_dir or settings.get("data_dir"),
                             device=str(self.device), settings=settings)
        with _BUILD_LOCK:
            trainer = get_trainer(job["trainer"])(job["config"], ctx)
        if r0 > 0:
            trainer.load_state_dict(self._load(job, r0))
        return trainer, False

    def _train(self, job: dict[str, Any], lease: Lease) -> dict[str, Any]:
        trainer, warm = self._trainer(job)
        r0, r1 = float(job["from_resource"]), float(job["to_resource"])
        # Trainers that count their samples (every torch one) get a samples/s report; the
        # count comes from the checkpoint, so subtract where this segment started.
        seen0 = getattr(trainer, "samples_seen", None)
        self._sync()
        start = time.perf_counter()
        last: tuple[float, float] | None = None
        for resource, value in trainer.train(r0, r1):
            last = (float(resource), float(value))
            if self.q.progress(lease, *last):
                break  # STOP decision, lost lease or stopped study
            if self.draining.is_set() and last[0] < r1:
                raise Released
        self._sync()
        cost = time.perf_counter() - start
        if last is None:
            raise RuntimeError(f"trainer {job['trainer']} reported no step between {r0} and {r1}")
        save_checkpoint(checkpoint_path(self.checkpoint_dir, job["study_id"], job["trial_id"],
                                        last[0]), trainer.state_dict())
        if self.keep_models > 0:
            self.kept[_identity(job)] = (last[0], trainer)
            while len(self.kept) > self.keep_models:
                self.kept.popitem(last=False)  # least recently trained first
        outcome: dict[str, Any] = {"value": last[1], "resource": last[0], "cost": cost}
        if warm:
            outcome["warm"] = True
        if seen0 is not None and cost > 0:
            # Over the whole segment (evaluation and reports included): what a job achieves,
            # not the peak of the training loop alone (bench/trainers.py measures that).
            outcome["samples_per_second"] = (trainer.samples_seen - seen0) / cost
        return outcome

    def _sync(self) -> None:
        """Wait for this slot's kernels only: other slots' work is not this job's time."""
        if self.stream is not None:
            self.stream.synchronize()
        else:
            synchronize(self.device)

    def _load(self, job: dict[str, Any], resource: float) -> dict[str, Any]:
        path = checkpoint_path(self.checkpoint_dir, job["study_id"], job["trial_id"], resource)
        if not path.exists():
            raise FileNotFoundError(
                f"checkpoint {path} is missing: workers must share one checkpoint directory "
                "(--checkpoint-dir on a shared volume) to resume promoted trials")
        return torch.load(path, map_location=self.device, weights_only=False)


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
        if w.device.type == "cuda":
            w.stream = torch.cuda.Stream(w.device)
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
        # letting every process spin a full-size thread pool against the others.
        torch.set_num_threads(threads)
    if slots < 1:
        raise SystemExit(f"--slots must be at least 1, got {slots}")
    if slots == 1:
        worker = Worker(redis_url, trainers, checkpoint_dir, data_dir,
                        lease_seconds=lease_seconds, keep_models=keep_models)
        signal.signal(signal.SIGTERM, worker.drain)
        signal.signal(signal.SIGINT, worker.drain)
        worker.run(max_jobs)
        return
    base = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    workers = [Worker(redis_url, trainers, checkpoint_dir, data_dir, worker_id=f"{base}-s{i}",
                      lease_seconds=lease_seconds, keep_models=keep_models)
               for i in range(slots)]

    def drain_all(*_: Any) -> None:
        for w in workers:
            w.drain()

    signal.signal(signal.SIGTERM, drain_all)
    signal.signal(signal.SIGINT, drain_all)
    run_slots(workers, max_jobs)
