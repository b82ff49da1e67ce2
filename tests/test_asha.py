"""ASHA (promotion and stopping) and asynchronous Hyperband, against Li et al., MLSys 2020
(Algorithms 1 and 2) and the promotion sequences the paper implies."""

from __future__ import annotations

import json
import math
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
from hpod.server.algorithms import (
    Context,
    Decision,
    Job,
    Outcome,
    Resource,
    SearchSpace,
    SettingsError,
    Status,
    build,
)
from hpod.server.algorithms.asha import (
    ASHA,
    bracket_probabilities,
    continues,
    in_top,
    largest_s,
    ray_cutoff,
    rung_levels,
)
from hpod.server.algorithms.space import Float

SPACE = SearchSpace((Float("x", 0.0, 1.0), Float("y", 0.0, 1.0)))
C, S = Decision.CONTINUE, Decision.STOP


def make(name: str = "asha", max_resource: float = 9, eta: int = 3, seed: int = 0,
         max_trials: int = 100, **settings: Any) -> ASHA:
    ctx = Context(SPACE, Resource(max_resource, 1, eta), seed, settings, max_trials)
    alg = build(name, ctx)
    assert isinstance(alg, ASHA)
    return alg


def loss(config: dict[str, Any], r: float) -> float:
    """A known learning curve: the floor (x - 0.3)^2, approached at a trial-specific speed."""
    return (config["x"] - 0.3) ** 2 + config["y"] / math.sqrt(r)


def finish(alg: ASHA, job: Job, value: float, resource: float | None = None) -> None:
    at = job.to_resource if resource is None else resource
    alg.on_job_end(job, Outcome(Status.COMPLETED, value, at))


class Sim:
    """A deterministic in-test cluster: ``workers`` slots, round-robin, each step trains one
    job by one resource unit and reports the point; a job ends at its target or on STOP."""

    def __init__(self, alg: Any, workers: int = 3, fail: set[int] | None = None) -> None:
        self.alg, self.workers, self.fail = alg, workers, fail or set()
        self.running: list[tuple[Job, float]] = []
        self.log: list[tuple[Any, ...]] = []

    def step(self) -> bool:
        for job in self.alg.next_jobs(self.workers - len(self.running)):
            self.log.append(("job", job.trial_id, job.from_resource, job.to_resource))
            self.running.append((job, job.from_resource))
        if not self.running:
            return False
        job, r = self.running.pop(0)
        if job.trial_id in self.fail:
            self.alg.on_job_end(job, Outcome(Status.FAILED))
            self.log.append(("failed", job.trial_id))
            return True
        r = min(math.floor(r) + 1.0, job.to_resource)
        value = loss(job.config, r)
        decision = self.alg.on_progress(job.trial_id, r, value)
        self.log.append(("progress", job.trial_id, r, decision.value))
        if decision is S or r >= job.to_resource:
            self.alg.on_job_end(job, Outcome(Status.COMPLETED, value, r))
        else:
            self.running.append((job, r))
        return True

    def run(self, max_steps: int = 100_000) -> Sim:
        for _ in range(max_steps):
            if not self.step():
                return self
        raise AssertionError("the simulation did not finish")


# --- exact arithmetic ---------------------------------------------------------------------


def test_s_max_is_exact_where_a_float_log_is_not() -> None:
    assert largest_s(Fraction(1), Fraction(243), 3) == 5  # math.log(243, 3) = 4.999...
    assert largest_s(Fraction(1), Fraction(1000), 10) == 3
    for eta in (2, 3, 4, 5, 10):
        for k in range(1, 13):
            assert largest_s(Fraction(1), Fraction(eta**k), eta) == k
            assert largest_s(Fraction(1, 2), Fraction(eta**k, 2), eta) == k


def test_rung_levels_end_at_the_maximum_resource() -> None:
    assert rung_levels(Fraction(1), Fraction(81), 3) == [1, 3, 9, 27, 81]
    assert rung_levels(Fraction(1), Fraction(100), 3) == [1, 3, 9, 27, 81, 100]
    assert rung_levels(Fraction(1), Fraction(10), 2) == [1, 2, 4, 8, 10]  # Ray's 1, 2, 4, 8


# --- the quantile rules -------------------------------------------------------------------


def test_pass_counts_match_the_reference_table() -> None:
    """§1.5, eta = 3, n = 2..10: how many of n rung entries pass."""
    asha = [0, 1, 1, 1, 2, 2, 2, 3, 3]
    linear = [1, 1, 2, 2, 2, 3, 3, 3, 4]
    optuna = [1, 1, 1, 1, 2, 2, 2, 3, 3]  # our stopping form of asha_floor: floor, minimum 1
    for n, a, q, o in zip(range(2, 11), asha, linear, optuna, strict=True):
        rung = {t: float(t + 1) for t in range(n)}
        assert sum(in_top("asha_floor", t, v, rung, 3) for t, v in rung.items()) == a, n
        assert sum(in_top("linear_quantile", t, v, rung, 3) for t, v in rung.items()) == q, n
        stop_passes = sum(continues("asha_floor", [w for u, w in rung.items() if u != t], v, 3)
                          for t, v in rung.items())
        assert stop_passes == o, n


