"""One study: its algorithm, its trials and its jobs, as a deterministic state machine.

Every change enters through :meth:`StudyEngine.apply` as an *input* (a small JSON dict: an ask
for jobs, a worker event, a lost lease, a stop). Inputs are validated before anything changes,
so an input that raises changed nothing and is not logged. Given the same inputs in the same
order, two engines built from the same config are identical; the service therefore persists a
study as a snapshot of :meth:`state` plus the log of inputs since (DESIGN.md, "Persisting an
algorithm"), and replays that log after a crash.

The engine knows neither Redis nor gRPC. Each applied input leaves :class:`Effect` records in
``effects`` (jobs to enqueue, trials to write, events to stream, jobs to stop) that the service
carries out when live and drops when replaying.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from .algorithms import Decision, Job, Outcome, Status
from .algorithms.base import PreconditionError, TransientAlgorithmError, deepening
from .study import StudyConfig


class EngineError(Exception):
    """An input the engine refuses. ``code`` is one of invalid, not_found, precondition."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class AlgorithmFailure(Exception):
    """The algorithm raised something other than a refusal while an input was applied.

    The engine may be half-mutated: the service must rebuild the study from its durable state
    (which does not contain this input) and then either fail the study (``fatal``) with
    :attr:`message`, or, for a :class:`~hpod.server.algorithms.base.TransientAlgorithmError`,
    answer the caller "retry" and leave the study as it was."""

    def __init__(self, algorithm: str, inp: Mapping[str, Any], exc: BaseException) -> None:
        self.fatal = not isinstance(exc, TransientAlgorithmError)
        shown = {k: v for k, v in inp.items() if k != "op"}
        text = repr(shown)
        if len(text) > 200:
            text = text[:200] + "...}"
        self.message = (f"algorithm {algorithm!r} raised {type(exc).__name__}: "
                        f"{str(exc)[:500]} while applying input {inp.get('op')!r} {text}")
        super().__init__(self.message)


# Trial and study states (the wire enums are mapped in one place, server/service/convert.py).
QUEUED, RUNNING, PAUSED, COMPLETED, STOPPED, FAILED, LOST = (
    "queued", "running", "paused", "completed", "stopped", "failed", "lost")
FINAL_TRIAL_STATES = {COMPLETED, STOPPED, FAILED, LOST}
# A study whose first trials all fail this many times in a row is failed with the first error
# (a misspelled parameter, a missing data set): its remaining trials would fail the same way.
FAIL_FAST_TRIALS = 5
# How many ended job ids are remembered by name, to say how a late report's job ended. Older
# ones are still recognised as ended (by their sequence number), only less precisely.
ENDED_JOBS_KEPT = 1000
ACTIVE, STUDY_COMPLETED, STUDY_STOPPED = "active", "completed", "stopped"
# A study whose algorithm raised (or whose first trials all failed) hands out no more work;
# one whose stored state could not be made consistent at start-up is kept read-only.
STUDY_FAILED, STUDY_QUARANTINED = "failed", "quarantined"


class Curve:
    """A learning curve, (resource, value) points in order, packed as two float arrays: 16
    bytes a point instead of about 140 for a list of two-float lists, so a server's memory
    follows its live work. Iterates as (resource, value) pairs; JSON as ``[[r, v], ...]``."""

    __slots__ = ("_r", "_v")

    def __init__(self, points: Iterable[Iterable[float]] = ()) -> None:
        self._r, self._v = array("d"), array("d")
        for point in points:
            self.append(point)

    def append(self, point: Iterable[float]) -> None:
        r, v = point
        self._r.append(float(r))
        self._v.append(float(v))

    def __iter__(self) -> Iterator[tuple[float, float]]:
        return zip(self._r, self._v, strict=True)

    def __len__(self) -> int:
        return len(self._r)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Curve) and self._r == other._r and self._v == other._v

    def __repr__(self) -> str:
        return f"Curve({self.to_json()!r})"

    def to_json(self) -> list[list[float]]:
        return [[r, v] for r, v in self]


