"""Synchronous Hyperband (Li et al., JMLR 18(185), 2018, Algorithm 1).

Each bracket s = s_max..0 is one run of successive halving: n configurations start at
r = R·η^-s; when every trial of a rung has ended, the lowest-loss ones go on to the next rung
at η times the resource, until the last rung trains at R. Brackets run side by side, so a free
worker always gets work while any bracket has some.

Arithmetic is exact (``fractions.Fraction``, no float ``log``): s_max is the largest s with
r_min·η^s <= R, so R=243, η=3 has 6 brackets. R and r_min keep their decimal meaning (0.1 is
1/10), so R/r_min need not be a power of η and resources may be fractional (R=48, η=3).

Settings (``algorithm.settings``):

* ``rounding``: how many configurations each rung holds.
  ``paper`` (default): n = ⌈(s_max+1)·η^s/(s+1)⌉, keep ⌊n_i/η⌋ (81, 34, 15, 8, 5; 1902 units);
  ``ray``: the same n, keep ⌈n_i/η⌉ (rounds of s=3: 34, 12, 4, 2; 2181 units);
  ``hpbandster``: n = ⌊(s_max+1)/(s+1)⌋·η^s, rung i holds max(⌊n/η^i⌋, 1) (81, 27, 9, 6, 5).
  Every convention uses the exact s_max; the float-log bugs of the peers are not reproduced.
* ``resource_rounding``: ``float`` (default, exact R·η^(i-s)), ``int`` (floor), ``round``
  (Python's round, half to even).
* ``return_rule``: ``best_at_R`` (default: the lowest loss among trials that reached R) or
  ``best_any`` (the lowest loss at any rung, the paper's rule).
* ``iterations``: how many Hyperband iterations (all brackets each) to run; default 1.
* ``sampler``: which sampler proposes configurations (default ``random``).

Failed and lost trials rank as +inf: they end their rung without stalling it and are never
promoted (a rung may then hold fewer than its planned n). A promoted trial's job runs from the
previous rung's resource to the new one: it resumes from its checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal, get_args

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
from .hb_math import (
    ExactBracket,
    bracket_table,
    exact,
    full_cost,
    incremental_cost,
    rank,
    rung_counts,
    s_max_for,
)
from .persist import Persistent, record
from .samplers import make_sampler, sampler_options
from .settings import parse

Rounding = Literal["paper", "ray", "hpbandster"]
ResourceRounding = Literal["float", "int", "round"]
ReturnRule = Literal["best_at_R", "best_any"]
RETURN_RULES = get_args(ReturnRule)


@dataclass(frozen=True)
class HyperbandSettings:
    """``algorithm.settings`` of hyperband (see the module docstring)."""

    rounding: Rounding = "paper"
    resource_rounding: ResourceRounding = "float"
    return_rule: ReturnRule = "best_at_R"
    iterations: int = 1
    sampler: str = "random"

Number = int | float | Fraction

# --- the bracket table: pure arithmetic, no study needed ---------------------------------


def plan_from_table(table: tuple[ExactBracket, ...], iterations: int = 1) -> Plan:
    """The Plan of ``iterations`` Hyperband iterations. Brackets are listed once (they repeat
    identically each iteration); the totals cover every iteration."""
    notes: list[str] = []
    if any(r.denominator != 1 for b in table for _, r in b.rungs):
        notes.append("resources are fractional (R/min_resource is not a power of eta); "
                     "resource_rounding='int' or 'round' gives whole units")
    if iterations > 1:
        notes.append(f"the {len(table)} brackets run {iterations} times; totals cover all")
    return Plan(
        brackets=tuple(Bracket(b.s, tuple(Rung(n, float(r)) for n, r in b.rungs))
                       for b in table),
        total_resource=float(iterations * sum(map(full_cost, table), Fraction(0))),
        incremental_resource=float(iterations * sum(map(incremental_cost, table),
                                                    Fraction(0))),
        max_trials=iterations * sum(b.rungs[0][0] for b in table),
        notes=tuple(notes),
    )


def hyperband_plan(
    max_resource: Number,
    eta: int,
    min_resource: Number = 1,
    *,
    rounding: str = "paper",
    resource_rounding: str = "float",
    iterations: int = 1,
) -> Plan:
    """The dry-run plan, without a study (what ``hpod plan --algorithm hyperband`` prints)."""
    table = bracket_table(max_resource, eta, min_resource, rounding, resource_rounding)
    return plan_from_table(table, iterations)


# --- the scheduler -------------------------------------------------------------------------


@record
@dataclass
class _BracketRun:
    """Where one bracket's successive halving stands. Only the current rung is open: its
    ``members`` (rung 0 grows as trials are created), how many of them were handed out, and
    one result dict per rung reached (trial -> loss, +inf for failed or lost)."""

    s: int
    rungs: tuple[tuple[int, float], ...]
    rung: int = 0
    members: list[int] = field(default_factory=list)
    issued: int = 0
    results: list[dict[int, float]] = field(default_factory=lambda: [{}])

    @property
    def finished(self) -> bool:
        return self.rung >= len(self.rungs)

    @property
    def last(self) -> bool:
        return self.rung == len(self.rungs) - 1

    def target(self) -> int:
        """Trials the current rung waits for: planned n_0, or the survivors promoted."""
        return self.rungs[0][0] if self.rung == 0 else len(self.members)

    def runnable(self) -> bool:
        return not self.finished and self.issued < self.target()

    def complete(self) -> bool:
        return len(self.results[self.rung]) == self.target()

    def span(self) -> tuple[float, float]:
        """The current rung's job: from the previous rung's resource (the checkpoint)."""
        lo = 0.0 if self.rung == 0 else self.rungs[self.rung - 1][1]
        return lo, self.rungs[self.rung][1]


class Hyperband(Persistent, Algorithm):
    """Synchronous Hyperband; see the module docstring for settings and conventions."""

    saved = ("plan_key", "next_trial", "configs", "running", "last_point", "brackets",
             "sampler")
    state_version = 2

    name = "hyperband"

    def __init__(self, ctx: Context) -> None:
        st = parse(HyperbandSettings, ctx.settings, passthrough=sampler_options(ctx.settings))
        if st.iterations < 1:
            raise SettingsError("algorithm.settings.iterations",
                                f"must be a whole number >= 1 (got {st.iterations})")
        self.rounding, self.resource_rounding = st.rounding, st.resource_rounding
        self.return_rule, self.iterations = st.return_rule, st.iterations
        res = ctx.resource
        self.table = bracket_table(res.max_resource, res.eta, res.min_resource,
                                   self.rounding, self.resource_rounding)
        self.sampler = make_sampler(ctx, rng_for(ctx.seed, 0))
        self.next_trial = 0
        self.configs: dict[int, dict[str, Any]] = {}  # live trials only
        self.running: dict[int, int] = {}  # trial -> index of its bracket in self.brackets
        self.last_point: dict[int, tuple[float, float]] = {}  # running trial -> (r, value)
        # Brackets are created when first needed, so many iterations cost nothing up front.
        self.brackets: list[_BracketRun] = []
        self.plan_key = self._fingerprint()
        self._derive()

    def _derive(self) -> None:
        """Indexes derived from the saved state (rebuilt by ``restore``): the first unfinished
        bracket, only ever moving forward, the brackets with a job to hand out, and the
        incumbent, kept as results arrive. Each was a scan of every bracket (or of every bracket
        still open, a window that widens with the study) per call."""
        self._skip = 0
        self._runnable = {i for i, b in enumerate(self.brackets) if b.runnable()}
        self._best: tuple[float, int] | None = None
        self._dropped: list[int] = []  # trials the latest job end dropped from a bracket
        for b in self.brackets:
            for i, res in enumerate(b.results):
                for tid, loss in res.items():
                    self._note_result(b, i, tid, loss)

    def _note_result(self, b: _BracketRun, rung: int, tid: int, loss: float) -> None:
        counts = self.return_rule == "best_any" or rung == len(b.rungs) - 1
        if counts and math.isfinite(loss) and (self._best is None or (loss, tid) < self._best):
            self._best = (loss, tid)

    # --- asking ---

    @property
    def total_brackets(self) -> int:
        return self.iterations * len(self.table)

    def _bracket(self, idx: int) -> _BracketRun:
        while len(self.brackets) <= idx:
            spec = self.table[len(self.brackets) % len(self.table)]
            rungs = tuple((n, float(r)) for n, r in spec.rungs)
            self.brackets.append(_BracketRun(spec.s, rungs))
            self._runnable.add(len(self.brackets) - 1)
        return self.brackets[idx]

    def next_jobs(self, free: int) -> list[Job]:
        jobs: list[Job] = []
        # Earlier brackets (the most exploratory first) get workers first; a later bracket
        # only starts once the earlier ones have nothing runnable, so nobody idles.
        for idx in sorted(self._runnable):
            if len(jobs) >= free:
                return jobs
            self._fill(idx, free, jobs)
        idx = len(self.brackets)
        while len(jobs) < free and idx < self.total_brackets:
            self._bracket(idx)
            self._fill(idx, free, jobs)
            idx += 1
        return jobs

    def _fill(self, idx: int, free: int, jobs: list[Job]) -> None:
        b = self.brackets[idx]
        while len(jobs) < free and b.runnable():
            jobs.append(self._issue(idx, b))
        if not b.runnable():
            self._runnable.discard(idx)

    def _first_unfinished(self) -> int:
        """Index of the first bracket not finished. Finishing is for good, so a cached pointer
        only moves forward; it is derived, not saved (``restore`` starts it at 0 again). Without
        it every ask rescans all earlier brackets: quadratic in the length of a long study."""
        skip = self._skip
        while skip < len(self.brackets) and self.brackets[skip].finished:
            skip += 1
        self._skip = skip
        return skip

    def _issue(self, idx: int, b: _BracketRun) -> Job:
        tid = self._new_trial(b) if b.rung == 0 else b.members[b.issued]
        if b.rung == 0:
            b.members.append(tid)
        b.issued += 1
        self.running[tid] = idx
        lo, hi = b.span()
        return Job(tid, dict(self.configs[tid]), lo, hi, bracket=b.s, rung=b.rung)

    def _new_trial(self, b: _BracketRun) -> int:
        tid = self.next_trial
        self.next_trial += 1
        # Sorted for a deterministic order; skipped for samplers that ignore it (random), where
        # sorting a thousand running trials per new trial was a hot spot of large studies.
        pending = ([self.configs[t] for t in sorted(self.running)]
                   if self.sampler.uses_pending else [])
        ctx = SuggestContext(tid, b.s, 0, b.rungs[0][1], pending)
        self.configs[tid] = dict(self.sampler.suggest(ctx))
        return tid

    def adopt_config(self, trial_id: int, config: Mapping[str, Any]) -> bool:
        self.configs[trial_id] = dict(config)
        self.sampler.adopt_config(trial_id, config)
        return True

    # --- telling ---

    def on_progress(self, trial_id: int, resource: float, value: float) -> Decision:
        if trial_id in self.running and math.isfinite(value):
            self.last_point[trial_id] = (float(resource), float(value))
            self.sampler.observe(trial_id, self.configs[trial_id], resource, value)
        return Decision.CONTINUE  # synchronous HB never stops a segment early

    def on_job_end(self, job: Job, outcome: Outcome) -> None:
        self._dropped = []
        tid = job.trial_id
        idx = self.running.pop(tid, None)
        if idx is None:
            return  # unknown or already applied: a repeat changes nothing
        b = self.brackets[idx]
        loss = self._loss(tid, job, outcome)
        b.results[b.rung][tid] = loss
        self._note_result(b, b.rung, tid, loss)
        if math.isfinite(loss):  # the same hook every scheduler calls, after the last point
            at = outcome.resource if outcome.resource is not None else job.to_resource
            self.sampler.on_segment(tid, self.configs[tid], job.from_resource, at, loss,
                                    outcome.cost)
        if not math.isfinite(loss):
            failed = outcome.status if outcome.status is not Status.COMPLETED else Status.FAILED
            self._end_trial(tid, failed)
        elif b.last:
            self._end_trial(tid, Status.COMPLETED)
        self._advance(b)
        if b.runnable():  # a rung closed: its survivors have jobs to hand out
            self._runnable.add(idx)

    def _loss(self, tid: int, job: Job, outcome: Outcome) -> float:
        """The rung result; anything but a finite completed value ranks last (+inf)."""
        point = self.last_point.pop(tid, None)
        if outcome.status is not Status.COMPLETED:
            return math.inf
        value = outcome.value
        if value is None and point is not None:  # an ask/tell client may complete bare
            value = point[1]
        if value is None or not math.isfinite(value):
            return math.inf
        at = outcome.resource if outcome.resource is not None else job.to_resource
        if point is None or point[0] < at:  # the sampler has not seen this point yet
            self.sampler.observe(tid, self.configs[tid], at, value)
        return float(value)

    def _advance(self, b: _BracketRun) -> None:
        # A loop, not an if: a rung left with no survivors is complete at once.
        while not b.finished and b.complete():
            if b.last:
                b.rung += 1
                return
            keep = self._survivors(b)
            for tid, loss in b.results[b.rung].items():
                if math.isfinite(loss) and tid not in keep:
                    self._end_trial(tid, Status.COMPLETED)
                    self._dropped.append(tid)
            b.rung += 1
            b.members, b.issued = keep, 0
            b.results.append({})

    def _survivors(self, b: _BracketRun) -> list[int]:
        """The planned number of lowest losses, ties by trial id; never a failed trial."""
        finite = {t: v for t, v in b.results[b.rung].items() if math.isfinite(v)}
        return rank(finite)[: b.rungs[b.rung + 1][0]]

    def _end_trial(self, tid: int, status: Status) -> None:
        config = self.configs.pop(tid)
        self.sampler.on_trial_end(tid, config, status)

    # --- answers ---

    def finalized(self) -> list[int]:
        return list(self._dropped)

    def plan(self) -> Plan:
        return plan_from_table(self.table, self.iterations)

    def done(self) -> bool:
        return (len(self.brackets) == self.total_brackets
                and self._first_unfinished() == len(self.brackets))

    def best(self) -> tuple[int, float] | None:
        if self._best is None:
            return None
        value, tid = self._best
        return tid, value

    # --- persistence ---

    def _fingerprint(self) -> str:
        """The iterations and bracket table, so a state is never restored under others."""
        return repr([self.iterations, [[b.s, [[n, str(r)] for n, r in b.rungs]]
                                       for b in self.table]])

    def restore(self, state: Mapping[str, Any]) -> None:
        if state.get("plan_key") not in (None, self.plan_key):
            raise ValueError("hyperband state was saved under other resource or rounding "
                             "settings than this study's")
        super().restore(state)


register_algorithm("hyperband")(Hyperband)


__all__ = ["ExactBracket", "Hyperband", "bracket_table", "exact", "hyperband_plan",
           "plan_from_table", "rung_counts", "s_max_for"]
