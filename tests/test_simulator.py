"""The simulated cluster: the real engine and algorithms on a simulated clock.

Small sizes only: the 1,000-worker / 100,000-trial run is a benchmark (bench/README.md).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from hpod.server.algorithms import SearchSpace
from hpod.server.problems import PROBLEMS, augmented_branin, augmented_hartmann6, get_problem
from hpod.server.simulator import (
    Simulator,
    raised_run_trials,
    resource_steps,
    simulate,
    study_config,
)
from hpod.server.study import StudyConfig

FIELDS = ("utilisation", "simulated_seconds", "best_value", "trials", "events", "wall_seconds",
          "overhead_us_per_event")


def _run(**kw: Any) -> dict[str, Any]:
    args = {"problem": "branin-curve", "algorithm": "hyperband", "workers": 1000,
            "max_trials": 300, "seed": 0, "max_resource": 27}
    return simulate(**{**args, **kw}).to_dict(with_trace=True)


def test_hyperband_with_1000_workers_completes_and_reports_utilisation() -> None:
    res = _run()
    assert res["study_state"] == "completed"
    assert res["trials"] >= 300
    assert 0.0 < res["utilisation"] <= 1.0
    assert res["simulated_seconds"] > 0 and res["events"] > res["trials"]
    assert res["best_value"] >= get_problem("branin-curve").optimum
    assert math.isclose(res["regret"], res["best_value"] - res["optimum"])


def test_same_seed_same_result_other_seed_other_result() -> None:
    def strip(d: dict[str, Any]) -> dict[str, Any]:  # real timings always differ
        return {k: v for k, v in d.items() if "seconds" not in k and "us_per" not in k
                or k == "simulated_seconds"}

    a, b, c = _run(seed=3), _run(seed=3), _run(seed=4)
    assert strip(a) == strip(b)
    assert strip(a) != strip(c)
    assert a["best_value"] != c["best_value"]


@pytest.mark.parametrize("algorithm,settings", [
    ("random", {}), ("asha", {}), ("async-hyperband", {}), ("asha", {"mode": "stopping"})])
def test_other_schedulers_finish(algorithm: str, settings: dict[str, Any]) -> None:
    res = _run(algorithm=algorithm, settings=settings, workers=20, max_trials=60)
    assert res["study_state"] == "completed"
    assert res["trials"] == 60
    assert res["best_value"] is not None


def test_one_worker_is_always_busy() -> None:
    # A single worker never waits: synchronous Hyperband always has the next job for it.
    res = _run(workers=1, max_trials=20, max_resource=9)
    assert res["utilisation"] == pytest.approx(1.0)


def test_resource_steps_report_every_unit_and_the_exact_end() -> None:
    assert resource_steps(0, 3) == [1.0, 2.0, 3.0]
    assert resource_steps(3, 9) == [4.0, 5.0, 6.0, 7.0, 8.0, 9.0]
    assert resource_steps(0, 1 / 3) == [1 / 3]
    assert resource_steps(1 / 3, 1) == [1.0]
    assert resource_steps(9, 26.5)[-3:] == [25.0, 26.0, 26.5]


@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_problem_sanity(name: str) -> None:
    prob = get_problem(name)
    space = SearchSpace.from_dict(prob.space)
    rng = np.random.default_rng(0)
    for _ in range(200):
        config = space.sample(rng)
        r = float(rng.uniform(prob.min_resource, prob.max_resource))
        assert prob.evaluate(config, r) >= prob.optimum - 1e-9
        assert prob.cost(config, r) > 0
        # Cost is cumulative and grows with resource: a segment has a positive duration.
        assert prob.cost(config, r + 1) > prob.cost(config, r)


def test_known_optima_are_reached() -> None:
    hart = get_problem("hartmann6-mf")
    argmin = dict(zip([f"x{i}" for i in range(1, 7)],
                      (0.20169, 0.150011, 0.476874, 0.275332, 0.311652, 0.6573), strict=True))
    assert hart.evaluate(argmin, hart.max_resource) == pytest.approx(hart.optimum, abs=1e-5)
    bran = get_problem("branin-mf")
    assert bran.evaluate({"x1": math.pi, "x2": 2.275}, 81) == pytest.approx(bran.optimum)
    # A lower resource is worse for the same configuration (the learning curve).
    assert bran.evaluate({"x1": math.pi, "x2": 2.275}, 3) > bran.optimum + 1


def test_augmented_functions_match_botorch() -> None:
    torch = pytest.importorskip("torch")
    mf = pytest.importorskip("botorch.test_functions.multi_fidelity")
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(50, 7))
    want = mf.AugmentedHartmann()(torch.tensor(x)).numpy()
    got = [augmented_hartmann6(tuple(row[:6]), row[6]) for row in x]
    np.testing.assert_allclose(got, want, atol=1e-6)
    xb = np.column_stack([rng.uniform(-5, 10, 50), rng.uniform(0, 15, 50), rng.uniform(0, 1, 50)])
    want = mf.AugmentedBranin()(torch.tensor(xb)).numpy()
    np.testing.assert_allclose([augmented_branin(*row) for row in xb], want, rtol=1e-9)


class _Parabola:
    name = "parabola"
    space = [{"name": "x", "type": "float", "low": -1.0, "high": 1.0, "log": False}]
    min_resource, max_resource, eta, optimum = 1.0, 9.0, 3, 0.0

    def evaluate(self, config: dict[str, Any], resource: float) -> float:
        return config["x"] ** 2 + 1.0 / resource - 1.0 / 9.0

    def cost(self, config: dict[str, Any], resource: float) -> float:
        return resource


PARABOLA = _Parabola()


def test_user_problem_by_module_attribute() -> None:
    assert get_problem(f"{__name__}:PARABOLA") is PARABOLA
    assert isinstance(get_problem(f"{__name__}:_Parabola"), _Parabola)
    with pytest.raises(ValueError, match="unknown problem"):
        get_problem("nope")


def test_cli_simulate_json() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "hpod.client.cli", "simulate", "--problem", "hartmann6-mf",
         "--algorithm", "hyperband", "--workers", "50", "--max-trials", "100", "--seed", "1",
         "--max-resource", "9", "--eta", "3", "--setting", "rounding=ray", "--json"],
        capture_output=True, text=True, timeout=120, check=True)
    res = json.loads(out.stdout)
    for key in FIELDS:
        assert key in res, key
    assert res["algorithm"] == "hyperband" and res["workers"] == 50
    assert res["study_state"] == "completed"


def test_utilisation_before_the_drain_and_overall() -> None:
    # ASHA always has a new trial for a free worker until its trial limit: no idle worker
    # before the drain; after it only promotions remain, fewer than the workers.
    res = _run(algorithm="asha", workers=20, max_trials=200)
    assert res["utilisation_before_drain"] == pytest.approx(1.0)
    assert 0 < res["drain_start"] < res["simulated_seconds"]
    assert res["drain_seconds"] == pytest.approx(res["simulated_seconds"] - res["drain_start"])
    assert res["utilisation"] < res["utilisation_before_drain"]


def test_asha_budget_stop_keeps_workers_busy_through_the_end() -> None:
    by_count = _run(algorithm="asha", workers=20, max_trials=200)
    by_budget = _run(algorithm="asha", workers=20, max_trials=0,
                     settings={"budget": by_count["resource_used"]})
    assert by_budget["study_state"] == "completed"
    assert by_budget["resource_used"] >= by_count["resource_used"]
    assert by_budget["utilisation"] > by_count["utilisation"]
    assert by_budget["drain_seconds"] < by_count["drain_seconds"]


def test_idhb_is_raised_while_the_raised_run_fits_the_trial_limit() -> None:
    # Hyperband(9) has 17 trials, Hyperband(27) 49, Hyperband(81) 143: with a limit of 60
    # the study is raised once (to R = 27) and not a second time, which would overshoot.
    assert [raised_run_trials(_config(9), r) for r in (3, 9, 27)] == [17, 49, 143]
    res = _run(algorithm="idhb", workers=10, max_trials=60, max_resource=9)
    assert res["study_state"] == "completed"
    assert res["raises"] == 1 and res["trials"] == 49
    res = _run(algorithm="idhb", workers=10, max_trials=143, max_resource=9)
    assert res["raises"] == 2 and res["trials"] == 143


def _config(max_resource: float) -> StudyConfig:
    return study_config(get_problem("branin-curve"), "idhb", 60, 0, max_resource=max_resource)


def test_long_segments_report_a_bounded_number_of_points() -> None:
    steps = resource_steps(0, 6561)
    assert len(steps) <= 129 and steps[-1] == 6561.0 and steps[0] == 52.0
    assert resource_steps(0, 128) == [float(r) for r in range(1, 129)]


def test_a_job_reports_the_same_values_as_evaluate_at_each_point() -> None:
    prob = get_problem("branin-curve")
    rng = np.random.default_rng(4)
    for _ in range(20):
        config = {"x1": float(rng.uniform(-5, 10)), "x2": float(rng.uniform(0, 15)),
                  "lr": float(10 ** rng.uniform(-4, 0))}
        steps = resource_steps(0.0, 81.0) + [0.5, 1 / 3]
        assert prob.evaluate_steps(config, steps) == [prob.evaluate(config, r) for r in steps]


def test_the_simulator_keeps_curves_of_unfinished_trials_only() -> None:
    prob = get_problem("branin-curve")
    config = study_config(prob, "asha", 60, 0)
    sim = Simulator(prob, config, 8)
    sim.run()
    trials = sim.engine.trials.values()
    assert sim.engine.state == "completed" and len(trials) == 60
    assert all(len(t.curve) == 0 and t.resource > 0 for t in trials)  # all ended: none kept
    # Stopped half-way, the paused and running trials still hold their points.
    sim = Simulator(prob, study_config(prob, "asha", 60, 0), 8, budget=50.0)
    sim.run()
    live = [t for t in sim.engine.trials.values()
            if t.state == "paused" or (t.state == "running" and t.resource > 0)]
    assert live and all(len(t.curve) == len(resource_steps(0, t.resource)) for t in live)
