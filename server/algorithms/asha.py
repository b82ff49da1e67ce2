"""Asynchronous successive halving (ASHA, Li et al., MLSys 2020) and asynchronous Hyperband.

Two forms, chosen by the setting ``mode``:

* ``promotion`` (default, the ASHA paper): a trial *pauses* at each milestone. A free worker
  first promotes the best not-yet-promoted paused trial of the highest rung where it is in the
  top 1/eta; otherwise it starts a new trial at the bottom rung of its bracket. A promoted trial
  is a new job from its checkpoint (its trained resource) to the next milestone.
* ``stopping`` (Ray-style): a trial trains from 0 to the maximum resource in one job; when it
  reaches a milestone and is not in the top 1/eta of what that milestone has seen so far, the
  answer to its learning-curve point is STOP.

One milestone rule for both: the first report with resource >= milestone counts, and the real
resource of that report is recorded (Li et al., MLSys 2020, Algorithm 2).

Rung levels are ``r_min * eta**k`` below R, then R itself; bracket ``s`` skips the first ``s``
levels. ``asha`` runs bracket 0 only unless ``brackets`` says more; ``async-hyperband`` runs all
``s_max + 1`` brackets, and each new trial draws its bracket from ``bracket_distribution``
(``sync_proportional``: Syne Tune, proportional to the synchronous bracket sizes;
``softmax_rungs``: Ray, softmax over the number of rungs).

Settings: ``mode``, ``quantile_rule`` (``asha_floor`` | ``linear_quantile`` | ``ray_percentile``),
``brackets`` (a count or ``"all"``), ``bracket_distribution``, ``sampler``,
``duplicate_radius`` (0: off; with ``asha_floor`` in promotion mode, a rung's top 1/eta counts
configurations within this distance of a better one, in every parameter on the unit scale, as
one entry: ``distinct.py``). The study's
``max_trials`` is how many new trials start in total. ``budget`` (resource units,
optional) stops the study by resource instead, as the paper runs ASHA until a time budget is
spent: new trials start whenever nothing can be promoted, with or without a ``max_trials``
cap, until the resource handed out (each job's ``to - from``) reaches the budget; then no job
at all is handed out and the study ends with the jobs in flight. A trial-count stop leaves
workers idle at the end (only promotions remain, fewer than the workers); a budget stop keeps
them busy to the end. A trial whose reported value is not finite
is treated as failed; failed and lost trials never block a rung. The sampler is told every
learning-curve point and, as each job ends, what that segment cost (``Sampler.on_segment``):
``asha-carbs`` (``carbs.py``) is this scheduler with the cost-aware CARBS sampler.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np

from .base import (
    Algorithm,
    Bracket,
    Context,
    Decision,
    Job,
    Outcome,
    Plan,
    Rung,
    SettingsError,
    Status,
    SuggestContext,
    register_algorithm,
    rng_for,
)
from .distinct import DistinctRanks
from .hb_math import (  # noqa: F401 (the rules are re-exported: asha's public names)
    Order,
    _linear_quantile,
    bracket_probabilities,
    continues,
    continues_sorted,
    in_top,
    in_top_sorted,
    largest_s,
    ray_cutoff,
    rung_levels,
    to_fraction,
)
from .mfkde import to_raw
from .ordered import SortedKeys
from .persist import DERIVED, Persistent, record
from .samplers import make_sampler, sampler_options
from .settings import parse

Mode = Literal["promotion", "stopping"]
QuantileRule = Literal["asha_floor", "linear_quantile", "ray_percentile"]
Distribution = Literal["sync_proportional", "softmax_rungs"]
MODES, QUANTILE_RULES, DISTRIBUTIONS = get_args(Mode), get_args(QuantileRule), get_args(
    Distribution)


@dataclass(frozen=True)
class ASHASettings:
    """``algorithm.settings`` of asha and async-hyperband (see the module docstring);
    ``brackets`` None is the algorithm's default (1 for asha, "all" for async-hyperband)."""

    mode: Mode = "promotion"
    quantile_rule: QuantileRule = "asha_floor"
    brackets: int | Literal["all"] | None = None
    bracket_distribution: Distribution = "sync_proportional"
    sampler: str = "random"
    budget: float | None = None
    duplicate_radius: float = 0.0


