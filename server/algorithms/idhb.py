"""Iterative-deepening Hyperband (ID-HB, Brandt, Wever, Iliadis, Bengs, Hüllermeier, 2023).

Runs synchronous Hyperband (the paper's Algorithm 1 arithmetic, exact) with maximum resource R.
Once that run is complete, :meth:`IDHyperband.raise_max_resource` multiplies R by eta and the
study continues as Hyperband(eta*R), reusing every (trial, resource) result already paid for
(Brandt et al., "Iterative Deepening Hyperband", 2023):

* every old bracket keeps its first rung r_min and gets one more round (s -> s+1), a new s=0
  bracket starts at the new R; the bracket set is exactly that of Hyperband(eta*R);
* each bracket is topped up with n(eta*R) - |old trials| new trials from the bracket's own
  sampler stream (keyed by r_min, so it draws what a fresh Hyperband(eta*R) would draw);
* successive halving reruns from round 0 over old plus new trials; a (trial, rung) result in
  the cache is never requested again, and a trial that needs a higher rung resumes from its
  checkpoint (a job from its trained resource).

The ``variant`` setting decides how the earlier run's promotions are treated in each round
(k = floor(|list| / eta) survivors):

* ``efficient`` (eID, default): a trial already evaluated at the next rung is promoted
  automatically; the rest of the k slots go to the best of the others. No paid evaluation is
  wasted; the total cost equals Hyperband(eta*R)'s under no-reuse accounting.
* ``preserving`` (pID): trials of the bracket that have a result at this rung but were dropped
  by the new ranking compete again; the top k of the extended list survive.
* ``discarding`` (dID): plain successive halving over the list; selects exactly what a fresh
  Hyperband(eta*R) selects on the same configurations.

Automatic deepening: with ``auto_raise_threshold`` set, a complete run raises R by itself while
the incumbent still improves between the two highest rungs (the best trial at R against its own
result at R/eta) by more than that relative amount, as long as eta*R stays within
``max_resource_ceiling`` (required then; it does not limit explicit raises).

Failed or lost trials rank last (+inf) and are never re-run. Brackets run side by side, so no
worker waits for another bracket's rung.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal, get_args

from .base import (
    Algorithm,
    Capability,
    Context,
    Decision,
    Job,
    Outcome,
    Plan,
    PreconditionError,
    Sampler,
    SettingsError,
    Status,
    SuggestContext,
    register_algorithm,
    rng_for,
)
from .hb_math import (
    bracket_size,
    hyperband_table,
    largest_s,
    rank,
    table_cost,
    to_fraction,
)
from .persist import Persistent, decode, record
from .samplers import make_sampler, sampler_options
from .settings import parse

Variant = Literal["efficient", "preserving", "discarding"]
VARIANTS = get_args(Variant)


@dataclass(frozen=True)
class IDHBSettings:
    """``algorithm.settings`` of idhb (see the module docstring)."""

    variant: Variant = "efficient"
    sampler: str = "random"
    auto_raise_threshold: float | None = None
    max_resource_ceiling: float | None = None
_SAMPLER_STREAM = 2  # rng_for path tag of the per-bracket sampler streams


# --- synchronous Hyperband arithmetic (paper convention, exact) ---------------------------


# --- state --------------------------------------------------------------------------------


@record
@dataclass
class IDTrial:
    """One configuration. ``values[i]`` is its loss at rung i of its bracket; successive
    halving trains in order, so the cache of a trial is always a prefix."""

    config: dict[str, Any]
    bracket: int
    values: list[float] = field(default_factory=list)
    failed: bool = False
    trained: float = 0.0  # the real resource its checkpoint holds
    seen: float = -1.0  # the last resource the samplers were told about


@record
@dataclass
class SHBracket:
    """One successive-halving bracket across raises. ``pool`` is every trial it ever started
    (the reference code's ``old_candidates``); ``current`` the list of the running round;
    ``selections`` the survivors of each round of the current run."""

    s: int
    r_min: Fraction
    pool: list[int] = field(default_factory=list)
    to_sample: int = 0
    round: int = 0
    current: list[int] = field(default_factory=list)
    done: bool = False
    selections: list[list[int]] = field(default_factory=list)

    def level(self, i: int, eta: int) -> Fraction:
        return self.r_min * eta**i


class IDHyperband(Persistent, Algorithm):
    """Iterative-deepening Hyperband; see the module docstring."""

    saved = ("R", "s_max", "raises", "auto_raises", "paid_full", "paid_incremental", "trials",
             "running", "brackets")
    state_version = 2

    name = "idhb"
    capabilities = frozenset({Capability.DEEPENING})

    def __init__(self, ctx: Context) -> None:
        st = parse(IDHBSettings, ctx.settings, passthrough=sampler_options(ctx.settings))
        self.ctx = ctx
        self.variant = st.variant
        self.eta = int(ctx.resource.eta)
        self.r_min = to_fraction(ctx.resource.min_resource)
        self.R = to_fraction(ctx.resource.max_resource)
        self.threshold, self.ceiling = self._auto_settings(st)
        self.s_max = largest_s(self.r_min, self.R, self.eta)
        self.trials: dict[int, IDTrial] = {}
        self.running: dict[int, Job] = {}
        self.brackets: list[SHBracket] = []
        self.samplers: list[Sampler] = []
        self.raises = 0
        self.auto_raises = 0
        self.paid_full = 0.0  # every evaluation charged its full resource (the papers' unit)
        self.paid_incremental = 0.0  # what was trained, resuming from checkpoints
        self._level_best: dict[Fraction, tuple[float, int]] = {}
        self._unvalued: dict[int, None] = {}
        self._dropped: list[int] = []
        self._todo: list[list[tuple[int, int]]] = []
        self._outstanding: list[int] = []
        for s in range(self.s_max, -1, -1):
            self._add_bracket(s, self.R / self.eta**s)

    def _derive(self) -> None:
        """Indexes derived from the saved state (rebuilt by ``restore``), so that no answer
        scans every trial: the best (value, trial) per resource level, the trials waiting for
        their first result (the samplers' pending list, in id order), and per bracket the
        round's members still to hand out and the count of results the round waits for."""
        self._level_best = {}
        self._unvalued = {}
        self._dropped = []  # trials the latest job end (or raise) finished
        for tid, trial in self.trials.items():
            br = self.brackets[trial.bracket]
            for i, v in enumerate(trial.values):
                self._note_level(br.level(i, self.eta), v, tid)
            if not trial.values and not trial.failed and not br.done:
                self._unvalued[tid] = None
        self._todo, self._outstanding = [], []
        for j in range(len(self.brackets)):
            self._todo.append([])
            self._outstanding.append(0)
            self._open_round(j)

    def _open_round(self, j: int) -> None:
        """Index bracket j's current round: who needs a job (a heap by place in the list, so
        they go out in list order) and how many results are outstanding."""
        br = self.brackets[j]
        needing = [(i, t) for i, t in enumerate(br.current) if self._needs(t, br.round)]
        self._outstanding[j] = len(needing)
        self._todo[j] = [(i, t) for i, t in needing if t not in self.running]
        heapq.heapify(self._todo[j])

    def _note_level(self, level: Fraction, value: float, tid: int) -> None:
        best = self._level_best.get(level)
        if best is None or (value, tid) < best:
            self._level_best[level] = (value, tid)

    def _auto_settings(self, st: IDHBSettings) -> tuple[float | None, float | None]:
        threshold, ceiling = st.auto_raise_threshold, st.max_resource_ceiling
        if threshold is not None and not threshold >= 0:
            raise SettingsError("algorithm.settings.auto_raise_threshold",
                                f"must be a number >= 0 (a relative improvement); got "
                                f"{threshold!r}")
        if ceiling is not None and not ceiling >= float(self.R):
            raise SettingsError("algorithm.settings.max_resource_ceiling",
                                f"must be a number >= max_resource ({float(self.R):g}); got "
                                f"{ceiling!r}")
        if threshold is not None and ceiling is None:
            raise SettingsError("algorithm.settings.max_resource_ceiling",
                                "auto_raise_threshold needs a ceiling: set max_resource_ceiling "
                                "to the largest maximum resource the study may reach")
        return (None if threshold is None else float(threshold),
                None if ceiling is None else float(ceiling))

    def _add_bracket(self, s: int, r_min: Fraction) -> None:
        br = SHBracket(s=s, r_min=r_min, to_sample=bracket_size(self.s_max, s, self.eta))
        self.brackets.append(br)
        self.samplers.append(self._sampler_for(r_min))
        self._todo.append([])
        self._outstanding.append(0)

    def _sampler_for(self, r_min: Fraction) -> Sampler:
        """A sampler on the bracket's own stream, keyed by r_min as the reference code does:
        the bracket draws the same first configurations as a fresh Hyperband(eta*R)."""
        sampler = make_sampler(
            self.ctx, rng_for(self.ctx.seed, _SAMPLER_STREAM, r_min.numerator, r_min.denominator))
        # A bracket added by a raise learns what the study already knows (model samplers).
        for tid, trial in self.trials.items():
            br = self.brackets[trial.bracket]
            for i, v in enumerate(trial.values):
                sampler.observe(tid, trial.config, float(br.level(i, self.eta)), v)
        return sampler

    @property
    def max_resource(self) -> float:
        return float(self.R)

    # --- asking -----------------------------------------------------------------------------

    def next_jobs(self, free: int) -> list[Job]:
        jobs: list[Job] = []
        for j, br in enumerate(self.brackets):
            if br.done:
                continue
            todo = self._todo[j]
            while todo and len(jobs) < free:
                _, tid = heapq.heappop(todo)
                jobs.append(self._job(j, tid))
            if len(jobs) >= free:
                return jobs
            while br.round == 0 and br.to_sample > 0 and len(jobs) < free:
                jobs.append(self._job(j, self._new_trial(j)))
        return jobs

    def _needs(self, tid: int, i: int) -> bool:
        trial = self.trials[tid]
        return not trial.failed and len(trial.values) <= i

    def adopt_config(self, trial_id: int, config: Mapping[str, Any]) -> bool:
        trial = self.trials[trial_id]
        trial.config = dict(config)
        self.samplers[trial.bracket].adopt_config(trial_id, config)
        return True

    def _new_trial(self, j: int) -> int:
        br = self.brackets[j]
        tid = len(self.trials)
        sampler = self.samplers[j]
        pending = ([self.trials[t].config for t in self._unvalued]
                   if sampler.uses_pending else [])
        ctx = SuggestContext(tid, br.s, 0, float(br.level(0, self.eta)), pending)
        config = dict(sampler.suggest(ctx))
        self.trials[tid] = IDTrial(config=config, bracket=j)
        self._unvalued[tid] = None
        br.pool.append(tid)
        br.current.append(tid)
        br.to_sample -= 1
        self._outstanding[j] += 1
        return tid

    def _job(self, j: int, tid: int) -> Job:
        br, trial = self.brackets[j], self.trials[tid]
        level = float(br.level(br.round, self.eta))
        # Resume from the checkpoint at the trial's trained resource, never from zero.
        job = Job(tid, trial.config, trial.trained, level, bracket=j, rung=br.round)
        self.running[tid] = job
        return job

    # --- telling ----------------------------------------------------------------------------

    def on_progress(self, trial_id: int, resource: float, value: float) -> Decision:
        trial = self.trials.get(trial_id)
        if trial is not None and math.isfinite(value):
            self._observe(trial_id, trial, resource, value)
        return Decision.CONTINUE  # a synchronous job is bounded: it ends at its rung

    def _observe(self, tid: int, trial: IDTrial, resource: float, value: float) -> None:
        if resource > trial.seen:
            trial.seen = resource
            for sampler in self.samplers:
                sampler.observe(tid, trial.config, resource, value)

    def on_job_end(self, job: Job, outcome: Outcome) -> None:
        self._dropped = []
        was_running = self.running.pop(job.trial_id, None) is not None
        trial = self.trials.get(job.trial_id)
        if trial is None or job.rung != len(trial.values) or trial.failed:
            self._requeue(job.trial_id, was_running)
            return  # not a job of ours, or a stale one: nothing to record
        br = self.brackets[trial.bracket]
        if br.round == len(trial.values) and not br.done:
            self._outstanding[trial.bracket] -= 1  # the round gets this result (or failure)
        self._unvalued.pop(job.trial_id, None)
        value = outcome.value
        if outcome.status is Status.COMPLETED and value is not None and math.isfinite(value):
            resource = float(outcome.resource if outcome.resource is not None
                             else job.to_resource)
            self._observe(job.trial_id, trial, resource, value)
            trial.values.append(float(value))
            for sampler in self.samplers:  # the hook every scheduler calls, after the point
                sampler.on_segment(job.trial_id, trial.config, job.from_resource, resource,
                                   float(value), outcome.cost)
            self._note_level(br.level(len(trial.values) - 1, self.eta), float(value),
                             job.trial_id)
            trial.trained = max(trial.trained, resource)
            self.paid_full += job.to_resource
            self.paid_incremental += resource - job.from_resource
        else:
            trial.failed = True
            self._trial_end(job.trial_id, Status.LOST if outcome.status is Status.LOST
                            else Status.FAILED)
        self._advance(trial.bracket)
        if self._should_auto_raise():
            self.auto_raises += 1
            self._raise()

    def _requeue(self, tid: int, was_running: bool) -> None:
        """A job ended without a result for its round: its trial, if still needed there, goes
        back to the round's queue at its place in the list."""
        trial = self.trials.get(tid)
        if trial is None or not was_running:
            return
        j = trial.bracket
        br = self.brackets[j]
        if not br.done and tid in br.current and self._needs(tid, br.round):
            heapq.heappush(self._todo[j], (br.current.index(tid), tid))

    def _trial_end(self, tid: int, why: Status) -> None:
        for sampler in self.samplers:
            sampler.on_trial_end(tid, self.trials[tid].config, why)

    # --- successive halving -----------------------------------------------------------------

    def _advance(self, j: int) -> None:
        """Close every round of bracket j whose results are all in; after a raise several
        rounds can close at once from the cache, without a job."""
        br = self.brackets[j]
        while not br.done and self._round_complete(j):
            if br.round == br.s:
                br.done = True
                ended = br.current
            else:
                survivors = self._select(br)
                br.selections.append(survivors)
                kept = set(survivors)
                ended = [t for t in br.current if t not in kept]
                br.current, br.round = survivors, br.round + 1
                self._open_round(j)
            for tid in ended:
                if not self.trials[tid].failed:
                    self._trial_end(tid, Status.COMPLETED)
                    self._dropped.append(tid)

    def _round_complete(self, j: int) -> bool:
        br = self.brackets[j]
        if br.round == 0 and br.to_sample > 0:
            return False
        return self._outstanding[j] == 0

    def _loss(self, tid: int, i: int) -> float:
        values = self.trials[tid].values
        return values[i] if i < len(values) else math.inf  # failed trials rank last

    def _select(self, br: SHBracket) -> list[int]:
        """The survivors of round ``br.round`` under the study's variant (reference code's
        EfficientSuccessiveHalving / ConservativeSuccessiveHalving(strict))."""
        i, k = br.round, len(br.current) // self.eta

        def ranked(tids: list[int]) -> list[int]:
            return rank({t: self._loss(t, i) for t in tids})

        if self.variant == "efficient":
            auto = [t for t in br.current if len(self.trials[t].values) > i + 1]
            rest = ranked([t for t in br.current if len(self.trials[t].values) <= i + 1])
            return auto + rest[:max(0, k - len(auto))]
        candidates = list(br.current)
        if self.variant == "preserving":
            listed = set(br.current)
            candidates += [t for t in br.pool
                           if t not in listed and len(self.trials[t].values) > i]
        return ranked(candidates)[:k]

    # --- deepening --------------------------------------------------------------------------

    def run_complete(self) -> bool:
        """True when every bracket of the current Hyperband run has finished."""
        return not self.running and all(br.done for br in self.brackets)

    def raise_max_resource(self) -> None:
        """R -> eta*R, once the current run is complete; the study then continues as
        Hyperband(eta*R) over the cached results (PreconditionError before that)."""
        if not self.run_complete():
            busy = sum(not br.done for br in self.brackets)
            raise PreconditionError(
                f"the Hyperband run with max resource {float(self.R):g} is not complete "
                f"({busy} of {len(self.brackets)} brackets and {len(self.running)} jobs still "
                "running); raise the maximum resource once the study has finished this run")
        self.raises += 1
        self._raise()

    def _raise(self) -> None:
        self._dropped = []
        self.R *= self.eta
        self.s_max += 1
        for br in self.brackets:
            br.s += 1  # same first rung, one more round, ending at the new R
            br.to_sample = max(0, bracket_size(self.s_max, br.s, self.eta) - len(br.pool))
            br.round, br.current, br.done, br.selections = 0, list(br.pool), False, []
        self._add_bracket(0, self.R)
        for j in range(len(self.brackets)):
            self._open_round(j)
            self._advance(j)

    def improvement(self) -> float | None:
        """Relative improvement of the incumbent between the two highest rungs: among the
        trials with results at both R/eta and R, the best at R against its own value at R/eta.
        Comparing one trial's two results measures what more resource bought, not what more
        sampling found. None while no trial has both."""
        both = [(at_top, below, tid) for tid in self.trials
                if (at_top := self._value_at(tid, self.R)) is not None
                and (below := self._value_at(tid, self.R / self.eta)) is not None]
        if not both:
            return None
        at_top, below, _ = min(both)
        return (below - at_top) / max(abs(below), 1e-12)

    def _value_at(self, tid: int, level: Fraction) -> float | None:
        trial = self.trials[tid]
        br = self.brackets[trial.bracket]
        for i, v in enumerate(trial.values):
            if br.level(i, self.eta) == level:
                return v
        return None

    def _should_auto_raise(self) -> bool:
        if self.threshold is None or self.ceiling is None or not self.run_complete():
            return False
        gain = self.improvement()
        return (gain is not None and gain > self.threshold
                and float(self.R * self.eta) <= self.ceiling)

    # --- reading ----------------------------------------------------------------------------

    def finalized(self) -> list[int]:
        return list(self._dropped)

    def best(self) -> tuple[int, float] | None:
        """The lowest value at the highest resource level reached (R once any trial has
        completed the current run), ties by trial id."""
        if not self._level_best:
            return None
        value, tid = self._level_best[max(self._level_best)]
        return tid, value

    def plan(self) -> Plan:
        brackets = hyperband_table(self.R, self.r_min, self.eta)
        full, incremental = table_cost(brackets)
        return Plan(
            brackets=tuple(brackets), total_resource=full, incremental_resource=incremental,
            max_trials=sum(b.rungs[0].n for b in brackets),
            notes=(f"Hyperband with max resource {float(self.R):g} after {self.raises} raise(s) "
                   f"and {self.auto_raises} automatic one(s); variant {self.variant}: results "
                   "already paid for are reused, so a raised run trains less than this plan",),
        )

    def done(self) -> bool:
        return self.run_complete()

    def state(self) -> dict[str, Any]:
        # One sampler per bracket, and a raise adds brackets: saved beside the rest.
        return {**super().state(), "samplers": [s.state() for s in self.samplers]}

    def restore(self, state: Mapping[str, Any]) -> None:
        if state.get("version") == self.state_version:  # else the base class says why not
            samplers = []
            for br, saved in zip(decode(state["brackets"]), state["samplers"], strict=True):
                sampler = make_sampler(self.ctx, rng_for(
                    self.ctx.seed, _SAMPLER_STREAM, br.r_min.numerator, br.r_min.denominator))
                sampler.restore(saved)
                samplers.append(sampler)
            self.samplers = samplers
        super().restore(state)


register_algorithm("idhb")(IDHyperband)


__all__ = ["IDHyperband", "bracket_size", "hyperband_table", "table_cost"]
