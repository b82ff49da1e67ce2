"""Synchronous Hyperband: the bracket arithmetic of Li et al. (JMLR 2018) to the last unit, the
peers' rounding conventions, and full runs driven by a small deterministic worker pool.

Tables and tests follow shared/reference/algorithms.md §1.2, §1.3 and §1.10.
"""

from __future__ import annotations

import heapq
import json
import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from typing import Any

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
from hpod.server.algorithms.base import Sampler, SuggestContext, register_sampler
from hpod.server.algorithms.hyperband import Hyperband, bracket_table, hyperband_plan
from hpod.server.algorithms.space import Float

SPACE = SearchSpace((Float("x", 0.0, 1.0),))


def make(max_resource: float = 81, eta: int = 3, min_resource: float = 1, seed: int = 0,
         **settings: Any) -> Hyperband:
    ctx = Context(SPACE, Resource(max_resource, min_resource, eta), seed, settings)
    alg = build("hyperband", ctx)
    assert isinstance(alg, Hyperband)
    return alg


def loss(config: Mapping[str, Any], resource: float) -> float:
    """A known multi-fidelity function: the ranking inside a rung is by (x - 0.3)^2."""
    return (config["x"] - 0.3) ** 2 + 1.0 / resource


def always_ok(job: Job) -> Status:
    return Status.COMPLETED


class Pool:
    """A deterministic pool of workers. A job takes (to - from) time units; the earliest to
    finish (ties by trial id) reports its last point and ends. ``log`` is every job handed out,
    in order; ``results`` maps (bracket s, rung) to {trial: loss} for completed jobs."""

    def __init__(self, alg: Hyperband, workers: int,
                 status: Callable[[Job], Status] = always_ok,
                 metric: Callable[[Mapping[str, Any], float], float] = loss) -> None:
        self.alg = alg
        self.workers = workers
        self.status = status
        self.metric = metric
        self.clock = 0.0
        self.queue: list[tuple[float, int, Job]] = []
        self.log: list[Job] = []
        self.ended: list[int] = []
        self.results: dict[tuple[int, int], dict[int, float]] = defaultdict(dict)

    def fill(self) -> list[Job]:
        jobs = self.alg.next_jobs(self.workers - len(self.queue))
        for job in jobs:
            self.log.append(job)
            span = job.to_resource - job.from_resource
            heapq.heappush(self.queue, (self.clock + span, job.trial_id, job))
        return jobs

    def step(self) -> bool:
        self.fill()
        if not self.queue:
            return False
        self.clock, _, job = heapq.heappop(self.queue)
        self.finish(job)
        return True

    def finish(self, job: Job) -> None:
        status = self.status(job)
        if status is Status.COMPLETED:
            value = self.metric(job.config, job.to_resource)
            assert self.alg.on_progress(job.trial_id, job.to_resource, value) is Decision.CONTINUE
            self.results[(job.bracket, job.rung)][job.trial_id] = value
            self.alg.on_job_end(job, Outcome(Status.COMPLETED, value, job.to_resource, 1.0))
        else:
            self.alg.on_job_end(job, Outcome(status))
        self.ended.append(job.trial_id)

    def run(self, max_steps: int = 100_000) -> Pool:
        for _ in range(max_steps):
            if not self.step():
                return self
        raise AssertionError("the study did not finish")


def trained(jobs: Sequence[Job]) -> float:
    return sum(j.to_resource - j.from_resource for j in jobs)


# --- exact tables (§1.2) -------------------------------------------------------------------


def test_paper_table_r81_eta3() -> None:
    plan = hyperband_plan(81, 3)
    table = [[(r.n, r.r) for r in b.rungs] for b in plan.brackets]
    assert [b.s for b in plan.brackets] == [4, 3, 2, 1, 0]
    assert table == [
        [(81, 1), (27, 3), (9, 9), (3, 27), (1, 81)],
        [(34, 3), (11, 9), (3, 27), (1, 81)],
        [(15, 9), (5, 27), (1, 81)],
        [(8, 27), (2, 81)],
        [(5, 81)],
    ]
    assert [b.budget for b in plan.brackets] == [405, 363, 351, 378, 405]
    assert plan.max_trials == 143
    assert plan.total_resource == 1902
    # With checkpoint resume a promoted trial pays only r_i - r_{i-1}.
    assert plan.incremental_resource == 297 + 276 + 279 + 324 + 405 == 1581