# --- exact resource arithmetic ------------------------------------------------------------


# --- state --------------------------------------------------------------------------------


@record
@dataclass
class RungRecord:
    """What one milestone of one bracket has seen: value and real resource per trial.

    ``order`` (every entry, sorted) and ``candidates`` (a heap of paused, not-yet-promoted
    entries; stale ones are dropped when they reach the top) are derived from the rest and the
    trials' states: with them a promotion decision costs O(log n) instead of a scan of the rung.
    """

    level: float
    values: dict[int, float] = field(default_factory=dict)
    resources: dict[int, float] = field(default_factory=dict)
    promoted: set[int] = field(default_factory=set)
    order: SortedKeys = field(default_factory=SortedKeys, metadata=DERIVED)
    candidates: Order = field(default_factory=list, metadata=DERIVED)

    def record(self, tid: int, value: float, resource: float) -> None:
        self.values[tid] = value
        self.resources[tid] = resource
        self.order.add((value, tid))


@record
@dataclass
class TrialRecord:
    """``status``: running | paused (its job ended at a milestone) | stopping (told STOP, job
    not ended yet) | ended | failed. ``rung`` is the highest bracket-local rung recorded."""

    config: dict[str, Any]
    bracket: int
    status: str = "running"
    rung: int = -1
    trained: float = 0.0
    seen: float = -1.0  # the last resource the sampler was told about


