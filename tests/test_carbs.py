"""CARBS (server/algorithms/carbs.py): the checks of Fetterman et al. (2023) and the fixes
of the reference's known bugs."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from hpod.server.algorithms import (
    Context,
    Outcome,
    Resource,
    SearchSpace,
    SettingsError,
    Status,
    build,
)
from hpod.server.algorithms.base import SuggestContext, rng_for
from hpod.server.algorithms.carbs import (
    CarbsConfig,
    CarbsCore,
    CarbsSampler,
    CostCapError,
    Group,
    Obs,
    Surrogates,
    acquisition,
    build_dims,
    clamp_reference,
    cost_threshold,
    expected_improvement,
    group_observations,
    pareto_groups,
    success_probability,
)
from hpod.server.algorithms.samplers import make_sampler
from hpod.server.algorithms.space import Categorical, Float, Int
from scipy.stats import norm

SPACE = SearchSpace((Float("lr", 1e-4, 1.0, log=True), Int("width", 8, 512, log=True)))


def width_problem(config: dict) -> tuple[float, float]:
    """Value falls with width (cost = width) and is best at lr = 1e-3 for every width."""
    value = ((math.log10(config["lr"]) + 3.0) ** 2 + 1.0) * 64.0 / config["width"]
    return value, float(config["width"])


def make(seed: int = 0, trials: int = 30, space: SearchSpace = SPACE, **settings):
    ctx = Context(space, Resource(max_resource=10), seed=seed, settings=settings,
                  max_trials=trials)
    return build("carbs", ctx)


def run(alg, problem=width_problem, parallel: int = 1, until: int | None = None) -> list[dict]:
    """Drive ``alg`` to the end (or until ``until`` trials started); the configs it proposed."""
    configs = []
    while not alg.done() and (until is None or alg.started < until):
        jobs = alg.next_jobs(parallel)
        for job in jobs:
            configs.append(job.config)
            value, cost = problem(job.config)
            alg.on_job_end(job, Outcome(Status.COMPLETED, value, job.to_resource, cost))
    return configs


def core(settings: dict | None = None, space: SearchSpace = SPACE, seed: int = 0) -> CarbsCore:
    return CarbsCore(space, settings or {}, rng_for(seed, 0))


def obs(trial: int, value: float, cost: float, x: tuple = (0.0,)) -> Obs:
    return Obs(trial, {}, np.array(x, dtype=float), value, cost)


# --- 1. transforms ---------------------------------------------------------------------------


def test_transforms_match_the_reference_and_round_trip():
    space = SearchSpace((Float("lr", 1e-6, 1.0, log=True), Float("p", 0.01, 0.99),
                         Float("x", -10.0, 10.0), Int("n", 8, 1024, log=True), Int("k", 1, 9)))
    cfg = CarbsConfig.from_settings({"scale": {"lr": 0.5, "p": 1.0, "x": 2.0, "k": 5.0},
                                     "transform": {"p": "logit"}, "rounding": {"n": 8}})
    lr, p, x, n, k = build_dims(space, cfg)
    assert lr.to_basic(1e-4) == pytest.approx(-8.0)
    assert p.to_basic(0.9) == pytest.approx(math.log10(9))
    assert x.to_basic(3.0) == pytest.approx(1.5)
    for dim, value in ((lr, 3.7e-3), (p, 0.42), (x, -7.25)):
        assert dim.to_param(float(dim.to_basic(value))) == pytest.approx(value, rel=1e-12)
    # integer rounding with a factor, inside basic space and on the way out
    us = np.linspace(*n.bounds(), 200)
    assert all(n.to_param(u) % 8 == 0 for u in us)
    assert np.all(np.asarray(n.from_basic(n.round_basic(us))).round(9) % 8 == 0)
    # integer bounds are widened by 0.1 before the transform
    assert k.bounds() == pytest.approx((0.9 / 5.0, 9.1 / 5.0))
    assert n.bounds() == pytest.approx((math.log10(7.9) / n.scale, math.log10(1024.1) / n.scale))


def test_settings_are_checked():
    with pytest.raises(SettingsError, match="unknown setting"):
        make(radius=0.2)
    with pytest.raises(SettingsError, match="logit"):
        make(transform={"width": "logit"})
    with pytest.raises(SettingsError, match="float and int"):
        make(space=SearchSpace((Categorical("opt", ("adam", "sgd")),)))
    with pytest.raises(SettingsError, match="unknown parameters"):
        make(scale={"nope": 1.0})
    with pytest.raises(SettingsError, match="max_trials"):
        make(trials=0)
    compat = CarbsConfig.from_settings({"compat": True, "cost_cap_fallback": "error"})
    assert compat.compat_success_variance and compat.compat_pareto_quantile
    assert compat.cost_cap_fallback == "error"  # an explicit setting wins over compat


def test_fixed_and_logit_parameters_with_equal_costs():
    # cost_source = resource gives every trial the same cost: the front is one group.
    space = SearchSpace((Float("lr", 1e-4, 1.0, log=True), Float("fixed", 0.5, 0.5),
                         Float("p", 0.0, 1.0)))
    alg = make(space=space, trials=12, transform={"p": "logit"})
    configs = run(alg, lambda c: ((math.log10(c["lr"]) + 3) ** 2 + c["p"], 10.0), parallel=3)
    assert all(c["fixed"] == 0.5 and 0.0 < c["p"] < 1.0 for c in configs)
    assert len(alg.pareto_front()) == 1


# --- 2. Pareto groups ------------------------------------------------------------------------


def _docstring_groups() -> dict[str, Group]:
    """The reference's docstring example, negated (it maximises, we minimise)."""
    rows = {"A": [(0.0, 1), (1.0, 1)], "B": [(0.6, 2)], "C": [(0.55, 3), (0.75, 3)],
            "D": [(0.8, 4)]}
    return {name: Group([obs(i, -v, c, (i,)) for v, c in members])
            for i, (name, members) in enumerate(rows.items())}


