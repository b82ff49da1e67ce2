"""ID-HB as it was before its indexes (every round check and job hand-out a scan of the
bracket's list, the incumbent a scan of every trial), kept verbatim as the reference that
``test_idhb_equivalence.py`` compares the indexed scheduler with. Not registered."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from hpod.server.algorithms.asha import largest_s, to_fraction
from hpod.server.algorithms.base import (
    Algorithm,
    Bracket,
    Context,
    Decision,
    Job,
    Outcome,
    Plan,
    PreconditionError,
    Rung,
    Sampler,
    SettingsError,
    Status,
    SuggestContext,
    check_settings,
    rng_for,
)
from hpod.server.algorithms.samplers import make_sampler

VARIANTS = ("efficient", "preserving", "discarding")
SETTINGS = ("variant", "sampler", "auto_raise_threshold", "max_resource_ceiling")
_SAMPLER_STREAM = 2  # rng_for path tag of the per-bracket sampler streams


# --- synchronous Hyperband arithmetic (paper convention, exact) ---------------------------


def bracket_size(s_max: int, s: int, eta: int) -> int:
    """n = ceil((B/R) * eta**s / (s+1)) with B/R = s_max+1, in integers."""
    return -(-((s_max + 1) * eta**s) // (s + 1))


def hyperband_table(max_resource: Fraction, r_min: Fraction, eta: int) -> list[Bracket]:
    """Hyperband(R, eta)'s brackets, s = s_max .. 0: n_i = floor(n / eta**i) configurations
    at r_i = R * eta**(i-s)."""
    s_max = largest_s(r_min, max_resource, eta)
    brackets: list[Bracket] = []
    for s in range(s_max, -1, -1):
        n = bracket_size(s_max, s, eta)
        rungs = tuple(Rung(n // eta**i, float(max_resource / eta ** (s - i)))
                      for i in range(s + 1))
        brackets.append(Bracket(s, rungs))
    return brackets


def table_cost(brackets: list[Bracket]) -> tuple[float, float]:
    """(no-reuse cost, checkpoint-resume cost) of a bracket table."""
    full = sum(b.budget for b in brackets)
    incremental = sum(r.n * (r.r - (b.rungs[i - 1].r if i else 0.0))
                      for b in brackets for i, r in enumerate(b.rungs))
    return full, incremental


# --- state --------------------------------------------------------------------------------


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

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


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

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["r_min"] = str(self.r_min)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SHBracket:
        return cls(**{**d, "r_min": Fraction(d["r_min"])})


class ReferenceIDHyperband(Algorithm):
    """Iterative-deepening Hyperband; see the module docstring."""

    name = "idhb"

    def __init__(self, ctx: Context) -> None:
        st = ctx.settings
        check_settings(st, SETTINGS, self.name)
        self.ctx = ctx
        self.variant = str(st.get("variant", "efficient"))
        if self.variant not in VARIANTS:
            raise SettingsError("algorithm.settings.variant",
                                f"{self.variant!r} is not one of {list(VARIANTS)}")
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
        for s in range(self.s_max, -1, -1):
            self._add_bracket(s, self.R / self.eta**s)

    def _auto_settings(self, st: Mapping[str, Any]) -> tuple[float | None, float | None]:
        threshold, ceiling = st.get("auto_raise_threshold"), st.get("max_resource_ceiling")
        if threshold is not None and (not isinstance(threshold, (int, float))
                                      or not threshold >= 0):
            raise SettingsError("algorithm.settings.auto_raise_threshold",
                                f"must be a number >= 0 (a relative improvement); got "
                                f"{threshold!r}")
        if ceiling is not None and (not isinstance(ceiling, (int, float))
                                    or not ceiling >= float(self.R)):
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
            for tid in br.current:
                if len(jobs) >= free:
                    return jobs
                if tid not in self.running and self._needs(tid, br.round):
                    jobs.append(self._job(j, tid))
            while br.round == 0 and br.to_sample > 0 and len(jobs) < free:
                jobs.append(self._job(j, self._new_trial(j)))
        return jobs

    def _needs(self, tid: int, i: int) -> bool:
        trial = self.trials[tid]
        return not trial.failed and len(trial.values) <= i

    def _new_trial(self, j: int) -> int:
        br = self.brackets[j]
        tid = len(self.trials)
        pending = [t.config for t in self.trials.values() if not t.values and not t.failed
                   and not self.brackets[t.bracket].done]
        ctx = SuggestContext(tid, br.s, 0, float(br.level(0, self.eta)), pending)
        config = dict(self.samplers[j].suggest(ctx))
        self.trials[tid] = IDTrial(config=config, bracket=j)
        br.pool.append(tid)
        br.current.append(tid)
        br.to_sample -= 1
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
        self.running.pop(job.trial_id, None)
        trial = self.trials.get(job.trial_id)
        if trial is None or job.rung != len(trial.values) or trial.failed:
            return  # not a job of ours, or a stale one: nothing to record
        value = outcome.value
        if outcome.status is Status.COMPLETED and value is not None and math.isfinite(value):
            resource = float(outcome.resource if outcome.resource is not None
                             else job.to_resource)
            self._observe(job.trial_id, trial, resource, value)
            trial.values.append(float(value))
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

    def _trial_end(self, tid: int, why: Status) -> None:
        for sampler in self.samplers:
            sampler.on_trial_end(tid, self.trials[tid].config, why)

    # --- successive halving -----------------------------------------------------------------

    def _advance(self, j: int) -> None:
        """Close every round of bracket j whose results are all in; after a raise several
        rounds can close at once from the cache, without a job."""
        br = self.brackets[j]
        while not br.done and self._round_complete(br):
            if br.round == br.s:
                br.done = True
                ended = br.current
            else:
                survivors = self._select(br)
                br.selections.append(survivors)
                kept = set(survivors)
                ended = [t for t in br.current if t not in kept]
                br.current, br.round = survivors, br.round + 1
            for tid in ended:
                if not self.trials[tid].failed:
                    self._trial_end(tid, Status.COMPLETED)

    def _round_complete(self, br: SHBracket) -> bool:
        if br.round == 0 and br.to_sample > 0:
            return False
        return all(t not in self.running and not self._needs(t, br.round) for t in br.current)

    def _loss(self, tid: int, i: int) -> float:
        values = self.trials[tid].values
        return values[i] if i < len(values) else math.inf  # failed trials rank last

    def _select(self, br: SHBracket) -> list[int]:
        """The survivors of round ``br.round`` under the study's variant (reference code's
        EfficientSuccessiveHalving / ConservativeSuccessiveHalving(strict))."""
        i, k = br.round, len(br.current) // self.eta

        def rank(tids: list[int]) -> list[int]:
            return sorted(tids, key=lambda t: (self._loss(t, i), t))

        if self.variant == "efficient":
            auto = [t for t in br.current if len(self.trials[t].values) > i + 1]
            rest = rank([t for t in br.current if len(self.trials[t].values) <= i + 1])
            return auto + rest[:max(0, k - len(auto))]
        candidates = list(br.current)
        if self.variant == "preserving":
            listed = set(br.current)
            candidates += [t for t in br.pool
                           if t not in listed and len(self.trials[t].values) > i]
        return rank(candidates)[:k]

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
        self.R *= self.eta
        self.s_max += 1
        for br in self.brackets:
            br.s += 1  # same first rung, one more round, ending at the new R
            br.to_sample = max(0, bracket_size(self.s_max, br.s, self.eta) - len(br.pool))
            br.round, br.current, br.done, br.selections = 0, list(br.pool), False, []
        self._add_bracket(0, self.R)
        for j in range(len(self.brackets)):
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

    def _levels(self) -> dict[Fraction, tuple[float, int]]:
        """Best (value, trial) at each resource level any trial reached."""
        best: dict[Fraction, tuple[float, int]] = {}
        for tid, trial in self.trials.items():
            br = self.brackets[trial.bracket]
            for i, v in enumerate(trial.values):
                level = br.level(i, self.eta)
                if level not in best or (v, tid) < best[level]:
                    best[level] = (v, tid)
        return best

    # --- reading ----------------------------------------------------------------------------

    def best(self) -> tuple[int, float] | None:
        """The lowest value at the highest resource level reached (R once any trial has
        completed the current run), ties by trial id."""
        levels = self._levels()
        if not levels:
            return None
        value, tid = levels[max(levels)]
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
        return {
            "version": 1,
            "R": str(self.R),
            "s_max": self.s_max,
            "raises": self.raises,
            "auto_raises": self.auto_raises,
            "paid_full": self.paid_full,
            "paid_incremental": self.paid_incremental,
            "trials": {str(t): tr.to_dict() for t, tr in self.trials.items()},
            "running": {str(t): j.to_dict() for t, j in self.running.items()},
            "brackets": [br.to_dict() for br in self.brackets],
            "samplers": [s.state() for s in self.samplers],
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        if state.get("version") != 1:
            raise ValueError(f"unknown {self.name} state version {state.get('version')!r}")
        self.R, self.s_max = Fraction(state["R"]), int(state["s_max"])
        self.raises, self.auto_raises = int(state["raises"]), int(state["auto_raises"])
        self.paid_full = float(state["paid_full"])
        self.paid_incremental = float(state["paid_incremental"])
        self.trials = {int(t): IDTrial(**d) for t, d in state["trials"].items()}
        self.running = {int(t): Job.from_dict(d) for t, d in state["running"].items()}
        self.brackets = [SHBracket.from_dict(d) for d in state["brackets"]]
        self.samplers = []
        for br, saved in zip(self.brackets, state["samplers"], strict=True):
            sampler = make_sampler(self.ctx, rng_for(self.ctx.seed, _SAMPLER_STREAM,
                                                     br.r_min.numerator, br.r_min.denominator))
            sampler.restore(saved)
            self.samplers.append(sampler)