class ASHA(Persistent, Algorithm):
    """ASHA with ``brackets`` brackets (default 1); see the module docstring."""

    saved = ("trials", "rungs", "running", "bracket_rng", "sampler", "handed")
    state_version = 2

    name = "asha"
    default_brackets: int | str = 1

    def __init__(self, ctx: Context) -> None:
        st = parse(ASHASettings, ctx.settings, passthrough=sampler_options(ctx.settings))
        self.settings = st
        self.mode, self.rule, self.distribution = st.mode, st.quantile_rule, st.bracket_distribution
        self.budget = st.budget
        if self.budget is not None and not self.budget > 0:
            raise SettingsError("algorithm.settings.budget",
                                f"must be a resource amount > 0 (got {self.budget!r})")
        if self.budget is None and (not ctx.max_trials or ctx.max_trials < 1):
            raise SettingsError(
                "max_trials", f"{self.name} needs max_trials >= 1 (how many trials to start) "
                "or algorithm.settings.budget (how much resource to spend)")
        self.max_trials: int | None = int(ctx.max_trials) if ctx.max_trials else None
        self.radius = self._radius(st)
        self.space = ctx.space
        self.handed = 0.0  # resource handed out in jobs (to - from), against ``budget``
        self.eta = int(ctx.resource.eta)
        r_min = to_fraction(ctx.resource.min_resource)
        top = to_fraction(ctx.resource.max_resource)
        self.max_resource = float(top)
        self.levels = rung_levels(r_min, top, self.eta)
        self.n_brackets = self._bracket_count(
            self.default_brackets if st.brackets is None else st.brackets,
                                              largest_s(r_min, top, self.eta) + 1)
        self.probabilities = bracket_probabilities(self.distribution, r_min, top, self.eta,
                                                   self.n_brackets)
        self._cumulative = np.cumsum(self.probabilities)
        self.sampler = make_sampler(ctx, rng_for(ctx.seed, 0))
        self.bracket_rng = rng_for(ctx.seed, 1)
        self.rungs: list[list[RungRecord]] = [
            [RungRecord(level) for level in self.levels[s:]] for s in range(self.n_brackets)
        ]
        self.trials: dict[int, TrialRecord] = {}
        self.running: dict[int, Job] = {}
        self._derive()

    def _derive(self) -> None:
        """Indexes kept beside the saved state (rebuilt by ``restore``): the running trials
        with no rung yet, in id order (the sampler's pending list), the best (value,
        trial) at each resource level (the incumbent), and the rungs' distinct ranks
        (``duplicate_radius``)."""
        self._fresh: dict[int, None] = {
            t: None for t, tr in self.trials.items() if t in self.running and tr.rung < 0}
        self._level_best: dict[float, tuple[float, int]] = {}
        for rungs in self.rungs:
            for rung in rungs:
                rung.order = SortedKeys((v, t) for t, v in rung.values.items())
                rung.candidates = []
                if rung.order:
                    self._note_level(rung.level, *rung.order[0])
        for tid, trial in self.trials.items():
            if trial.status == "paused":
                rung = self.rungs[trial.bracket][trial.rung]
                if tid not in rung.promoted:
                    heapq.heappush(rung.candidates, (rung.values[tid], tid))
        self._points: dict[int, np.ndarray] = {}  # trial -> unit point (duplicate_radius)
        self._distinct: dict[tuple[int, int], DistinctRanks] = {}

    @staticmethod
    def _radius(st: ASHASettings) -> float:
        r = st.duplicate_radius
        if not 0.0 <= r < 1.0:
            raise SettingsError("algorithm.settings.duplicate_radius",
                                "must be at least 0 (off) and below 1, the unit range of a "
                                f"parameter (got {r!r})")
        if r > 0 and (st.mode != "promotion" or st.quantile_rule != "asha_floor"):
            raise SettingsError("algorithm.settings.duplicate_radius",
                                "counts ranks in a rung, so it needs mode 'promotion' and "
                                "quantile_rule 'asha_floor' (set it to 0 for other rules)")
        return float(r)

    def _note_level(self, level: float, value: float, tid: int) -> None:
        best = self._level_best.get(level)
        if best is None or (value, tid) < best:
            self._level_best[level] = (value, tid)

    @staticmethod
    def _bracket_count(value: Any, available: int) -> int:
        if value == "all":
            return available
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= available:
            raise SettingsError(
                "algorithm.settings.brackets",
                f"brackets must be 'all' or a whole number from 1 to {available} "
                f"(max/min resource and eta allow {available}); got {value!r}")
        return value

    # --- asking -----------------------------------------------------------------------------

    def next_jobs(self, free: int) -> list[Job]:
        jobs: list[Job] = []
        while len(jobs) < free and not self._spent():
            job = self._promote() if self.mode == "promotion" else None
            job = job or self._start_trial()
            if job is None:
                break
            self.running[job.trial_id] = job
            self.handed += job.to_resource - job.from_resource
            jobs.append(job)
        return jobs

    def _spent(self) -> bool:
        return self.budget is not None and self.handed >= self.budget

    def _trials_left(self) -> bool:
        return self.max_trials is None or len(self.trials) < self.max_trials

    def _promote(self) -> Job | None:
        found = self._find_promotion()
        if found is None:
            return None
        b, k, tid = found
        self.rungs[b][k].promoted.add(tid)
        trial = self.trials[tid]
        trial.status = "running"
        # Resume from the checkpoint: the trial's real trained resource, not zero.
        return Job(tid, trial.config, trial.trained, self.levels[b + k + 1], bracket=b, rung=k + 1)

    def _find_promotion(self) -> tuple[int, int, int] | None:
        """(bracket, rung, trial) of the promotion ASHA makes now, or None. Rungs are scanned
        from the highest resource level down; at one level the best candidate over all
        brackets wins, ties by trial id."""
        for g in range(len(self.levels) - 2, -1, -1):
            best: tuple[float, int, int, int] | None = None
            for b in range(min(g, self.n_brackets - 1) + 1):
                cand = self._rung_candidate(b, g - b)
                if cand is not None and (best is None or cand < best[:2]):
                    best = (*cand, b, g - b)
            if best is not None:
                return best[2], best[3], best[1]
        return None

    def _rung_candidate(self, b: int, k: int) -> tuple[float, int] | None:
        """The best paused, not-yet-promoted entry of rung k if it is in the rung's top."""
        rung = self.rungs[b][k]
        heap = rung.candidates
        # An entry goes stale for good (promoted, or no longer paused): drop it lazily.
        while heap and (heap[0][1] in rung.promoted
                        or self.trials[heap[0][1]].status != "paused"):
            heapq.heappop(heap)
        if not heap:
            return None
        value, tid = heap[0]
        if self.radius > 0:  # the top 1/eta of distinct configurations (distinct.py)
            ranks = self._distinct.get((b, k))
            if ranks is None:
                ranks = self._distinct[(b, k)] = DistinctRanks()
            rank = ranks.rank(rung.order, rung.order.bisect_left((value, tid)), self._point,
                              self.radius)
            return (value, tid) if rank < len(rung.order) // self.eta else None
        return (value, tid) if in_top_sorted(self.rule, tid, value, rung.order,
                                             self.eta) else None

    def _point(self, tid: int) -> np.ndarray:
        point = self._points.get(tid)
        if point is None:
            point = self._points[tid] = np.array(to_raw(self.space, self.trials[tid].config))
        return point

    def _start_trial(self) -> Job | None:
        if not self._trials_left():
            return None
        tid = len(self.trials)
        b = self.draw_bracket()
        # Stopping mode never pauses: one job to R, cut short by STOP decisions.
        to = self.levels[b] if self.mode == "promotion" else self.max_resource
        config = self.sampler.suggest(SuggestContext(tid, b, 0, to, self._pending()))
        self.trials[tid] = TrialRecord(config=dict(config), bracket=b)
        self._fresh[tid] = None
        return Job(tid, dict(config), 0.0, to, bracket=b, rung=0)

    def draw_bracket(self) -> int:
        """The bracket of a new trial, drawn from the study's own generator."""
        if self.n_brackets == 1:
            return 0
        u = float(self.bracket_rng.random())
        return min(int(np.searchsorted(self._cumulative, u, side="right")), self.n_brackets - 1)

    def _pending(self) -> list[dict[str, Any]]:
        if not self.sampler.uses_pending:
            return []  # a scan of every trial per new trial, for a sampler that ignores it
        return [self.trials[tid].config for tid in self._fresh]

    # --- telling ----------------------------------------------------------------------------

    def on_progress(self, trial_id: int, resource: float, value: float) -> Decision:
        trial = self.trials.get(trial_id)
        if trial is None or trial.status in ("stopping", "ended", "failed"):
            return Decision.STOP if trial is not None else Decision.CONTINUE
        if not math.isfinite(value):
            trial.status = "stopping"  # a diverged trial: stop it and rank it nowhere
            return Decision.STOP
        self._observe(trial_id, trial, resource, value)
        if self._reach(trial_id, trial, resource, value) or self.mode == "promotion":
            return Decision.CONTINUE
        trial.status = "stopping"
        return Decision.STOP

    def _observe(self, tid: int, trial: TrialRecord, resource: float, value: float) -> None:
        if resource > trial.seen:
            trial.seen = resource
            self.sampler.observe(tid, trial.config, resource, value)

    def _reach(self, tid: int, trial: TrialRecord, resource: float, value: float) -> bool:
        """Apply the milestone rule to one report: record it at every milestone of the
        trial's bracket it reaches for the first time (real resource kept). False when the
        stopping rule says stop at one of them (higher ones are then not recorded)."""
        rungs = self.rungs[trial.bracket]
        for k in range(trial.rung + 1, len(rungs)):
            rung = rungs[k]
            if resource < rung.level:
                break
            # The stopping test sees the values recorded before this one.
            stop = self.mode == "stopping" and k < len(rungs) - 1 and not continues_sorted(
                self.rule, rung.order, value, self.eta)
            rung.record(tid, value, resource)
            self._note_level(rung.level, value, tid)
            trial.rung = k
            self._fresh.pop(tid, None)
            # A trial that jumped a rung has left the lower ones: never promote it from there.
            for lower in rungs[:k]:
                if tid in lower.values:
                    lower.promoted.add(tid)
            if stop:
                return False
        return True

    def on_job_end(self, job: Job, outcome: Outcome) -> None:
        self.running.pop(job.trial_id, None)
        self._fresh.pop(job.trial_id, None)
        trial = self.trials.get(job.trial_id)
        if trial is None:
            return
        value = outcome.value
        if outcome.status is not Status.COMPLETED or value is None or not math.isfinite(value):
            # A diverged trial (completed with a non-finite value) is a failure to the sampler.
            self._end(job.trial_id, trial, "failed", Status.FAILED if outcome.status is
                      Status.COMPLETED else outcome.status)
            return
        resource = float(outcome.resource if outcome.resource is not None else job.to_resource)
        trial.trained = max(trial.trained, resource)
        if trial.status == "running":
            self._observe(job.trial_id, trial, resource, value)
            self._reach(job.trial_id, trial, resource, value)
        self.sampler.on_segment(job.trial_id, trial.config, job.from_resource, resource, value,
                                outcome.cost)
        at_milestone = resource >= job.to_resource and trial.rung < len(
            self.rungs[trial.bracket]) - 1
        if self.mode == "promotion" and trial.status == "running" and at_milestone:
            trial.status = "paused"
            rung = self.rungs[trial.bracket][trial.rung]
            heapq.heappush(rung.candidates, (rung.values[job.trial_id], job.trial_id))
        else:
            self._end(job.trial_id, trial, "ended", Status.COMPLETED)

    def _end(self, tid: int, trial: TrialRecord, status: str, why: Status) -> None:
        trial.status = status
        self.sampler.on_trial_end(tid, trial.config, why)

    # --- reading ----------------------------------------------------------------------------

    def rung(self, bracket: int, k: int) -> RungRecord:
        """Rung k (bracket-local) of a bracket, for tests and plots."""
        return self.rungs[bracket][k]

    def done(self) -> bool:
        if self.running:
            return False
        if self._spent():
            return True
        if self._trials_left():
            return False
        return self.mode == "stopping" or self._find_promotion() is None

    def best(self) -> tuple[int, float] | None:
        """The lowest value at the highest resource level any trial has reached (R once any
        trial completes), ties by trial id."""
        if not self._level_best:
            return None
        value, tid = self._level_best[max(self._level_best)]
        return tid, value

    def adopt_config(self, trial_id: int, config: Mapping[str, Any]) -> bool:
        self.trials[trial_id].config = dict(config)
        self._points.pop(trial_id, None)  # its unit point is read again from the new one
        self.sampler.adopt_config(trial_id, config)
        return True

    def plan(self) -> Plan:
        """Expected rung sizes: max_trials split by the bracket distribution, then 1/eta per
        rung (asynchronous promotion may differ a little, stopping keeps the same shape)."""
        brackets: list[Bracket] = []
        for s, p in enumerate(self.probabilities):
            levels = self.levels[s:]
            n0 = self._expected_trials() * p
            rungs = tuple(Rung(int(math.floor(n0 / self.eta**k + 1e-9)), r)
                          for k, r in enumerate(levels))
            brackets.append(Bracket(s, rungs))
        total = sum(b.budget for b in brackets)
        incremental = sum(
            r.n * (r.r - (b.rungs[k - 1].r if k else 0.0))
            for b in brackets for k, r in enumerate(b.rungs))
        return Plan(
            brackets=tuple(brackets), total_resource=total, incremental_resource=incremental,
            max_trials=self.max_trials,
            notes=(f"{self.mode} mode, {self.rule} rule: rung sizes are expected values",),
        )

    def _expected_trials(self) -> float:
        """max_trials, or under a budget alone the trials it pays for at the expected
        incremental resource per trial (1/eta of a rung's trials go on to the next)."""
        if self.max_trials is not None or self.budget is None:
            return float(self.max_trials or 0)
        per_trial = 0.0
        for s, p in enumerate(self.probabilities):
            levels = [0.0, *self.levels[s:]]
            per_trial += p * sum((levels[k + 1] - levels[k]) / self.eta**k
                                 for k in range(len(levels) - 1))
        return self.budget / per_trial


class AsyncHyperband(ASHA):
    """Asynchronous Hyperband: ASHA over every bracket s = 0 .. s_max."""

    name = "async-hyperband"
    default_brackets = "all"


register_algorithm("asha")(ASHA)
register_algorithm("async-hyperband")(AsyncHyperband)


__all__ = ["ASHA", "AsyncHyperband", "bracket_probabilities", "continues", "in_top",
           "largest_s", "ray_cutoff", "rung_levels", "to_fraction"]