def test_ray_parity_cutoff_and_stop() -> None:
    """§1.10.6: min_t=1, max_t=10, rf=2, maximising rewards 2 and 4 at t=1 give a cutoff of 3;
    a third trial with reward 1 is stopped (rewards enter negated: lower is better)."""
    assert -ray_cutoff([-2.0, -4.0], 2) == 3.0
    alg = make(max_resource=10, eta=2, mode="stopping", quantile_rule="ray_percentile")
    jobs = alg.next_jobs(3)
    assert [j.to_resource for j in jobs] == [10, 10, 10]
    assert alg.on_progress(jobs[0].trial_id, 1, -2.0) is C  # the first always continues
    assert alg.on_progress(jobs[1].trial_id, 1, -4.0) is C  # 4 >= 2 in max-space
    assert alg.on_progress(jobs[2].trial_id, 1, -1.0) is S
    assert alg.on_progress(jobs[2].trial_id, 2, -9.0) is S  # a stopped trial stays stopped


# --- promotion mode -----------------------------------------------------------------------


def test_asha_promotion_sequence_of_the_reference() -> None:
    """§1.10.5: eta = 3, losses [5, 3, 4, 1, 2, 6] enter rung 0 in that order, get_job after
    each: nothing while the rung holds 1 or 2, then '3' (a mis-promotion), '1', nothing, '2'."""
    alg = make()
    started: dict[float, int] = {}

    def new_trial_gets(value: float) -> None:
        [job] = alg.next_jobs(1)
        assert (job.from_resource, job.to_resource, job.rung) == (0, 1, 0)  # a new trial
        started[value] = job.trial_id
        finish(alg, job, value)

    def promoted() -> int:
        [job] = alg.next_jobs(1)
        assert (job.from_resource, job.to_resource, job.rung) == (1, 3, 1)
        return job.trial_id

    new_trial_gets(5)
    new_trial_gets(3)  # n = 1: no promotion, so a new trial
    new_trial_gets(4)  # n = 2: still none
    assert promoted() == started[3]  # n = 3: top-1 is '3' (mis-promoted: 1 and 2 come later)
    new_trial_gets(1)
    assert promoted() == started[1]  # n = 4
    new_trial_gets(2)
    new_trial_gets(6)  # n = 5: top-1 is '1', already promoted, so this was a new trial
    assert promoted() == started[2]  # n = 6: top-2 = {1, 2}
    assert alg.rung(0, 0).promoted == {started[3], started[1], started[2]}


def test_linear_quantile_promotes_from_a_two_entry_rung() -> None:
    alg = make(quantile_rule="linear_quantile")
    first, second = alg.next_jobs(2)
    finish(alg, first, 5.0)
    [job] = alg.next_jobs(1)
    assert job.from_resource == 0  # one entry: nothing to compare with
    finish(alg, second, 3.0)
    [job] = alg.next_jobs(1)
    assert (job.trial_id, job.from_resource, job.to_resource) == (second.trial_id, 1, 3)


def test_promoted_trial_resumes_from_its_checkpoint() -> None:
    alg = make(max_resource=81, max_trials=40)
    sim = Sim(alg, workers=4).run()
    jobs: dict[int, list[tuple[float, float]]] = {}
    for entry in sim.log:
        if entry[0] == "job":
            jobs.setdefault(entry[1], []).append((entry[2], entry[3]))
    promotions = 0
    for segments in jobs.values():
        assert segments[0][0] == 0
        for (_, prev_to), (start, _) in zip(segments, segments[1:], strict=False):
            assert start == prev_to  # from the previous milestone, never from zero
            promotions += 1
    assert promotions > 10
    assert max(to for segs in jobs.values() for _, to in segs) == 81
    assert alg.done() and alg.best() is not None


def test_promotion_scans_the_highest_rung_first() -> None:
    alg = make(max_resource=27)
    jobs = alg.next_jobs(9)
    for job, value in zip(jobs, [9, 8, 7, 6, 5, 4, 3, 2, 1], strict=True):
        finish(alg, job, float(value))
    first = alg.next_jobs(3)  # floor(9/3) = 3 promotions from rung 0: values 1, 2, 3
    assert [j.trial_id for j in first] == [jobs[8].trial_id, jobs[7].trial_id, jobs[6].trial_id]
    for job, value in zip(first, [0.5, 0.7, 0.6], strict=True):
        finish(alg, job, value)
    [top] = alg.next_jobs(1)  # rung 1 now holds 3: its best goes to 27 before rung 0 is used
    assert (top.trial_id, top.from_resource, top.to_resource) == (jobs[8].trial_id, 3, 9)


