"""Iterative-deepening Hyperband against the Hyperband tables (Li et al., JMLR 2018) and
the identities of Brandt et al. (2023)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import pytest
from hpod.server.algorithms import (
    Context,
    Job,
    Outcome,
    Resource,
    SearchSpace,
    SettingsError,
    Status,
    build,
)
from hpod.server.algorithms.base import PreconditionError
from hpod.server.algorithms.idhb import IDHyperband, hyperband_table, table_cost
from hpod.server.algorithms.space import Float

SPACE = SearchSpace((Float("x", 0.0, 1.0), Float("y", 0.0, 1.0)))
Loss = Callable[[dict[str, Any], float], float]


def smooth(config: dict[str, Any], r: float) -> float:
    return (config["x"] - 0.3) ** 2 + config["y"] / math.sqrt(r)


def noisy(config: dict[str, Any], r: float) -> float:
    """Rankings reshuffle between budgets, so the three variants select differently."""
    return (config["x"] - 0.3) ** 2 + 0.2 * math.sin(997 * config["y"] * r) / math.sqrt(r)


def make(max_resource: float = 9, eta: int = 3, seed: int = 0, **settings: Any) -> IDHyperband:
    alg = build("idhb", Context(SPACE, Resource(max_resource, 1, eta), seed, settings))
    assert isinstance(alg, IDHyperband)
    return alg


class Sim:
    """A deterministic in-test cluster: ``workers`` slots, jobs end in the order handed out,
    each at its target with the known function's value; ``fail`` trials fail their job."""

    def __init__(self, alg: IDHyperband, f: Loss = smooth, workers: int = 3,
                 fail: set[int] | None = None) -> None:
        self.alg, self.f, self.workers, self.fail = alg, f, workers, fail or set()
        self.running: list[Job] = []
        self.jobs: list[Job] = []

    def step(self) -> bool:
        new = self.alg.next_jobs(self.workers - len(self.running))
        self.jobs += new
        self.running += new
        if not self.running:
            return False
        job = self.running.pop(0)
        if job.trial_id in self.fail:
            self.alg.on_job_end(job, Outcome(Status.FAILED))
            return True
        value = self.f(job.config, job.to_resource)
        self.alg.on_progress(job.trial_id, job.to_resource, value)
        self.alg.on_job_end(job, Outcome(Status.COMPLETED, value, job.to_resource))
        return True

    def run(self) -> Sim:
        while self.step():
            pass
        return self


def configs(alg: IDHyperband, tids: list[int]) -> list[tuple[float, ...]]:
    return [tuple(alg.trials[t].config.values()) for t in tids]


# --- the Hyperband tables -----------------------------------------------------------------


@pytest.mark.parametrize("R, eta, sizes, total", [
    (81, 3, [81, 34, 15, 8, 5], 1902),
    (27, 3, [27, 12, 6, 4], 423),
    (9, 3, [9, 5, 3], 78),
    (16, 2, [16, 10, 7, 5, 5], 372),
    (32, 2, [32, 20, 12, 8, 6, 6], 1128),
    (64, 2, [64, 38, 23, 14, 10, 7, 7], 2948),
    (48, 3, [27, 12, 6, 4], 752),
    (96, 3, [81, 34, 15, 8, 5], 2254.22),
    (243, 3, [243, 98, 41, 18, 9, 6], 8457),
])
def test_hyperband_tables_of_the_reference(R: int, eta: int, sizes: list[int],
                                           total: float) -> None:
    table = hyperband_table(Fraction(R), Fraction(1), eta)
    assert [b.rungs[0].n for b in table] == sizes
    assert all(b.rungs[-1].r == R for b in table)  # every bracket ends at R
    assert table_cost(table)[0] == pytest.approx(total, abs=0.005)


def test_r81_rounds() -> None:
    table = hyperband_table(Fraction(81), Fraction(1), 3)
    assert [(r.n, r.r) for r in table[1].rungs] == [(34, 3), (11, 9), (3, 27), (1, 81)]


def test_bracket_table_before_and_after_raising_9_to_27() -> None:
    alg = make(9, 3)
    before = alg.plan()
    assert [[(r.n, r.r) for r in b.rungs] for b in before.brackets] == [
        [(9, 1), (3, 3), (1, 9)], [(5, 3), (1, 9)], [(3, 9)]]
    assert (before.total_resource, before.max_trials) == (78, 17)
    Sim(alg).run()
    assert [len(b.pool) for b in alg.brackets] == [9, 5, 3]
    alg.raise_max_resource()
    after = alg.plan()
    assert [[(r.n, r.r) for r in b.rungs] for b in after.brackets] == [
        [(27, 1), (9, 3), (3, 9), (1, 27)], [(12, 3), (4, 9), (1, 27)],
        [(6, 9), (2, 27)], [(4, 27)]]
    assert (after.total_resource, after.max_trials) == (423, 49)
    assert [(b.s, b.r_min) for b in alg.brackets] == [(3, 1), (2, 3), (1, 9), (0, 27)]
    Sim(alg).run()
    assert [len(b.pool) for b in alg.brackets] == [27, 12, 6, 4]  # topped up to HB(27)