@dataclass
class TrialRec:
    id: int
    config: dict[str, Any]
    state: str = QUEUED
    curve: Curve = field(default_factory=Curve)  # (resource, raw value) points
    resource: float = 0.0
    value: float | None = None
    bracket: int = 0
    rung: int = 0
    cost: float = 0.0
    lost_jobs: int = 0
    error: str = ""
    # Training throughput of its latest job, as the worker measured it (0: not reported).
    # Defaulted so that snapshots saved before the field existed still load.
    samples_per_second: float = 0.0
    # The worker that trained its latest segment (where a continuation goes first, as that
    # worker may still hold the model), and how many segments continued from that memory.
    worker: str = ""
    warm_resumes: int = 0
    segments: int = 0  # jobs it completed (its first segment and each continuation)
    checkpoint_bytes: int = 0  # its newest checkpoint on disk, as its worker reported it

    def __post_init__(self) -> None:
        if not isinstance(self.curve, Curve):  # a snapshot or a copy holds plain lists
            self.curve = Curve(self.curve)


@dataclass
class JobRec:
    job_id: str
    trial_id: int
    config: dict[str, Any]
    from_resource: float
    to_resource: float
    bracket: int | None
    rung: int | None
    attempt: int = 0
    state: str = QUEUED  # queued | running
    external: bool = False
    worker: str = ""
    stop_requested: bool = False

    def algo_job(self) -> Job:
        return Job(self.trial_id, self.config, self.from_resource, self.to_resource,
                   self.bracket, self.rung)


class Effect(NamedTuple):
    """One thing the live service must do after an input. A named tuple rather than a frozen
    dataclass: one is built per learning-curve point, and a frozen dataclass's __init__
    costs several times a tuple's."""

    kind: str  # enqueue | ready | trial | event | stop_job | study
    job: JobRec | None = None
    trial_id: int | None = None
    event: str = ""
    resource: float = 0.0
    value: float | None = None