def test_milestone_rule_records_first_report_past_the_milestone() -> None:
    """One rule for both modes: the first report with resource >= milestone counts, with the
    real resource recorded; a report that jumps two milestones counts at both."""
    alg = make(mode="stopping", max_resource=27)
    a, b = alg.next_jobs(2)
    assert alg.on_progress(a.trial_id, 0.5, 3.0) is C
    assert a.trial_id not in alg.rung(0, 0).values
    alg.on_progress(a.trial_id, 2, 2.0)
    alg.on_progress(a.trial_id, 2.5, 1.0)  # not a first report past any new milestone
    assert alg.rung(0, 0).values[a.trial_id] == 2.0
    assert alg.rung(0, 0).resources[a.trial_id] == 2
    alg.on_progress(b.trial_id, 4, 1.5)
    assert alg.rung(0, 0).resources[b.trial_id] == 4
    assert alg.rung(0, 1).resources[b.trial_id] == 4

    promo = make(max_resource=27)
    [job] = promo.next_jobs(1)
    finish(promo, job, 2.0, resource=1.5)  # the trainer overshot milestone 1
    assert promo.rung(0, 0).resources[job.trial_id] == 1.5
    more = promo.next_jobs(3)
    for j in more[:2]:
        finish(promo, j, 5.0)
    resumed = [j for j in promo.next_jobs(1) if j.trial_id == job.trial_id]
    assert resumed and resumed[0].from_resource == 1.5  # from the real checkpoint


# --- stopping mode ------------------------------------------------------------------------


@pytest.mark.parametrize("rule, expected", [
    ("asha_floor", [C, C, S, C, S, S]),
    ("linear_quantile", [C, C, S, C, C, S]),
    ("ray_percentile", [C, C, S, C, C, S]),
])
def test_stopping_decisions_at_a_milestone(rule: str, expected: list[Decision]) -> None:
    alg = make(mode="stopping", quantile_rule=rule)
    jobs = alg.next_jobs(6)
    assert all((j.from_resource, j.to_resource) == (0, 9) for j in jobs)
    got = [alg.on_progress(j.trial_id, 1, v) for j, v in zip(jobs, [5, 3, 4, 1, 2, 6],
                                                                strict=True)]
    assert got == expected


def test_stopping_mode_runs_to_completion() -> None:
    alg = make(mode="stopping", max_resource=27, max_trials=30, seed=3)
    sim = Sim(alg, workers=4).run()
    stops = [e for e in sim.log if e[0] == "progress" and e[3] == "stop"]
    assert stops and all(e[2] in (1, 3, 9) for e in stops)  # only at milestones
    assert all(e[2:] == (0, 27) for e in sim.log if e[0] == "job")  # never paused
    assert alg.done() and len(alg.rung(0, 3).values) >= 1


# --- asynchronous Hyperband: bracket distributions ----------------------------------------


def test_bracket_probabilities_exact() -> None:
    """§1.10.7 for R = 81, eta = 3: Syne Tune's and Ray's distributions."""
    one, top = Fraction(1), Fraction(81)
    sync = bracket_probabilities("sync_proportional", one, top, 3, 5)
    weights = [Fraction(5, 5 - s) / 3**s for s in range(5)]  # the same, written out
    assert sync == [float(w / sum(weights)) for w in weights]
    assert sync == pytest.approx([0.5694, 0.2373, 0.1054, 0.0527, 0.0351], abs=5e-5)
    softmax = bracket_probabilities("softmax_rungs", one, top, 3, 5)
    exact = np.exp([5, 4, 3, 2, 1]) / np.exp([5, 4, 3, 2, 1]).sum()
    assert softmax == pytest.approx(list(exact), abs=1e-12)
    assert softmax == pytest.approx([0.6364, 0.2341, 0.0861, 0.0317, 0.0117], abs=5e-5)


@pytest.mark.parametrize("kind", ["sync_proportional", "softmax_rungs"])
def test_bracket_frequencies_over_1e5_draws(kind: str) -> None:
    alg = make("async-hyperband", max_resource=81, bracket_distribution=kind, seed=11)
    assert alg.n_brackets == 5
    n = 100_000
    counts = np.bincount([alg.draw_bracket() for _ in range(n)], minlength=5)
    for p, c in zip(alg.probabilities, counts, strict=True):
        assert abs(c / n - p) < 5 * math.sqrt(p * (1 - p) / n)  # five standard errors