def test_bracket_mapping_16_to_32() -> None:
    """§2.7.1: after raising (16, 2) the (s, r_min) set is HB(32, 2)'s, sizes [32,20,12,8,6,6]."""
    alg = make(16, 2)
    Sim(alg).run()
    alg.raise_max_resource()
    assert [(b.s, b.r_min) for b in alg.brackets] == [
        (5, 1), (4, 2), (3, 4), (2, 8), (1, 16), (0, 32)]
    Sim(alg).run()
    assert [len(b.pool) for b in alg.brackets] == [32, 20, 12, 8, 6, 6]


# --- the eID cost identity and zero recomputation -----------------------------------------


@pytest.mark.parametrize("R, eta, eid, naive", [
    (16, 2, 1128, 1500),
    (16, 3, 752, 890.67),
    (32, 2, 2948, 4076),
    (32, 3, 2254.22, 2755.56),
    (27, 3, 1902, 2325),
])
def test_eid_cost_identity(R: int, eta: int, eid: float, naive: float) -> None:
    """§2.7.2: under no-reuse accounting eID costs exactly Hyperband(eta*R); re-running
    Hyperband from scratch would cost HB(R) + HB(eta*R)."""
    alg = make(R, eta, variant="efficient")
    Sim(alg, noisy).run()
    first = alg.paid_full
    assert first == pytest.approx(alg.plan().total_resource)
    alg.raise_max_resource()
    Sim(alg, noisy).run()
    assert alg.paid_full == pytest.approx(eid, abs=0.005)
    assert first + alg.plan().total_resource == pytest.approx(naive, abs=0.005)


@pytest.mark.parametrize("variant", ["efficient", "preserving", "discarding"])
def test_no_evaluation_is_requested_twice_across_raises(variant: str) -> None:
    """§2.7.3 and §2.7.6: R -> 3R -> 9R; every job resumes from the trial's checkpoint."""
    alg = make(3, 3, seed=1, variant=variant)
    sim = Sim(alg, noisy)
    sim.run()
    for _ in range(2):
        alg.raise_max_resource()
        sim.run()
    assert alg.max_resource == 27 and alg.done()
    pairs = [(j.trial_id, j.to_resource) for j in sim.jobs]
    assert len(pairs) == len(set(pairs))
    last: dict[int, float] = {}
    for job in sim.jobs:
        assert job.from_resource == last.get(job.trial_id, 0.0)
        last[job.trial_id] = job.to_resource
    assert alg.paid_incremental == pytest.approx(sum(last.values()))
    if variant == "efficient":
        assert alg.paid_full == pytest.approx(alg.plan().total_resource)


# --- the variants -------------------------------------------------------------------------


def raised(variant: str, seed: int = 0) -> tuple[IDHyperband, dict[int, int]]:
    """HB(16, 2) run, raised to 32 and run again; also each trial's rung count before."""
    alg = make(16, 2, seed=seed, variant=variant)
    Sim(alg, noisy).run()
    rungs_before = {t: len(tr.values) for t, tr in alg.trials.items()}
    alg.raise_max_resource()
    Sim(alg, noisy).run()
    return alg, rungs_before