class StudyEngine:
    def __init__(self, study_id: str, config: StudyConfig) -> None:
        self.study_id = study_id
        self.config = config
        self.algorithm = config.build_algorithm()
        self.trials: dict[int, TrialRec] = {}
        self.jobs: dict[str, JobRec] = {}
        # The most recent ended job ids -> how they ended (bounded; see _live_job).
        self.ended_jobs: dict[str, str] = {}
        self.job_seq = 0
        # Part of every job id handed out after an ``epoch`` input: the service gives each
        # load of a study a new tag, so job ids that a Redis rollback erased from the log are
        # never reissued to other work (a worker still holding one reports to nothing).
        self.epoch = ""
        self.state = ACTIVE
        self.error = ""  # why the study is FAILED or QUARANTINED
        self.checkpoint_bytes = 0  # the trials' checkpoint_bytes, summed
        self.resource_used = 0.0
        self.cost_used = 0.0
        self.inputs = 0
        self.effects: list[Effect] = []
        # Trials whose replayed proposal differed from the logged one (the logged one kept),
        # and whether the algorithm took it too: read by the service after a rebuild.
        self.adopted: list[tuple[int, bool]] = []
        self.state_counts: dict[str, int] = {}  # trials per state, kept as states change
        self._best: tuple[int | None] | None = None  # the incumbent's id, until an input changes it

    # ------------------------------------------------------------------ inputs

    def apply(self, inp: Mapping[str, Any]) -> Any:
        """Apply one input; returns what the op returns.

        Raises EngineError, changing nothing, for an input the engine refuses; raises
        AlgorithmFailure if the algorithm itself raised (the engine may then be half-mutated
        and must be rebuilt by the caller). An ``ask`` that hands out nothing is not counted as
        an input: the caller need not log it (algorithms change no state when they have no job
        to give)."""
        op = inp["op"]
        handler = _HANDLERS.get(op)
        if handler is None:
            raise EngineError("invalid", f"unknown input {op!r}")
        try:
            if op == "progress" and len(inp) == 4 and "job_id" in inp and "resource" in inp \
                    and "value" in inp:
                # The input of every learning-curve point: called without building kwargs.
                result = self._op_progress(inp["job_id"], inp["resource"], inp["value"])
            else:
                fields = dict(inp)  # a C-level copy: cheaper than filtering in Python
                del fields["op"]
                result = handler(self, **fields)
        except (EngineError, AlgorithmFailure):
            raise
        except TypeError as e:
            if _is_signature_error(e, handler):
                raise EngineError("invalid", f"bad fields for input {op!r}: {e}") from None
            raise AlgorithmFailure(self.config.algorithm, inp, e) from e
        except Exception as e:
            raise AlgorithmFailure(self.config.algorithm, inp, e) from e
        if op == "ask" and not result:
            return result
        self.inputs += 1
        if op not in _KEEPS_BEST:
            self._best = None
        return result

    def _op_epoch(self, tag: str) -> None:
        self.epoch = str(tag)

    def _op_checkpoints_pruned(self, kept: list[int]) -> None:
        """The study's checkpoints were pruned at its end: only the trials in ``kept`` still
        have one."""
        keep = set(kept)
        for trial in self.trials.values():
            if trial.id not in keep and trial.checkpoint_bytes:
                self.checkpoint_bytes -= trial.checkpoint_bytes
                trial.checkpoint_bytes = 0
                self.effects.append(Effect("trial", trial_id=trial.id))

    def _op_fail_study(self, error: str) -> None:
        """The algorithm raised (the service logs this input after rebuilding the study
        without the input that raised): no more work is handed out."""
        if self.state in (STUDY_COMPLETED, STUDY_STOPPED, STUDY_FAILED):
            return
        self.error = str(error)[:2000]
        for job in list(self.jobs.values()):
            self.effects.append(Effect("stop_job", job=job))
            self._end_job(job, "stopped")
        self._finish(STUDY_FAILED)

    def _op_ask(self, free: int, external: bool = False, client: str = "",
                ready: bool = False, configs: Mapping[str, Mapping[str, Any]] | None = None
                ) -> list[JobRec]:
        """Jobs for idle workers (queued on their stream), or for the ask/tell ``client``
        (running from now on), or with ``ready`` for the next ask/tell clients (queued until
        one is handed out: a ``start`` input). ``configs`` (trial id -> configuration) is
        what the live ask handed out, logged with it (:func:`ask_record`): a replay keeps
        those, whatever the algorithm proposes now."""
        if self.state != ACTIVE or free <= 0:
            return []
        out = []
        for job in self.algorithm.next_jobs(free):
            if configs is not None and job.trial_id not in self.trials:
                job = self._as_logged(job, configs)
            rec = self._new_job(job, external, client, queued=not external or ready)
            out.append(rec)
        return out

    def _as_logged(self, job: Job, configs: Mapping[str, Mapping[str, Any]]) -> Job:
        """A new trial as the live study handed it out. A model fit rounds differently on
        another CPU or library release, so a replayed proposal may differ from the logged
        one, which is what the workers train and the user saw."""
        logged = configs.get(str(job.trial_id))
        if logged is None or dict(logged) == job.config:
            return job
        took = self.algorithm.adopt_config(job.trial_id, logged)
        self.adopted.append((job.trial_id, bool(took)))
        return replace(job, config=dict(logged))

    def _op_start(self, job_id: str, worker: str = "") -> None:
        job = self._live_job(job_id)
        if job.state == RUNNING:
            return  # a redelivered start changes nothing
        job.state, job.worker = RUNNING, worker
        self._set_trial_state(job.trial_id, RUNNING)

    def _op_progress(self, job_id: str, resource: float, value: float) -> str:
        # The most frequent input by far (one per learning-curve point): kept lean.
        job = self.jobs.get(job_id) or self._live_job(job_id)
        trial = self.trials[job.trial_id]
        self._check_point(job, trial, resource, value)
        self._record_point(trial, resource, value)
        decision = self.algorithm.on_progress(
            trial.id, resource, -float(value) if self.config.maximize else float(value))
        if job.state != RUNNING:
            job.state = RUNNING
            self._set_trial_state(trial.id, RUNNING)
        self.effects.append(Effect("event", None, trial.id, "progress", resource, value))
        if decision is Decision.STOP:
            if not job.stop_requested:
                job.stop_requested = True
                self.effects.append(Effect("stop_job", job=job))
            return "stop"
        return "continue"

    def _op_complete(self, job_id: str, value: float, resource: float | None = None,
                     cost: float | None = None,
                     samples_per_second: float | None = None, warm: bool = False,
                     checkpoint_bytes: int | None = None) -> None:
        job = self._live_job(job_id)
        trial = self.trials[job.trial_id]
        resource = job.to_resource if not resource else float(resource)
        if not _finite(value):
            raise EngineError("invalid", f"value must be a finite number, got {value!r}; "
                              "report a failure with FailJob instead")
        if resource > job.to_resource + 1e-9 or resource <= job.from_resource:
            raise EngineError("invalid", f"resource {resource:g} is outside this job's segment "
                              f"({job.from_resource:g}, {job.to_resource:g}]")
        if cost is not None and (not _finite(cost) or cost < 0):
            raise EngineError("invalid", f"cost must be a finite number >= 0, got {cost!r}")
        if resource > trial.resource:
            self._record_point(trial, resource, value)
            self.algorithm.on_progress(trial.id, resource, self._normalise(value))
        cost = float(cost or 0.0)
        trial.cost += cost
        # Informational only: a bad figure is dropped rather than failing a finished job.
        if samples_per_second is not None and _finite(samples_per_second) \
                and samples_per_second >= 0:
            trial.samples_per_second = float(samples_per_second)
        if isinstance(checkpoint_bytes, int) and checkpoint_bytes >= 0:
            self.checkpoint_bytes += checkpoint_bytes - trial.checkpoint_bytes
            trial.checkpoint_bytes = checkpoint_bytes
        trial.worker = job.worker
        trial.warm_resumes += 1 if warm else 0
        trial.segments += 1
        self.cost_used += cost
        self.resource_used += resource - job.from_resource
        # The trial keeps the measured device seconds; the algorithm sees the study's chosen
        # cost. Read from the stored config, so a replay derives the same cost again.
        algo_cost = (resource - job.from_resource
                     if self.config.cost_source == "resource" else cost)
        self.algorithm.on_job_end(job.algo_job(), Outcome(
            Status.COMPLETED, self._normalise(value), resource, algo_cost))
        if job.stop_requested:
            state = STOPPED
        elif resource >= self.max_resource() - 1e-9:
            state = COMPLETED
        else:
            state = PAUSED
        self._end_job(job, "completed")
        self._set_trial_state(trial.id, state, resource=resource, value=value)
        self._close_dropped()
        self._maybe_finish()

    def _op_fail(self, job_id: str, reason: str = "") -> None:
        job = self._live_job(job_id)
        self.trials[job.trial_id].error = reason[:2000]
        self.algorithm.on_job_end(job.algo_job(), Outcome(Status.FAILED))
        self._end_job(job, "failed")
        self._set_trial_state(job.trial_id, FAILED)
        self._close_dropped()
        if self._failing_from_the_start():
            first = min(t.id for t in self.trials.values() if t.state == FAILED)
            # The error first: it is what a user reads in a one-line listing.
            self._op_fail_study(
                f"{self.trials[first].error or 'no reason given'} (trial {first}; the first "
                f"{FAIL_FAST_TRIALS} trials all failed)")
            return
        self._maybe_finish()

    def _failing_from_the_start(self) -> bool:
        """True when the study's first FAIL_FAST_TRIALS trials failed and none has a result."""
        if self.state != ACTIVE or self.state_counts.get(FAILED, 0) < FAIL_FAST_TRIALS:
            return False
        first = sorted(self.trials)[:FAIL_FAST_TRIALS]
        return (all(self.trials[t].state == FAILED for t in first)
                and all(t.value is None for t in self.trials.values()))

    def _op_lost(self, job_id: str) -> None:
        """The job's lease expired: hand it on (resuming from the segment's start checkpoint)
        up to max_retries times, then give up on the trial as LOST."""
        job = self._live_job(job_id)
        trial = self.trials[job.trial_id]
        trial.lost_jobs += 1
        trial.worker = ""  # gone with its memory
        self._end_job(job, "lost")
        self.effects.append(Effect("stop_job", job=job))  # in case the worker comes back
        if job.attempt < self.config.max_retries and not job.stop_requested:
            retry = self._job_record(job.algo_job(), job.external, "", job.attempt + 1, QUEUED)
            self._set_trial_state(trial.id, QUEUED, event="resumed")
            self._emit_job(retry)
            return
        self.algorithm.on_job_end(job.algo_job(), Outcome(Status.LOST))
        self._set_trial_state(trial.id, LOST)
        self._close_dropped()
        self._maybe_finish()

    def _op_stop(self) -> None:
        if self.state != ACTIVE:
            return
        for job in list(self.jobs.values()):
            self.effects.append(Effect("stop_job", job=job))
            self._end_job(job, "stopped")
        self._finish(STUDY_STOPPED)

    def _op_raise_max_resource(self) -> None:
        deep = deepening(self.algorithm)
        if deep is None:
            raise EngineError("precondition", f"algorithm {self.config.algorithm!r} cannot "
                              "raise its maximum resource; use algorithm 'idhb'")
        if self.state in (STUDY_STOPPED, STUDY_FAILED, STUDY_QUARANTINED):
            raise EngineError("precondition", f"the study is {self.state}")
        try:
            deep.raise_max_resource()
        except PreconditionError as e:
            raise EngineError("precondition", str(e)) from None
        self._close_dropped()
        self.state = ACTIVE
        self.effects.append(Effect("study"))

    # ------------------------------------------------------------------ helpers

    def _new_job(self, job: Job, external: bool, client: str, queued: bool) -> JobRec:
        trial = self.trials.get(job.trial_id)
        if trial is None:
            trial = TrialRec(job.trial_id, dict(job.config), bracket=job.bracket or 0,
                             rung=job.rung or 0)
            self.trials[job.trial_id] = trial
            self.state_counts[trial.state] = self.state_counts.get(trial.state, 0) + 1
            event = "created"
        else:
            trial.rung = job.rung if job.rung is not None else trial.rung
            event = "promoted"
            if job.config != trial.config:  # the study's record is what the trial runs
                job = replace(job, config=trial.config)
        state = QUEUED if queued else RUNNING
        rec = self._job_record(job, external, client, 0, state)
        self._set_trial_state(trial.id, state, event=event)
        self._emit_job(rec)
        return rec

    def _job_record(self, job: Job, external: bool, client: str, attempt: int,
                    state: str) -> JobRec:
        self.job_seq += 1
        tag = f"-{self.epoch}" if self.epoch else ""
        rec = JobRec(f"{self.study_id}{tag}-j{self.job_seq}", job.trial_id, dict(job.config),
                     float(job.from_resource), float(job.to_resource), job.bracket, job.rung,
                     attempt, state, external, client)
        self.jobs[rec.job_id] = rec
        return rec

    def _emit_job(self, rec: JobRec) -> None:
        if not rec.external:
            self.effects.append(Effect("enqueue", job=rec))
        elif rec.state == QUEUED:  # made ahead, or the retry of a lost one: for a client
            self.effects.append(Effect("ready", job=rec))

    def _live_job(self, job_id: str) -> JobRec:
        job = self.jobs.get(job_id)
        if job is not None:
            return job
        ended = self.ended_jobs.get(job_id) or self._ended_by_number(job_id)
        if ended is not None:
            raise EngineError("precondition", f"job {job_id} already ended ({ended}); "
                              "ask for a new job")
        raise EngineError("not_found", f"no job {_short(job_id)!r} in study {self.study_id}")

    def _ended_by_number(self, job_id: str) -> str | None:
        """A job id of this study and epoch that was handed out and is not live has ended."""
        tag = f"-{self.epoch}" if self.epoch else ""
        prefix = f"{self.study_id}{tag}-j"
        seq = job_id[len(prefix):] if job_id.startswith(prefix) else ""
        if seq.isdigit() and 0 < int(seq) <= self.job_seq:
            return "ended"
        return None

    def _check_point(self, job: JobRec, trial: TrialRec, resource: float, value: float) -> None:
        if not ((type(resource) is float or _finite(resource)) and math.isfinite(resource)
                and (type(value) is float or _finite(value)) and math.isfinite(value)):
            raise EngineError("invalid", f"resource and value must be finite numbers, got "
                              f"resource={resource!r} value={value!r}; report a diverged run "
                              "with FailJob")
        if resource <= trial.resource:
            raise EngineError("precondition", f"duplicated report: trial {trial.id} already "
                              f"has a point at resource {trial.resource:g}; report increasing "
                              "resources")
        if resource > job.to_resource + 1e-9:
            raise EngineError("invalid", f"resource {resource:g} is beyond this job's "
                              f"to_resource {job.to_resource:g}")

    def _record_point(self, trial: TrialRec, resource: float, value: float) -> None:
        resource, value = float(resource), float(value)
        curve = trial.curve  # appended in place: one call per point is the hot path
        curve._r.append(resource)
        curve._v.append(value)
        trial.resource, trial.value = resource, value

    def _normalise(self, value: float) -> float:
        """Algorithms minimise: a maximised metric is flipped here, once."""
        return -float(value) if self.config.maximize else float(value)

    def _set_trial_state(self, trial_id: int, state: str, *, event: str | None = None,
                         resource: float = 0.0, value: float | None = None) -> None:
        trial = self.trials[trial_id]
        self.state_counts[trial.state] -= 1
        self.state_counts[state] = self.state_counts.get(state, 0) + 1
        trial.state = state
        kind = event or {PAUSED: "paused", COMPLETED: "completed", STOPPED: "stopped",
                         FAILED: "failed", LOST: "lost"}.get(state)
        self.effects.append(Effect("trial", trial_id=trial_id))
        if kind:
            self.effects.append(Effect("event", trial_id=trial_id, event=kind,
                                       resource=resource or trial.resource,
                                       value=trial.value if value is None else value))

    def _end_job(self, job: JobRec, how: str) -> None:
        self.jobs.pop(job.job_id, None)
        self.ended_jobs[job.job_id] = how
        if len(self.ended_jobs) > ENDED_JOBS_KEPT:  # dicts keep insertion order: drop oldest
            del self.ended_jobs[next(iter(self.ended_jobs))]

    def _close_dropped(self) -> None:
        """Paused trials the algorithm's latest job end dropped for good (a synchronous rung
        that closed without them) are finished at their rung: COMPLETED now, not when the
        study ends. A later raise of R that resumes one makes it QUEUED again."""
        for tid in self.algorithm.finalized():
            trial = self.trials.get(tid)
            if trial is not None and trial.state == PAUSED:
                self._set_trial_state(tid, COMPLETED)

    def _maybe_finish(self) -> None:
        if self.state == ACTIVE and not self.jobs and self.algorithm.done():
            self._finish(STUDY_COMPLETED)

    def _finish(self, state: str) -> None:
        self.state = state
        final = COMPLETED if state == STUDY_COMPLETED else STOPPED
        for trial in self.trials.values():
            if trial.state not in FINAL_TRIAL_STATES:
                self._set_trial_state(trial.id, final)
        self.effects.append(Effect("study"))
        self.effects.append(Effect("event", event="study_ended"))

    # ------------------------------------------------------------------ reads

    def max_resource(self) -> float:
        """The current maximum: an algorithm that can raise it (ID-HB) says what it is now."""
        deep = deepening(self.algorithm)
        return float(deep.max_resource) if deep is not None else self.config.resource.max_resource

    def best_trial(self) -> TrialRec | None:
        # Cached between inputs that cannot change it: the service reads it on every commit,
        # and several algorithms find it by a scan of all their results.
        if self._best is None:
            best = self.algorithm.best()
            self._best = (best[0] if best else None,)
        tid = self._best[0]
        return self.trials.get(tid) if tid is not None else None

    def counts(self) -> dict[str, int]:
        c = self.state_counts
        running = c.get(QUEUED, 0) + c.get(RUNNING, 0)
        finished = sum(c.get(s, 0) for s in FINAL_TRIAL_STATES)
        return {"total": len(self.trials), "running": running, "finished": finished}

    def queued_jobs(self) -> int:
        return sum(1 for j in self.jobs.values() if j.state == QUEUED and not j.external)

    # ------------------------------------------------------------------ persistence

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "algorithm": self.algorithm.state(),
            # Shallow copies: the caller serialises at once, and asdict's deep copy of every
            # curve was most of a snapshot's cost in large studies.
            "trials": [{**vars(t), "curve": t.curve.to_json()} for t in self.trials.values()],
            "jobs": [dict(vars(j)) for j in self.jobs.values()],
            "ended_jobs": self.ended_jobs,
            "job_seq": self.job_seq,
            "epoch": self.epoch,
            "state": self.state,
            "error": self.error,
            "checkpoint_bytes": self.checkpoint_bytes,
            "resource_used": self.resource_used,
            "cost_used": self.cost_used,
            "inputs": self.inputs,
        }

    @classmethod
    def from_state(cls, study_id: str, config: StudyConfig,
                   state: Mapping[str, Any]) -> StudyEngine:
        eng = cls(study_id, config)
        eng.algorithm.restore(state["algorithm"])
        eng.trials = {t["id"]: TrialRec(**t) for t in state["trials"]}
        for t in eng.trials.values():
            eng.state_counts[t.state] = eng.state_counts.get(t.state, 0) + 1
        eng.jobs = {j["job_id"]: JobRec(**j) for j in state["jobs"]}
        eng.ended_jobs = dict(state["ended_jobs"])
        eng.job_seq = int(state["job_seq"])
        eng.epoch = str(state.get("epoch", ""))
        eng.state = state["state"]
        eng.error = str(state.get("error", ""))
        eng.checkpoint_bytes = int(state.get("checkpoint_bytes", 0))
        eng.resource_used = float(state["resource_used"])
        eng.cost_used = float(state["cost_used"])
        eng.inputs = int(state["inputs"])
        return eng

    def take_effects(self) -> list[Effect]:
        out, self.effects = self.effects, []
        return out


# Input name -> handler, looked up once: an f-string and getattr per input showed in profiles.
_HANDLERS = {name[4:]: fn for name, fn in vars(StudyEngine).items() if name.startswith("_op_")}


def ask_record(inp: Mapping[str, Any], jobs: Iterable[JobRec]) -> dict[str, Any]:
    """The ask input as logged: with the configuration of every job it handed out, so that a
    replay on another machine gives the trials what they were given here
    (:meth:`StudyEngine._as_logged`)."""
    return {**inp, "configs": {str(j.trial_id): j.config for j in jobs}}


# Inputs after which the incumbent is what it was: they hand out or start work, no result.
_KEEPS_BEST = frozenset({"ask", "start"})


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _is_signature_error(e: TypeError, handler: Any) -> bool:
    """A TypeError from calling the handler itself (missing or unknown field), as opposed to
    one raised inside the algorithm."""
    tb = e.__traceback__
    return tb is not None and tb.tb_next is None


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