def test_pareto_groups_standard_and_conservative():
    groups = _docstring_groups()
    name = {id(g): k for k, g in groups.items()}
    standard = pareto_groups(list(groups.values()), 0.2, conservative=False)
    conservative = pareto_groups(list(groups.values()), 0.2, conservative=True)
    assert [name[id(g)] for g in standard] == ["A", "B", "C", "D"]
    assert [name[id(g)] for g in conservative] == ["A", "C", "D"]


def test_grouping_merges_identical_inputs():
    groups = group_observations([obs(0, 1.0, 1.0, (0.5, 1.0)), obs(1, 2.0, 3.0, (0.1, 1.0)),
                                 obs(2, 3.0, 5.0, (0.5, 1.0 + 1e-12))])
    assert [len(g.members) for g in groups] == [2, 1]
    assert groups[0].cost == 3.0 and groups[0].value == 2.0 and groups[0].best == 1.0


@pytest.mark.parametrize("compat", [False, True])
def test_issue6_duplicated_inputs_with_costs_1_and_9_do_not_crash(compat):
    # One group (same input twice) with mean cost 5: the reference's quantile over individual
    # costs (2.6) leaves its cheap bucket empty and max() raises.
    groups = group_observations([obs(0, 1.0, 1.0), obs(1, 2.0, 9.0)])
    front = pareto_groups(groups, 0.2, conservative=True, quantile_over_observations=compat)
    assert len(front) == 1 and front[0].cost == 5.0


def test_issue6_parallel_duplicate_suggestions_end_to_end():
    # A coarse integer space: parallel suggestions collide, duplicates get different costs.
    space = SearchSpace((Int("a", 1, 4), Int("b", 1, 4)))
    alg = make(space=space, trials=40, scale={"a": 1.0, "b": 1.0})
    costs = itertools.cycle([1.0, 9.0, 3.0])

    def problem(config: dict) -> tuple[float, float]:
        return float((config["a"] - 3) ** 2 + config["b"]), next(costs)

    configs = run(alg, problem, parallel=4)
    assert len(configs) == 40
    assert len({tuple(c.values()) for c in configs}) < 40  # duplicates did happen
    assert alg.events.get("fallback_random", 0) == 0 and alg.pareto_front()


# --- 3. resample cadence ---------------------------------------------------------------------


def test_resample_cadence_and_choice():
    c = core({"num_random_samples": 4, "resample_frequency": 5})
    kinds = {}
    for trial in range(18):
        config, info = c.suggest(trial)
        kinds[len(c.successes)] = info["kind"]
        if info["kind"] == "resample":
            front = sorted(c.front_groups(False), key=lambda g: g.cost)
            sizes = [len(g.members) for g in front]
            chosen = next(g for g in front if len(g.members) == min(sizes))
            assert np.allclose(c.outstanding[trial].x, chosen.x)
        c.observe(trial, config, *width_problem(config))
    assert [n for n, k in kinds.items() if k == "resample"] == [6, 11, 16]
    assert all(kinds[n] == "random" for n in range(4))