def test_plan_json_is_what_the_cli_prints() -> None:
    d = json.loads(json.dumps(hyperband_plan(81, 3).to_dict()))
    assert list(d) == ["brackets", "total_resource"]
    assert d["total_resource"] == 1902
    assert d["brackets"][0] == {"s": 4, "rungs": [{"n": 81, "r": 1}, {"n": 27, "r": 3},
                                                  {"n": 9, "r": 9}, {"n": 3, "r": 27},
                                                  {"n": 1, "r": 81}]}
    assert d["brackets"][-1] == {"s": 0, "rungs": [{"n": 5, "r": 81}]}


TABLES = [  # (R, eta, n per bracket s = s_max..0, configurations, total budget)
    (81, 3, [81, 34, 15, 8, 5], 143, Fraction(1902)),
    (27, 3, [27, 12, 6, 4], 49, Fraction(423)),
    (9, 3, [9, 5, 3], 17, Fraction(78)),
    (16, 2, [16, 10, 7, 5, 5], 43, Fraction(372)),
    (32, 2, [32, 20, 12, 8, 6, 6], 84, Fraction(1128)),
    (64, 2, [64, 38, 23, 14, 10, 7, 7], 163, Fraction(2948)),
    (48, 3, [27, 12, 6, 4], 49, Fraction(752)),
    (96, 3, [81, 34, 15, 8, 5], 143, Fraction(1902 * 96, 81)),  # 2254.22...
    (243, 3, [243, 98, 41, 18, 9, 6], 415, Fraction(8457)),
]


