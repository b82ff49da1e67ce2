"""Today's ASHA, kept verbatim as a straightforward reference: every promotion decision is a
scan of the rung (candidates, then the quantile test over all recorded values). The fast
scheduler in ``server/algorithms/asha.py`` must make exactly the same decisions; see
``test_scheduler_equivalence.py``. Not registered: built directly by the tests."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np
from hpod.server.algorithms.base import (
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
    check_settings,
    rng_for,
    rng_restore,
    rng_state,
)
from hpod.server.algorithms.samplers import make_sampler

MODES = ("promotion", "stopping")
QUANTILE_RULES = ("asha_floor", "linear_quantile", "ray_percentile")
DISTRIBUTIONS = ("sync_proportional", "softmax_rungs")
SETTINGS = ("mode", "quantile_rule", "brackets", "bracket_distribution", "sampler")


# --- exact resource arithmetic ------------------------------------------------------------


def to_fraction(x: float) -> Fraction:
    """The exact rational a user meant: repr() turns 0.1 into 1/10, not its binary double."""
    return Fraction(repr(float(x)))


def largest_s(r_min: Fraction, max_resource: Fraction, eta: int) -> int:
    """The largest s with r_min * eta**s <= R, exactly (a float log gives 4 for R=243, eta=3)."""
    s = 0
    while r_min * eta ** (s + 1) <= max_resource:
        s += 1
    return s


def rung_levels(r_min: Fraction, max_resource: Fraction, eta: int) -> list[float]:
    """Milestones r_min * eta**k strictly below R, then R, so every trial can end at R."""
    levels: list[float] = []
    k = 0
    while r_min * eta**k < max_resource:
        levels.append(float(r_min * eta**k))
        k += 1
    return [*levels, float(max_resource)]


def bracket_probabilities(kind: str, r_min: Fraction, max_resource: Fraction, eta: int,
                          n_brackets: int) -> list[float]:
    """P(new trial goes to bracket s) for s = 0 .. n_brackets-1 (reference §1.5).

    ``sync_proportional`` (Syne Tune): P(s) ∝ n / ((n - s) * r_s), r_s the bracket's first rung,
    i.e. proportional to the synchronous Hyperband bracket sizes. ``softmax_rungs`` (Ray):
    softmax over the number of rungs of each bracket.
    """
    if kind == "sync_proportional":
        n = n_brackets
        weights = [Fraction(n, n - s) / (r_min * eta**s) for s in range(n)]
        total = sum(weights)
        return [float(w / total) for w in weights]
    sizes = [len(rung_levels(r_min, max_resource, eta)) - s for s in range(n_brackets)]
    top = max(sizes)
    exps = [math.exp(x - top) for x in sizes]
    return [e / sum(exps) for e in exps]


# --- the three quantile rules -------------------------------------------------------------


def in_top(rule: str, tid: int, value: float, rung: Mapping[int, float], eta: int) -> bool:
    """Promotion test: is entry (tid, value) of ``rung`` (all recorded values, itself included)
    in the rung's top 1/eta?

    ``asha_floor`` (the paper): among the floor(n/eta) best, ties by trial id, so nothing leaves
    a rung before it holds eta entries. ``linear_quantile`` (Syne Tune): value <= the linear
    1/eta quantile, from 2 entries on. ``ray_percentile``: value <= the 100/eta percentile of the
    other entries (Ray's cutoff, in lower-is-better space).
    """
    if rule == "asha_floor":
        better = sum(1 for t, v in rung.items() if (v, t) < (value, tid))
        return better < len(rung) // eta
    if len(rung) < 2:
        return False
    if rule == "linear_quantile":
        return value <= float(np.quantile(list(rung.values()), 1.0 / eta))
    others = [v for t, v in rung.items() if t != tid]
    return value <= ray_cutoff(others, eta)


def ray_cutoff(previous: Sequence[float], eta: int) -> float:
    """Ray's cutoff in lower-is-better space: the 100/eta percentile of the earlier values
    (Ray takes the (1 - 1/eta) percentile of rewards; negating mirrors the percentile)."""
    return float(np.percentile(list(previous), 100.0 / eta))


def continues(rule: str, previous: Sequence[float], value: float, eta: int) -> bool:
    """Stopping test for a trial reaching a milestone with ``value``, given the values the
    milestone recorded before it. The first arrival always continues under every rule:
    ``asha_floor`` keeps max(1, floor(n/eta)) as Optuna does, ``linear_quantile`` needs 2
    entries as Syne Tune does, ``ray_percentile`` needs a previous value as Ray does."""
    if rule == "ray_percentile":
        return not previous or value <= ray_cutoff(previous, eta)
    values = [*previous, value]
    if rule == "linear_quantile":
        return len(values) < 2 or value <= float(np.quantile(values, 1.0 / eta))
    keep = max(1, len(values) // eta)
    return value <= sorted(values)[keep - 1]


# --- state --------------------------------------------------------------------------------


@dataclass
class RungRecord:
    """What one milestone of one bracket has seen: value and real resource per trial."""

    level: float
    values: dict[int, float] = field(default_factory=dict)
    resources: dict[int, float] = field(default_factory=dict)
    promoted: set[int] = field(default_factory=set)

    def to_dict(self) -> dict[str, Any]:
        return {
            "values": {str(t): v for t, v in self.values.items()},
            "resources": {str(t): r for t, r in self.resources.items()},
            "promoted": sorted(self.promoted),
        }

    def load(self, d: Mapping[str, Any]) -> None:
        self.values = {int(t): float(v) for t, v in d["values"].items()}
        self.resources = {int(t): float(r) for t, r in d["resources"].items()}
        self.promoted = {int(t) for t in d["promoted"]}


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

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _choice(settings: Mapping[str, Any], key: str, allowed: Sequence[str]) -> str:
    value = str(settings.get(key, allowed[0]))
    if value not in allowed:
        raise SettingsError(f"algorithm.settings.{key}",
                            f"{value!r} is not one of {list(allowed)}")
    return value


class ReferenceASHA(Algorithm):
    """ASHA with ``brackets`` brackets (default 1); see the module docstring."""

    name = "asha"
    default_brackets: int | str = 1

    def __init__(self, ctx: Context) -> None:
        st = ctx.settings
        check_settings(st, SETTINGS, self.name)
        self.mode = _choice(st, "mode", MODES)
        self.rule = _choice(st, "quantile_rule", QUANTILE_RULES)
        self.distribution = _choice(st, "bracket_distribution", DISTRIBUTIONS)
        if not ctx.max_trials or ctx.max_trials < 1:
            raise SettingsError(
                "max_trials", f"{self.name} needs max_trials >= 1 (how many trials to start)")
        self.max_trials = int(ctx.max_trials)
        self.eta = int(ctx.resource.eta)
        r_min = to_fraction(ctx.resource.min_resource)
        top = to_fraction(ctx.resource.max_resource)
        self.max_resource = float(top)
        self.levels = rung_levels(r_min, top, self.eta)
        self.n_brackets = self._bracket_count(st.get("brackets", self.default_brackets),
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
        while len(jobs) < free:
            job = self._promote() if self.mode == "promotion" else None
            job = job or self._start_trial()
            if job is None:
                break
            self.running[job.trial_id] = job
            jobs.append(job)
        return jobs

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
        paused = [(v, t) for t, v in rung.values.items()
                  if t not in rung.promoted and self.trials[t].status == "paused"]
        if not paused:
            return None
        value, tid = min(paused)
        return (value, tid) if in_top(self.rule, tid, value, rung.values, self.eta) else None

    def _start_trial(self) -> Job | None:
        if len(self.trials) >= self.max_trials:
            return None
        tid = len(self.trials)
        b = self.draw_bracket()
        # Stopping mode never pauses: one job to R, cut short by STOP decisions.
        to = self.levels[b] if self.mode == "promotion" else self.max_resource
        config = self.sampler.suggest(SuggestContext(tid, b, 0, to, self._pending()))
        self.trials[tid] = TrialRecord(config=dict(config), bracket=b)
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
        return [t.config for tid, t in self.trials.items()
                if tid in self.running and t.rung < 0]

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
            previous = list(rung.values.values())
            rung.values[tid] = value
            rung.resources[tid] = resource
            trial.rung = k
            # A trial that jumped a rung has left the lower ones: never promote it from there.
            for lower in rungs[:k]:
                if tid in lower.values:
                    lower.promoted.add(tid)
            final = k == len(rungs) - 1
            if self.mode == "stopping" and not final and not continues(
                    self.rule, previous, value, self.eta):
                return False
        return True

    def on_job_end(self, job: Job, outcome: Outcome) -> None:
        self.running.pop(job.trial_id, None)
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
        if self.running or len(self.trials) < self.max_trials:
            return False
        return self.mode == "stopping" or self._find_promotion() is None

    def best(self) -> tuple[int, float] | None:
        """The lowest value at the highest resource level any trial has reached (R once any
        trial completes), ties by trial id."""
        by_level: dict[float, tuple[float, int]] = {}
        for rungs in self.rungs:
            for rung in rungs:
                for t, v in rung.values.items():
                    if rung.level not in by_level or (v, t) < by_level[rung.level]:
                        by_level[rung.level] = (v, t)
        if not by_level:
            return None
        value, tid = by_level[max(by_level)]
        return tid, value

    def plan(self) -> Plan:
        """Expected rung sizes: max_trials split by the bracket distribution, then 1/eta per
        rung (asynchronous promotion may differ a little, stopping keeps the same shape)."""
        brackets: list[Bracket] = []
        for s, p in enumerate(self.probabilities):
            levels = self.levels[s:]
            n0 = self.max_trials * p
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

    def state(self) -> dict[str, Any]:
        return {
            "version": 1,
            "trials": {str(t): tr.to_dict() for t, tr in self.trials.items()},
            "rungs": [[r.to_dict() for r in rungs] for rungs in self.rungs],
            "running": {str(t): j.to_dict() for t, j in self.running.items()},
            "bracket_rng": rng_state(self.bracket_rng),
            "sampler": self.sampler.state(),
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        if state.get("version") != 1:
            raise ValueError(f"unknown {self.name} state version {state.get('version')!r}")
        self.trials = {int(t): TrialRecord(**d) for t, d in state["trials"].items()}
        for rungs, saved in zip(self.rungs, state["rungs"], strict=True):
            for rung, d in zip(rungs, saved, strict=True):
                rung.load(d)
        self.running = {int(t): Job.from_dict(d) for t, d in state["running"].items()}
        rng_restore(self.bracket_rng, state["bracket_rng"])
        self.sampler.restore(state["sampler"])


class ReferenceAsyncHyperband(ReferenceASHA):
    """Asynchronous Hyperband: ASHA over every bracket s = 0 .. s_max."""

    name = "async-hyperband"
    default_brackets = "all"