# --- 4. acquisition pieces -------------------------------------------------------------------


def test_acquisition_masks_costs_at_or_above_the_cap():
    ones = np.ones(4)
    acq = acquisition(ones, ones, ones, np.array([1.0, 5.0, 5.1, 9.0]), cap=5.0)
    assert acq.tolist() == [1.0, 0.0, 0.0, 0.0]
    assert acquisition(ones, ones, ones, np.full(4, 1e9), cap=None).tolist() == ones.tolist()


def test_success_probability_uses_std_and_compat_uses_variance():
    mean, var = np.array([-0.5]), np.array([0.04])
    assert success_probability(mean, var, compat=False)[0] == pytest.approx(norm.cdf(2.5))
    assert success_probability(mean, var, compat=True)[0] == pytest.approx(norm.cdf(12.5))


def test_success_probability_is_one_without_failures_and_low_near_failures():
    succ = [obs(i, float(i), 1.0 + i, (x,)) for i, x in enumerate(np.linspace(0, 0.7, 8))]
    fails = [Obs(10, {}, np.array([1.2])), Obs(11, {}, np.array([1.3]))]
    where = np.array([[0.3], [1.25]])
    for failures in ([], fails):
        models = Surrogates(CarbsConfig(), succ, failures, np.empty((0, 1)), succ,
                            np.random.default_rng(0))
        p = models.predict(where)["p_success"]
        assert p.tolist() == [1.0, 1.0] if not failures else p[0] > 0.9 > 0.1 > p[1]


def test_expected_improvement_numerics():
    z = np.linspace(-30, 10, 4001)
    sigma = 0.7
    ei = expected_improvement(z * sigma, np.full_like(z, sigma**2), np.zeros_like(z), 0.0)
    exact = sigma * (norm.pdf(z) + z * norm.cdf(z))
    assert np.all(np.isfinite(ei)) and np.all(ei >= 0)
    np.testing.assert_allclose(ei, exact, atol=1e-6, rtol=1e-6)
    assert np.isfinite(expected_improvement(np.array([-1e3]), np.array([1e-6]),
                                            np.zeros(1), 1.0)).all()


def test_cost_threshold_is_log_uniform_along_the_front_and_capped():
    rng = np.random.default_rng(0)
    draws = np.array([cost_threshold(rng, 1.0, 100.0, None) for _ in range(4000)])
    assert draws.min() >= 1.0 and draws.max() <= 100.0
    assert np.median(np.log10(draws)) == pytest.approx(1.0, abs=0.1)  # log-uniform
    capped = [cost_threshold(rng, 1.0, 100.0, 5.0) for _ in range(200)]
    assert max(capped) <= 5.0
    assert clamp_reference(np.array([-1.0, 0.5]), 0.0).tolist() == [0.0, 0.5]


def test_front_model_gives_the_reference_at_each_predicted_cost():
    # A clean front: costlier is better. The front GP must rise with cost and clamp outside.
    front = [obs(i, 10.0 / c, c, (i / 10,)) for i, c in enumerate([1.0, 2, 4, 8, 16, 32])]
    models = Surrogates(CarbsConfig(), front, [], np.empty((0, 1)), front,
                        np.random.default_rng(0))
    at = [models.pareto_at_cost(c) for c in (1.0, 3.0, 10.0, 32.0)]
    assert at == sorted(at) and at[0] < at[-1]
    assert models.pareto_at_cost(1000.0) == pytest.approx(models.pareto_at_cost(32.0))
    # so, with the same mean and variance, a cheaper candidate has the larger improvement
    ref = models.pareto_at(models._logcost(np.array([2.0, 16.0])))
    ei = expected_improvement(np.zeros(2), np.ones(2), ref, 1.0)
    assert ei[0] > ei[1]


# --- 5/6. pending trials, cost cap -----------------------------------------------------------


def test_parallel_suggestions_are_distinct_and_observing_forgets_them():
    c = core({"resample_frequency": 0})
    for trial in range(6):
        config, _ = c.suggest(trial)
        c.observe(trial, config, *width_problem(config))
    pending = [c.suggest(t)[0] for t in range(6, 14)]
    points = [(p["lr"], p["width"]) for p in pending]
    assert len(set(points)) == len(points)
    assert len(c.outstanding) == 8
    c.observe(6, pending[0], *width_problem(pending[0]))
    assert 6 not in c.outstanding and len(c.outstanding) == 7