def test_bracket_draws_are_deterministic_under_the_seed() -> None:
    a = make("async-hyperband", max_resource=81, seed=5)
    b = make("async-hyperband", max_resource=81, seed=5)
    c = make("async-hyperband", max_resource=81, seed=6)
    draws = [a.draw_bracket() for _ in range(50)]
    assert draws == [b.draw_bracket() for _ in range(50)]
    assert draws != [c.draw_bracket() for _ in range(50)]


def test_async_hyperband_trial_skips_its_bracket_rungs() -> None:
    alg = make("async-hyperband", max_resource=81, max_trials=60, seed=2)
    sim = Sim(alg, workers=4).run()
    firsts = {e[1]: e[3] for e in reversed(sim.log) if e[0] == "job" and e[2] == 0}
    assert {alg.trials[t].bracket for t in firsts} == {0, 1, 2, 3, 4}
    for tid, to in firsts.items():
        assert to == 3 ** alg.trials[tid].bracket  # bracket s starts at rung level s
    assert alg.done()


def test_brackets_setting() -> None:
    assert make(max_resource=81).n_brackets == 1
    assert make(max_resource=81, brackets=2).n_brackets == 2
    assert make(max_resource=81, brackets="all").n_brackets == 5
    with pytest.raises(SettingsError, match="brackets"):
        make(max_resource=81, brackets=6)
    with pytest.raises(SettingsError, match="mode"):
        make(mode="pause")
    with pytest.raises(SettingsError, match="unknown setting"):
        make(reduction_factor=3)
    with pytest.raises(SettingsError, match="max_trials"):
        build("asha", Context(SPACE, Resource(9, 1, 3), 0, {}, None))


# --- robustness, determinism, persistence -------------------------------------------------


def test_failed_and_lost_trials_never_block() -> None:
    alg = make(max_trials=12)
    jobs = alg.next_jobs(3)
    alg.on_job_end(jobs[0], Outcome(Status.FAILED))
    alg.on_job_end(jobs[1], Outcome(Status.LOST))
    alg.on_job_end(jobs[2], Outcome(Status.COMPLETED, float("nan"), 1))
    assert not alg.rung(0, 0).values
    sim = Sim(alg, workers=3, fail={5, 7}).run()
    assert alg.done() and len(alg.trials) == 12
    assert not any(e[0] == "job" and e[1] in (0, 1, 2) for e in sim.log)
    assert [e[1] for e in sim.log if e[0] == "job" and e[1] in (5, 7)] == [5, 7]  # never again
    assert alg.best() is not None


def test_promotion_mode_done_when_nothing_can_be_promoted() -> None:
    alg = make(max_trials=3)
    jobs = alg.next_jobs(5)
    assert len(jobs) == 3  # max_trials caps new trials
    for job, v in zip(jobs, [3.0, 2.0, 1.0], strict=True):
        finish(alg, job, v)
    assert not alg.done()  # trial '1' can still be promoted
    [job] = alg.next_jobs(2)
    finish(alg, job, 0.5)
    assert alg.next_jobs(1) == [] and alg.done()  # a single entry at rung 1: nothing passes
    assert alg.best() == (jobs[2].trial_id, 0.5)


@pytest.mark.parametrize("name, settings", [
    ("asha", {}),
    ("asha", {"mode": "stopping"}),
    ("async-hyperband", {"quantile_rule": "linear_quantile"}),
    ("async-hyperband", {"mode": "stopping", "bracket_distribution": "softmax_rungs"}),
    ("async-hyperband", {"duplicate_radius": 0.2}),
])
def test_deterministic_and_state_round_trip(name: str, settings: dict[str, Any]) -> None:
    whole = Sim(make(name, max_resource=27, max_trials=25, seed=4, **settings), 3).run()
    again = Sim(make(name, max_resource=27, max_trials=25, seed=4, **settings), 3).run()
    assert whole.log == again.log
    other = Sim(make(name, max_resource=27, max_trials=25, seed=5, **settings), 3).run()
    assert other.log != whole.log

    first = Sim(make(name, max_resource=27, max_trials=25, seed=4, **settings), 3)
    for _ in range(len(whole.log) // 3):
        first.step()
    saved = json.loads(json.dumps(first.alg.state()))
    restored = make(name, max_resource=27, max_trials=25, seed=4, **settings)
    restored.restore(saved)
    second = Sim(restored, 3)
    second.running, second.log = list(first.running), list(first.log)
    assert second.run().log == whole.log
    assert restored.state() == whole.alg.state()


def test_plan_reports_expected_rungs() -> None:
    plan = make(max_resource=81, max_trials=81).plan()
    assert [r.n for r in plan.brackets[0].rungs] == [81, 27, 9, 3, 1]
    assert plan.total_resource == 405
    assert plan.incremental_resource == 81 + 27 * 2 + 9 * 6 + 3 * 18 + 54