@pytest.mark.parametrize("big_r,eta,n0,configs,total", TABLES)
def test_paper_tables(big_r: int, eta: int, n0: list[int], configs: int,
                      total: Fraction) -> None:
    table = bracket_table(big_r, eta)
    s_max = len(n0) - 1
    assert [b.s for b in table] == list(range(s_max, -1, -1))
    assert [b.rungs[0][0] for b in table] == n0
    for b in table:
        # Algorithm 1: n_i = ⌊n·η^-i⌋ and r_i = R·η^(i-s), exactly.
        assert [n for n, _ in b.rungs] == [n0[s_max - b.s] // eta**i for i in range(b.s + 1)]
        assert [r for _, r in b.rungs] == [Fraction(big_r, eta ** (b.s - i))
                                           for i in range(b.s + 1)]
    plan = hyperband_plan(big_r, eta)
    assert plan.max_trials == configs
    assert plan.total_resource == pytest.approx(float(total), rel=1e-15)
    assert [b.budget for b in plan.brackets] == pytest.approx(
        [float(sum(n * r for n, r in b.rungs)) for b in table])


def test_fractional_and_six_bracket_headlines() -> None:
    assert hyperband_plan(96, 3).total_resource == pytest.approx(2254.22, abs=0.005)
    assert hyperband_plan(48, 3).brackets[0].rungs[0].r == pytest.approx(48 / 27)
    assert len(hyperband_plan(243, 3).brackets) == 6  # a float log(243, 3) gives 4.999...
    assert len(hyperband_plan(1000, 10).brackets) == 4  # and log(1000, 10) gives 2.999...


# --- peer conventions (§1.3, §1.10.2) ------------------------------------------------------


@pytest.mark.parametrize("rounding,counts,total", [
    ("ray", [[81, 27, 9, 3, 1], [34, 12, 4, 2], [15, 5, 2], [8, 3], [5]], 2181),
    ("hpbandster", [[81, 27, 9, 3, 1], [27, 9, 3, 1], [9, 3, 1], [6, 2], [5]], 1701),
    ("paper", [[81, 27, 9, 3, 1], [34, 11, 3, 1], [15, 5, 1], [8, 2], [5]], 1902),
])
def test_rounding_conventions(rounding: str, counts: list[list[int]], total: int) -> None:
    plan = hyperband_plan(81, 3, rounding=rounding)
    assert [[r.n for r in b.rungs] for b in plan.brackets] == counts
    assert plan.total_resource == total
    assert make(rounding=rounding).plan().total_resource == total


@pytest.mark.parametrize("mode,resources", [
    ("float", [48 / 27, 48 / 9, 16, 48]),
    ("int", [1, 5, 16, 48]),
    ("round", [2, 5, 16, 48]),
])
def test_resource_rounding(mode: str, resources: list[float]) -> None:
    plan = hyperband_plan(48, 3, resource_rounding=mode)
    assert [r.r for r in plan.brackets[0].rungs] == pytest.approx(resources)
    assert bool(plan.notes) == (mode == "float")  # the plan says when resources are fractional


def test_resource_rounding_that_collapses_rungs_is_rejected() -> None:
    with pytest.raises(SettingsError) as err:
        hyperband_plan(2, 2, 0.25, resource_rounding="int")  # 0.25 -> 0
    assert err.value.field == "algorithm.settings.resource_rounding"


# --- s_max exactness (§1.10.3) -------------------------------------------------------------


@pytest.mark.parametrize("eta", [2, 3, 4, 5, 10])
@pytest.mark.parametrize("r_min", [1, 0.25, 2, 0.1, 7])
def test_s_max_exact_for_powers_of_eta(eta: int, r_min: float) -> None:
    unit = Fraction(repr(float(r_min)))
    for k in range(1, 13):
        big_r = float(unit * eta**k)
        assert len(bracket_table(big_r, eta, r_min)) == k + 1, (big_r, eta, r_min)
        below = float(unit * eta**k - unit / 2)  # just short of the next power
        assert len(bracket_table(below, eta, r_min)) == k, (below, eta, r_min)


# --- invariants (§1.10.4) ------------------------------------------------------------------

GRID = [(big_r, eta, r_min) for eta in (2, 3, 4, 5) for big_r in (5, 9, 27, 48, 81, 100, 256)
        for r_min in (1, 0.5, 3)]


@pytest.mark.parametrize("rounding", ["paper", "ray", "hpbandster"])
def test_invariants(rounding: str) -> None:
    for big_r, eta, r_min in GRID:
        table = bracket_table(big_r, eta, r_min, rounding)
        s_max = table[0].s
        assert r_min * eta**s_max <= big_r < r_min * eta ** (s_max + 1)
        assert [b.s for b in table] == list(range(s_max, -1, -1))
        for b in table:
            ns = [n for n, _ in b.rungs]
            rs = [r for _, r in b.rungs]
            assert len(b.rungs) == b.s + 1
            assert rs[-1] == Fraction(big_r)  # every bracket ends at R
            assert rs[0] * eta**b.s == Fraction(big_r)
            assert rs[0] >= Fraction(repr(float(r_min)))
            assert all(n >= 1 for n in ns)
            assert all(a >= b for a, b in zip(ns, ns[1:], strict=False))
            if rounding == "paper":
                assert all(b == a // eta for a, b in zip(ns, ns[1:], strict=False))
        assert table[-1].rungs == ((s_max + 1, Fraction(big_r)),)  # s=0: random search at R


# --- full runs -----------------------------------------------------------------------------


def check_survivors(pool: Pool, alg: Hyperband, eta: int, keep: Callable[[int], int]) -> None:
    """Every rung's members are exactly the lowest-loss ``keep(n)`` of the rung below."""
    checked = 0
    for (s, i), res in pool.results.items():
        nxt = pool.results.get((s, i + 1))
        if nxt is None:
            continue
        ranked = sorted(res, key=lambda t: (res[t], t))
        assert sorted(nxt) == sorted(ranked[: keep(len(res))]), (s, i)
        checked += 1
    assert checked == sum(b.s for b in alg.table)


def test_full_run_promotes_exactly_the_best_and_resumes() -> None:
    alg = make(81, 3, seed=1)
    pool = Pool(alg, workers=4).run()
    assert alg.done()
    assert len({j.trial_id for j in pool.log}) == 143
    check_survivors(pool, alg, 3, lambda n: n // 3)
    counts = defaultdict(int)
    for j in pool.log:
        counts[(j.bracket, j.rung)] += 1
    assert [[counts[(b.s, i)] for i in range(b.s + 1)] for b in alg.table] == [
        [81, 27, 9, 3, 1], [34, 11, 3, 1], [15, 5, 1], [8, 2], [5]]
    # Promotion resumes: the sum of per-rung increments, not of full rungs.
    assert trained(pool.log) == alg.plan().incremental_resource == 1581
    assert trained(pool.log) < alg.plan().total_resource
    best = alg.best()
    at_r = {t: v for (s, i), res in pool.results.items() if i == s for t, v in res.items()}
    assert best == min(((t, v) for t, v in at_r.items()), key=lambda tv: (tv[1], tv[0]))


def test_ties_are_broken_by_trial_id() -> None:
    alg = make(27, 3, seed=10)
    pool = Pool(alg, workers=4, metric=lambda config, resource: 1.0).run()
    check_survivors(pool, alg, 3, lambda n: n // 3)  # sorted by (loss, id): lowest ids go on
    assert alg.best() == (min(pool.results[(3, 3)]), 1.0)


def test_each_trial_trains_one_contiguous_chain() -> None:
    pool = Pool(make(27, 3, seed=2), workers=3).run()
    chains: dict[int, list[Job]] = defaultdict(list)
    for j in pool.log:
        chains[j.trial_id].append(j)
    for tid, jobs in chains.items():
        assert jobs[0].from_resource == 0 and jobs[0].rung == 0
        assert len({j.bracket for j in jobs}) == 1
        assert [j.rung for j in jobs] == list(range(len(jobs)))
        for a, b in zip(jobs, jobs[1:], strict=False):
            assert b.from_resource == a.to_resource < b.to_resource, tid
        assert all(j.config == jobs[0].config for j in jobs)


def test_ray_rounding_run_keeps_the_ceiling() -> None:
    alg = make(81, 3, seed=3, rounding="ray")
    pool = Pool(alg, workers=8).run()
    check_survivors(pool, alg, 3, lambda n: -(-n // 3))
    assert trained(pool.log) == alg.plan().incremental_resource


def test_fractional_resources_run() -> None:
    alg = make(48, 3, seed=4)
    pool = Pool(alg, workers=5).run()
    assert alg.done()
    assert trained(pool.log) == pytest.approx(alg.plan().incremental_resource)
    assert max(j.to_resource for j in pool.log) == 48


def test_failed_and_lost_trials_never_stall_a_rung() -> None:
    def flaky(job: Job) -> Status:
        if job.trial_id % 5 == 0:
            return Status.FAILED
        if job.trial_id % 7 == 3 and job.rung > 0:
            return Status.LOST
        return Status.COMPLETED

    alg = make(81, 3, seed=5)
    pool = Pool(alg, workers=6, status=flaky).run()
    assert alg.done() and not alg.running
    assert sorted(pool.ended) == sorted(j.trial_id for j in pool.log)  # every job ended once
    broken = {j.trial_id for j in pool.log if flaky(j) is not Status.COMPLETED}
    for tid in broken:  # a failed or lost trial gets no further job
        last = max(i for i, j in enumerate(pool.log) if j.trial_id == tid)
        assert flaky(pool.log[last]) is not Status.COMPLETED
    best = alg.best()
    assert best is not None and best[0] not in broken and math.isfinite(best[1])


def test_everything_failing_still_finishes() -> None:
    alg = make(27, 3)
    pool = Pool(alg, workers=2, status=lambda job: Status.FAILED).run()
    assert alg.done() and alg.best() is None
    assert len(pool.log) == alg.plan().max_trials  # nothing promoted


def test_brackets_run_side_by_side() -> None:
    alg = make(81, 3)
    jobs = alg.next_jobs(100)
    # The most exploratory bracket first, then the next, before any rung has a result.
    assert [j.bracket for j in jobs] == [4] * 81 + [3] * 19
    assert [j.trial_id for j in jobs] == list(range(100))
    more = alg.next_jobs(1000)
    assert [j.bracket for j in more] == [3] * 15 + [2] * 15 + [1] * 8 + [0] * 5
    assert alg.next_jobs(10) == []  # every bracket waits on its first rung
    assert all(j.rung == 0 and j.from_resource == 0 for j in jobs + more)


def test_a_free_worker_gets_work_from_another_bracket() -> None:
    alg = make(9, 3)
    first = alg.next_jobs(9)  # all of bracket s=2's first rung
    assert {j.bracket for j in first} == {2}
    alg.on_job_end(first[0], Outcome(Status.COMPLETED, 1.0, 1.0))
    nxt = alg.next_jobs(1)
    assert len(nxt) == 1 and nxt[0].bracket == 1  # s=2 waits on its rung; s=1 has work


def test_deterministic_given_a_seed() -> None:
    runs = [Pool(make(81, 3, seed=s), workers=7).run() for s in (11, 11, 12)]
    a, b, c = ([j.to_dict() for j in p.log] for p in runs)
    assert a == b
    assert [j["config"] for j in a] != [j["config"] for j in c]


@pytest.mark.parametrize("cut", [0, 1, 37, 150, 260])
def test_save_and_restore_mid_run(cut: int) -> None:
    def flaky(job: Job) -> Status:
        return Status.FAILED if job.trial_id % 9 == 4 else Status.COMPLETED

    reference = Pool(make(81, 3, seed=21), workers=5, status=flaky).run()
    pool = Pool(make(81, 3, seed=21), workers=5, status=flaky)
    for _ in range(cut):
        pool.step()
    saved = json.loads(json.dumps(pool.alg.state(), allow_nan=False))
    fresh = make(81, 3, seed=21)
    fresh.restore(saved)
    assert fresh.state() == saved
    pool.alg = fresh
    pool.run()
    assert [j.to_dict() for j in pool.log] == [j.to_dict() for j in reference.log]
    assert fresh.done() and fresh.best() == reference.alg.best()


def test_restore_refuses_other_settings() -> None:
    state = make(81, 3).state()
    with pytest.raises(ValueError):
        make(81, 3, rounding="ray").restore(state)


def test_repeated_job_end_changes_nothing() -> None:
    alg = make(9, 3)
    job = alg.next_jobs(1)[0]
    alg.on_job_end(job, Outcome(Status.COMPLETED, 0.5, job.to_resource))
    before = alg.state()
    alg.on_job_end(job, Outcome(Status.COMPLETED, 0.1, job.to_resource))
    assert alg.state() == before
    assert alg.on_progress(999, 1.0, 0.0) is Decision.CONTINUE  # unknown trial: harmless


def test_iterations_repeat_every_bracket() -> None:
    alg = make(27, 3, seed=6, iterations=2)
    assert alg.plan().max_trials == 98 and alg.plan().total_resource == 846
    pool = Pool(alg, workers=4).run()
    assert len({j.trial_id for j in pool.log}) == 98
    assert trained(pool.log) == alg.plan().incremental_resource


def overfits(config: Mapping[str, Any], resource: float) -> float:
    """Loss that grows with training, so the best point of all is at a low rung."""
    return (config["x"] - 0.3) ** 2 + resource / 100


def test_return_rules() -> None:
    at_r = make(27, 3, seed=8)
    anywhere = make(27, 3, seed=8, return_rule="best_any")
    assert at_r.best() is None  # nothing yet
    pool = Pool(at_r, workers=3, metric=overfits).run()
    Pool(anywhere, workers=3, metric=overfits).run()
    # (value, id) pairs, so that min breaks ties by trial id as the algorithm does.
    every = min((v, t) for res in pool.results.values() for t, v in res.items())
    final = min((v, t) for (s, i), res in pool.results.items() if i == s
                for t, v in res.items())
    assert anywhere.best() == (every[1], every[0])
    assert at_r.best() == (final[1], final[0])
    assert every[0] < final[0]


# --- the sampler is fed --------------------------------------------------------------------


class Recorder(Sampler):
    """Random configs; records what Hyperband tells it."""

    name = "test-recorder"
    calls: list[tuple[Any, ...]] = []

    def __init__(self, ctx: Context, rng: Any) -> None:
        self.rng = rng
        Recorder.calls = []

    def suggest(self, ctx: SuggestContext) -> dict[str, Any]:
        Recorder.calls.append(("suggest", ctx.trial_id, len(ctx.pending)))
        return {"x": float(self.rng.uniform())}

    def observe(self, trial_id: int, config: Mapping[str, Any], resource: float,
                value: float) -> None:
        Recorder.calls.append(("observe", trial_id, resource))

    def on_trial_end(self, trial_id: int, config: Mapping[str, Any], status: Status) -> None:
        Recorder.calls.append(("end", trial_id, status))

    def state(self) -> dict[str, Any]:
        return {}

    def restore(self, state: Mapping[str, Any]) -> None:
        pass


register_sampler("test-recorder")(Recorder)


def test_sampler_sees_every_point_once_and_every_end_once() -> None:
    alg = make(27, 3, seed=9, sampler="test-recorder")
    pool = Pool(alg, workers=4).run()
    calls = Recorder.calls
    suggested = [c[1] for c in calls if c[0] == "suggest"]
    assert suggested == sorted({j.trial_id for j in pool.log})
    assert sorted(c[1:] for c in calls if c[0] == "observe") == sorted(
        (j.trial_id, j.to_resource) for j in pool.log)
    assert sorted(c[1] for c in calls if c[0] == "end") == suggested
    # Pending configs are the running trials: 4 workers, so at most 3 others.
    assert max(c[2] for c in calls if c[0] == "suggest") <= 3


# --- settings ------------------------------------------------------------------------------


@pytest.mark.parametrize("settings,field", [
    ({"roundng": "paper"}, "algorithm.settings.roundng"),
    ({"rounding": "ceil"}, "algorithm.settings.rounding"),
    ({"resource_rounding": "floor"}, "algorithm.settings.resource_rounding"),
    ({"return_rule": "best"}, "algorithm.settings.return_rule"),
    ({"iterations": 0}, "algorithm.settings.iterations"),
    ({"iterations": 1.5}, "algorithm.settings.iterations"),
    ({"iterations": True}, "algorithm.settings.iterations"),
    ({"sampler": "nope"}, "algorithm.settings.sampler"),
])
def test_bad_settings_name_the_field(settings: dict[str, Any], field: str) -> None:
    with pytest.raises(SettingsError) as err:
        make(**settings)
    assert err.value.field == field


def test_bad_resources_name_the_field() -> None:
    with pytest.raises(SettingsError) as err:
        hyperband_plan(81, 1)
    assert err.value.field == "resource.eta"
    with pytest.raises(SettingsError) as err:
        hyperband_plan(3, 3, 9)
    assert err.value.field == "resource.min_resource"
    with pytest.raises(SettingsError) as err:
        hyperband_plan(float("inf"), 3)
    assert err.value.field == "resource.max_resource"


def test_settings_as_protobuf_doubles() -> None:
    assert make(iterations=2.0).iterations == 2


def test_finalized_names_the_paused_trials_a_rung_dropped() -> None:
    alg = make(9, 3)  # brackets s=2 (9, 3, 1 trials), s=1, s=0
    jobs = alg.next_jobs(9)  # bracket s=2, rung 0
    assert len(jobs) == 9
    for i, job in enumerate(jobs[:-1]):
        alg.on_job_end(job, Outcome(Status.COMPLETED, float(i), job.to_resource))
        assert alg.finalized() == []  # the rung is still open: every trial may go on
    alg.on_job_end(jobs[-1], Outcome(Status.COMPLETED, 8.0, jobs[-1].to_resource))
    # Rung 0 closed: the best 3 go on, the other 6 paused trials are done for good.
    assert sorted(alg.finalized()) == sorted(j.trial_id for j in jobs[3:])
    nxt = alg.next_jobs(1)
    alg.on_job_end(nxt[0], Outcome(Status.COMPLETED, 0.0, nxt[0].to_resource))
    assert alg.finalized() == []  # only the latest job end's decisions are reported