def _capped(fallback: str) -> CarbsCore:
    c = core({"max_suggestion_cost": 1e-3, "cost_cap_fallback": fallback, "resample_frequency": 0})
    for trial in range(4):  # the random phase: the cap plays no part yet
        config, _ = c.suggest(trial)
        c.observe(trial, config, *width_problem(config))
    return c


def test_cost_cap_unmet_is_counted_and_never_silent():
    c = _capped("cheapest")
    config, info = c.suggest(4)
    assert info["kind"] == "cheapest" and c.events["cost_cap_unmet"] == 1
    assert info["predicted_cost"] < min(o.cost for o in c.successes)
    with pytest.raises(CostCapError, match="max_suggestion_cost"):
        _capped("error").suggest(4)
    c = _capped("random")
    assert c.suggest(4)[1]["kind"] == "fallback_random" and c.events["cost_cap_unmet"] == 1


def test_cost_cap_masks_by_predicted_cost():
    # The cap is soft, as in the reference: it holds for the cost model's mean prediction.
    alg = make(trials=25, max_suggestion_cost=100.0, resample_frequency=0)
    predicted, configs = [], []
    while not alg.done():
        (job,) = alg.next_jobs(1)
        predicted.append(alg.info[job.trial_id].get("predicted_cost"))
        configs.append(job.config)
        alg.on_job_end(job, Outcome(Status.COMPLETED, *width_problem(job.config)[:1],
                                    cost=float(job.config["width"])))
    assert all(p < 100.0 for p in predicted[4:])
    assert sum(c["width"] < 100 for c in configs) >= 0.6 * len(configs)
    assert alg.events.get("cost_cap_unmet", 0) == 0


# --- determinism and persistence -------------------------------------------------------------


def test_same_seed_same_suggestions_and_no_global_rng():
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    threads = torch.get_num_threads()
    a = run(make(seed=3, trials=14), parallel=3)
    b = run(make(seed=3, trials=14), parallel=3)
    assert a == b
    assert run(make(seed=4, trials=6)) != a[:6]
    assert torch.equal(torch.get_rng_state(), torch_state) and torch.get_num_threads() == threads
    assert np.array_equal(np.random.get_state()[1], np_state)


def test_state_json_round_trip_continues_identically():
    alg = make(seed=5, trials=20, global_exploration_fraction=0.3)
    run(alg, parallel=2, until=12)
    jobs = alg.next_jobs(2)  # two trials in flight at the snapshot
    saved = json.loads(json.dumps(alg.state(), allow_nan=False))
    twin = make(seed=5, trials=20, global_exploration_fraction=0.3)
    twin.restore(saved)
    for a in (alg, twin):
        for job in jobs:
            a.on_job_end(job, Outcome(Status.COMPLETED, *width_problem(job.config)[:1],
                                      cost=width_problem(job.config)[1]))
    assert run(alg, parallel=2) == run(twin, parallel=2)
    assert alg.state() == twin.state() and alg.best() == twin.best()
    assert alg.events["global"] > 0  # the global-exploration steps (imbue-ai/carbs#8) ran


def test_failures_lost_trials_and_resource_as_parameter():
    space = SearchSpace((Float("lr", 1e-4, 1.0, log=True), Int("epoch", 1, 10)))
    alg = make(space=space, trials=8)
    jobs = alg.next_jobs(3)
    assert [j.to_resource for j in jobs] == [float(j.config["epoch"]) for j in jobs]
    alg.on_job_end(jobs[0], Outcome(Status.COMPLETED, 1.0, jobs[0].to_resource))  # no cost
    alg.on_job_end(jobs[1], Outcome(Status.FAILED))
    alg.on_job_end(jobs[2], Outcome(Status.LOST))
    assert alg.core.successes[0].cost == jobs[0].to_resource  # cost falls back to the resource
    assert len(alg.core.failures) == 1 and not alg.core.outstanding
    assert alg.best() == (0, 1.0) and alg.plan().total_resource is None


def test_sampler_is_registered_and_uses_the_resource_as_cost():
    ctx = Context(SPACE, Resource(max_resource=9), seed=0, settings={"sampler": "carbs"})
    sampler = make_sampler(ctx, rng_for(0, 0))
    assert isinstance(sampler, CarbsSampler)
    for trial in range(6):
        config = sampler.suggest(SuggestContext(trial, pending=[]))
        sampler.observe(trial, config, 3.0, 0.5)
        sampler.on_trial_end(trial, config, Status.COMPLETED)
    assert [o.cost for o in sampler.core.successes] == [3.0] * 6
    twin = CarbsSampler(ctx, rng_for(0, 0))
    twin.restore(json.loads(json.dumps(sampler.state())))
    assert twin.suggest(SuggestContext(6)) == sampler.suggest(SuggestContext(6))