def test_variants_differ_as_section_2_says() -> None:
    eid, before = raised("efficient")  # the first run is the same SH in every variant
    pid, _ = raised("preserving")
    did, _ = raised("discarding")
    # eID never wastes a paid evaluation, the others pay a little more.
    assert eid.paid_full == 1128 < pid.paid_full and eid.paid_full < did.paid_full
    auto_promoted = 0
    for alg in (eid, pid, did):
        for br in alg.brackets:
            lists = [br.pool, *br.selections]
            for i, survivors in enumerate(br.selections):
                readmitted = set(survivors) - set(lists[i])
                # Only pID brings back a trial that the new ranking had dropped.
                assert not readmitted or alg is pid
                kept = {t for t in lists[i] if before.get(t, 0) > i + 1}
                if alg is eid:  # earlier promotions are promoted again, automatically
                    assert kept <= set(survivors)
                    auto_promoted += len(kept)
    assert auto_promoted > 0
    assert any(set(s) - set(([b.pool, *b.selections])[i])
               for b in pid.brackets for i, s in enumerate(b.selections))
    discarded = [t for b in did.brackets for i, s in enumerate(b.selections)
                 for t in ([b.pool, *b.selections])[i] if before.get(t, 0) > i + 1
                 and t not in s]
    assert discarded  # dID drops earlier promotions: their higher rungs were paid for nothing


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_discarding_selects_what_a_fresh_hyperband_selects(seed: int) -> None:
    """§2.7.4: per-bracket sampler streams keyed by r_min give the same configurations, and
    dID's survivors in every round equal a fresh HB(eta*R)'s."""
    did, _ = raised("discarding", seed)
    fresh = make(32, 2, seed=seed)
    Sim(fresh, noisy).run()
    ours = {b.r_min: [configs(did, s) for s in b.selections] for b in did.brackets}
    theirs = {b.r_min: [configs(fresh, s) for s in b.selections] for b in fresh.brackets}
    assert ours == theirs
    assert did.best() is not None and fresh.best() is not None
    assert did.best()[1] == fresh.best()[1]


def test_raise_before_the_run_is_complete_is_refused() -> None:
    alg = make(9, 3)
    with pytest.raises(PreconditionError, match="not complete"):
        alg.raise_max_resource()
    sim = Sim(alg)
    for _ in range(10):
        sim.step()
    with pytest.raises(PreconditionError, match="once the study has finished"):
        alg.raise_max_resource()
    sim.run()
    alg.raise_max_resource()
    assert alg.max_resource == 27 and not alg.done()


def test_failed_trials_rank_last_and_are_never_retried() -> None:
    alg = make(9, 3)
    sim = Sim(alg, fail={0, 3, 10}).run()
    assert alg.done()
    assert [j.trial_id for j in sim.jobs].count(0) == 1
    alg.raise_max_resource()
    sim.run()
    assert [j.trial_id for j in sim.jobs if j.trial_id in (0, 3, 10)] == [0, 3, 10]
    assert alg.done() and alg.best() is not None


# --- automatic deepening ------------------------------------------------------------------


def improves(config: dict[str, Any], r: float) -> float:
    """Still improving at every budget: the study should keep deepening."""
    return config["x"] + 1.0 / r


def flat(config: dict[str, Any], r: float) -> float:
    """No gain from more resource: the study should stop at R."""
    return config["x"]


@pytest.mark.parametrize("f, ceiling, final_r, raises", [
    (improves, 81, 81, 2),
    (improves, 30, 27, 1),
    (flat, 81, 9, 0),
])
def test_auto_raise(f: Loss, ceiling: float, final_r: float, raises: int) -> None:
    alg = make(9, 3, auto_raise_threshold=0.05, max_resource_ceiling=ceiling)
    sim = Sim(alg, f).run()
    assert alg.done() and alg.max_resource == final_r and alg.auto_raises == raises
    pairs = [(j.trial_id, j.to_resource) for j in sim.jobs]
    assert len(pairs) == len(set(pairs))
    assert alg.paid_full == pytest.approx(alg.plan().total_resource)  # eID identity, again
    if raises:
        assert alg.improvement() is not None


def test_auto_raise_settings() -> None:
    with pytest.raises(SettingsError, match="max_resource_ceiling"):
        make(auto_raise_threshold=0.1)
    with pytest.raises(SettingsError, match="max_resource_ceiling"):
        make(9, auto_raise_threshold=0.1, max_resource_ceiling=3)
    with pytest.raises(SettingsError, match="variant"):
        make(variant="lazy")
    with pytest.raises(SettingsError, match="unknown setting"):
        make(conservative=True)


# --- determinism and persistence ----------------------------------------------------------


def test_state_round_trip_across_a_raise_continues_identically() -> None:
    def fresh() -> IDHyperband:
        return make(9, 3, seed=7, variant="preserving")

    whole = Sim(fresh(), noisy).run()
    whole.alg.raise_max_resource()
    whole.run()
    again = Sim(fresh(), noisy).run()
    again.alg.raise_max_resource()
    assert again.run().jobs == whole.jobs

    part = Sim(fresh(), noisy).run()
    part.alg.raise_max_resource()
    for _ in range(40):
        part.step()
    restored = fresh()
    restored.restore(json.loads(json.dumps(part.alg.state())))
    rest = Sim(restored, noisy)
    rest.running, rest.jobs = list(part.running), list(part.jobs)
    assert rest.run().jobs == whole.jobs
    assert restored.state() == whole.alg.state()