# --- search quality and speed ----------------------------------------------------------------


def _best_under(configs: list[dict], budget: float) -> float:
    spent, best = 0.0, math.inf
    for config in configs:
        value, cost = width_problem(config)
        spent += cost
        if spent > budget:
            break
        best = min(best, value)
    return best


def test_finds_the_good_region_and_beats_random_at_equal_cost():
    wins = 0
    for seed in range(3):
        alg = make(seed=seed, trials=40)
        configs = run(alg, parallel=2)
        budget = sum(width_problem(c)[1] for c in configs)
        trial, value = alg.best()
        assert abs(math.log10(configs[trial]["lr"]) + 3.0) < 0.35  # lr near its optimum 1e-3
        rng = np.random.default_rng(100 + seed)
        randoms = [SPACE.sample(rng) for _ in range(2000)]
        wins += value < _best_under(randoms, budget)
    assert wins >= 2


def test_known_front_recovery_on_the_notebooks_function():
    """§4.10 item 7: the demo function of imbue's notebook, (log10 lr + 3)² · 512 / epochs +
    U(0, 0.1), plus a floor 64 / epochs so that the front is a curve, not flat at the noise;
    60 trials, two at a time, the search starting half a decade from the optimum, cost = the
    epochs trained. Here, where the order of results is fixed, on five seeds; the service's
    run on real workers (tests/test_carbs_service.py) sees results in the order the host's
    timing gives."""
    from hpod.trainers import scaling

    problem = {"floor": 64.0}
    space = SearchSpace((Float("lr", 1e-5, 1e-1, log=True), Int("epoch", 2, 64, log=True)))

    def notebook(config: dict) -> tuple[float, float]:
        epochs = int(config["epoch"])
        # The noise of a configuration: keyed by it, so each draw is fixed.
        key = [int(config["lr"] * 1e12) % 2**31, epochs]
        noise = float(np.random.default_rng(key).uniform()) * 0.1
        return scaling.value(config["lr"], epochs, problem) + noise, float(epochs)

    for seed in range(5):
        ctx = Context(space, Resource(max_resource=64), seed=seed, max_trials=60, settings={
            "search_center": {"lr": 3e-4, "epoch": 6}, "scale": {"lr": 0.5}})
        alg = build("carbs", ctx)
        proposed = run(alg, notebook, parallel=2)  # each trial trains its own epochs
        front, configs = alg.pareto_front(), alg.pareto_configs()
        excess = sorted(scaling.value(c["lr"], c["epoch"], problem)
                        / scaling.front(c["epoch"], problem) - 1 for c in configs)
        assert len(front) >= 5
        assert front[-1][1] >= 2.5 * front[0][1]  # the front spans a range of cost
        assert excess[len(excess) // 2] < 0.15  # most of it on the known front
        assert 3 * sum(e < 0.25 for e in excess) >= 2 * len(excess)
        # lr converges to 1e-3: the best configuration and the dearest front point.
        assert abs(math.log10(proposed[alg.best()[0]]["lr"]) + 3) < 0.15
        assert abs(math.log10(configs[-1]["lr"]) + 3) < 0.15


def test_scaling_fit_recovers_a_known_exponent():
    # The optimal lr scales as width^-0.5 by construction (cost = width).
    def problem(config: dict) -> tuple[float, float]:
        w = config["width"]
        shift = math.log10(config["lr"]) + 2.0 + 0.5 * math.log10(w / 8.0)
        return (4.0 * shift**2 + 1.0) * 64.0 / w, float(w)

    alg = make(seed=1, trials=60)
    run(alg, problem, parallel=2)
    assert alg.scaling_fit()["lr"]["exponent"] == pytest.approx(-0.5, abs=0.15)


def test_suggest_never_changes_torchs_thread_count(monkeypatch):
    import torch

    def refuse(n: int) -> None:
        raise AssertionError("torch's thread count is the process's, not a suggestion's")

    monkeypatch.setattr(torch, "set_num_threads", refuse)
    alg = make(trials=8)
    assert len(run(alg, parallel=2)) == 8  # past the random phase: GPs fitted and asked
