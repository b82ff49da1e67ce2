"""CARBS through the real service: cost measured by real worker processes, the
study's ``cost_source``, the Pareto front and scaling fits by RPC, SDK and CLI, known-front
recovery and a known scaling exponent (Fetterman et al., 2023) on the
``scaling`` trainer, ``asha-carbs`` (CARBS with asynchronous Hyperband, cost measured per rung),
and the same suggestions for the same seed, also across a server restart mid-study.

Run with ``-s`` to see the measured numbers (front excess, fitted exponents)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from hpod.client.local import LocalCluster
from hpod.client.sdk import HpodError, Study
from hpod.trainers import analytic, scaling

STEP_SECONDS = 0.02  # the analytic trainer sleeps this per epoch: a cost the workers measure
EPOCHS = 3


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[LocalCluster]:
    with LocalCluster(workers=2, trainers=("analytic", "scaling"), lease_seconds=3.0,
                      workdir=str(tmp_path_factory.mktemp("carbs"))) as c:
        yield c


def worker_spec(cost_source: str | None = None, trials: int = 8) -> dict:
    settings: dict = {"num_random_samples": 3}
    if cost_source is not None:
        settings["cost_source"] = cost_source
    return {"trainer": "analytic", "trainer_settings": {"step_seconds": STEP_SECONDS},
            "resource": {"max_resource": EPOCHS}, "max_trials": trials, "seed": 3,
            "algorithm": {"name": "carbs", "settings": settings}}


def assert_front_matches_trials(study: Study, expected_cost: dict[int, float]) -> None:
    """Every front point is a configuration's trials: its cost and value are their means."""
    trials = {t.id: t for t in study.trials(curves=False)}
    points = study.pareto_front()
    assert points, "a finished carbs study has a front"
    costs = [p.cost for p in points]
    assert costs == sorted(costs)  # cheapest first
    for p in points:
        assert p.trial_id == p.trial_ids[0]
        members = [trials[t] for t in p.trial_ids]
        assert all(t.state == "completed" for t in members)
        assert p.cost == pytest.approx(sum(expected_cost[t.id] for t in members) / len(members),
                                       rel=1e-9)
        assert p.value == pytest.approx(sum(t.value for t in members) / len(members), rel=1e-9)
        assert p.config == trials[p.trial_id].config


def test_carbs_study_on_workers_uses_measured_cost_and_serves_its_front(
        cluster: LocalCluster, tmp_path: Path) -> None:
    with cluster.client() as client:
        # Two studies side by side: the default cost (device seconds) and the resource.
        measured = client.create_study(worker_spec())
        by_resource = client.create_study(worker_spec("resource"))
        for study in (measured, by_resource):
            info = study.wait(timeout=120)
            assert info.state == 2 and info.trials_finished == 8

        trials = measured.trials(curves=False)
        assert len(trials) == 8 and all(t.resource == EPOCHS for t in trials)
        # Workers timed the jobs: at least the sleeps, and not the resource (3 epochs) that the
        # algorithm would fall back to if no cost had arrived.
        assert all(EPOCHS * STEP_SECONDS <= t.cost < EPOCHS for t in trials)
        assert_front_matches_trials(measured, {t.id: t.cost for t in trials})
        assert measured._pareto().cost_source == "device_seconds"

        # cost_source: resource: the front's costs are the epochs trained, while the trials
        # still show the device seconds their workers measured.
        resource_trials = by_resource.trials(curves=False)
        assert all(0 < t.cost < EPOCHS for t in resource_trials)
        assert_front_matches_trials(by_resource, {t.id: float(EPOCHS) for t in resource_trials})
        assert by_resource._pareto().cost_source == "resource"

        # The CLI: JSON equal to the SDK's answer, and PNGs of the front (and fits, if any).
        out = subprocess.run([sys.executable, "-m", "hpod.client.cli", "study", "pareto",
                              measured.id, "--json", "--plot", str(tmp_path), "--address",
                              cluster.address], capture_output=True, text=True, check=True)
        data = json.loads(out.stdout.splitlines()[0])
        assert [p["trial_id"] for p in data["points"]] == \
            [p.trial_id for p in measured.pareto_front()]
        assert set(data["fits"]) == set(measured.scaling_fit())
        assert (tmp_path / "pareto_front.png").stat().st_size > 1000
        text = subprocess.run([sys.executable, "-m", "hpod.client.cli", "study", "pareto",
                               measured.id, "--address", cluster.address],
                              capture_output=True, text=True, check=True).stdout
        assert "Pareto front" in text


def test_front_needs_a_cost_aware_algorithm_and_cost_source_is_checked(
        cluster: LocalCluster) -> None:
    with cluster.client() as client:
        study = client.create_study({"resource": {"max_resource": 3}, "max_trials": 2,
                                     "algorithm": {"name": "random"},
                                     "search_space": {"x": {"type": "float", "low": 0,
                                                            "high": 1}}})
        with pytest.raises(HpodError) as e:
            study.pareto_front()
        assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "carbs" in e.value.message
        with pytest.raises(HpodError) as e:
            client.create_study(worker_spec("metric"))
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "algorithm.settings.cost_source" in e.value.message
        # Every algorithm accepts the service's own setting.
        client.create_study({**worker_spec("resource"), "algorithm": {
            "name": "hyperband", "settings": {"cost_source": "resource"}}}).stop()


# ---------------------------------------------------------------- known front and scaling law

SCALING_STEP = 0.02  # seconds each epoch of the scaling trainer sleeps: cost ∝ epochs trained


def scaling_spec(problem: dict, center_lr: float, seed: int, trials: int = 60) -> dict:
    """CARBS on the ``scaling`` trainer, the epoch count searched (as in the paper), cost = the
    device seconds the workers measure, the search centered at 6 epochs and ``center_lr``."""
    return {
        "trainer": "scaling", "trainer_settings": {"step_seconds": SCALING_STEP, **problem},
        "resource": {"max_resource": 64}, "max_trials": trials, "seed": seed,
        "search_space": {"lr": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
                         "epoch": {"type": "int", "low": 2, "high": 64, "log": True}},
        "algorithm": {"name": "carbs", "settings": {
            "search_center": {"lr": center_lr, "epoch": 6}, "scale": {"lr": 0.5}}}}


def assert_cost_was_measured(study: Study, n: int) -> None:
    """Every trial ran to its own epoch count and its cost is the time its worker measured:
    at least the sleeps, at most a few times more (reports and scheduling on a shared host)."""
    trials = study.trials(curves=False)
    assert len(trials) == n and all(t.state == "completed" for t in trials)
    for t in trials:
        assert t.resource == t.config["epoch"]
        assert t.resource * SCALING_STEP <= t.cost < t.resource * SCALING_STEP * 4 + 0.2


def front_excess(study: Study, problem: dict) -> list[float]:
    """How far each front point's configuration is from the best one for its epoch count:
    noise-free loss / analytic front - 1 (0 on the known front)."""
    return [scaling.value(p.config["lr"], p.config["epoch"], problem)
            / scaling.front(p.config["epoch"], problem) - 1 for p in study.pareto_front()]


def test_known_front_recovery_on_workers(cluster: LocalCluster) -> None:
    """§4.10 item 7: the demo function of imbue's notebook, (log10 lr + 3)² · 512 / epochs +
    U(0, 0.1), plus a floor 64 / epochs so that the front is a curve, not flat at the noise.
    Trained by real workers, which still measure every trial's seconds."""
    problem = {"floor": 64.0}
    with cluster.client() as client:
        # 60 trials, as item 7 says; the search starts half a decade from the optimum. The
        # front is judged on the epochs trained (the function's own cost): the seconds the
        # workers measure carry the host's load, and a trial slowed by it would leave the
        # front to a worse one that ran while the host was idle.
        spec = scaling_spec(problem, center_lr=3e-4, seed=0)
        spec["algorithm"]["settings"]["cost_source"] = "resource"
        study = client.create_study(spec)
        assert study.wait(timeout=240).state == 2
        assert_cost_was_measured(study, 60)
        points = study.pareto_front()
        excess = front_excess(study, problem)
        print(f"\nknown front: {len(points)} points, epochs "
              f"{[p.config['epoch'] for p in points]}, relative excess "
              f"{[round(e, 3) for e in excess]}; best lr {study.best_trial().config['lr']:.3g}")
        assert len(points) >= 5
        assert points[-1].cost >= 2.5 * points[0].cost  # the front spans a range of cost
        # How close the front comes to the known one, and the lr it converges to, depend on
        # the order results arrive in, which the host's timing decides here (median excess
        # 0.02 to 0.21, best lr 6.3e-4 to 1.1e-3 over five runs of this test): both are
        # checked where that order is fixed (tests/test_carbs.py, five seeds).


def test_scaling_exponent_recovered_on_workers(cluster: LocalCluster) -> None:
    """§4.10 item 8: the optimal lr scales as epochs^-0.5, so as (measured cost)^-0.5.

    The search starts at the optimum for 6 epochs (a user's tuned small run) and must find how
    it moves with cost. The fit's spread comes from the front's learning rates (about ±0.05
    decades off the law over less than one decade of cost); in simulation, 80 trials give a
    standard deviation of 0.025 around -0.51 (60 trials: 0.04), hence 80 here."""
    problem = {"floor": 16.0, "lr_opt": 1e-2, "exponent": -0.5, "noise": 0.01}
    with cluster.client() as client:
        study = client.create_study(scaling_spec(
            problem, center_lr=scaling.best_lr(6, problem), seed=1, trials=80))
        assert study.wait(timeout=240).state == 2
        assert_cost_was_measured(study, 80)
        fits = study.scaling_fit()
        excess = front_excess(study, problem)
        print(f"\nscaling law: lr exponent {fits['lr'].exponent:.3f} (built -0.5), epoch "
              f"exponent {fits['epoch'].exponent:.3f} (cost ∝ epochs), {len(excess)} front "
              f"points, median excess {sorted(excess)[len(excess) // 2]:.3f}")
        assert fits["lr"].exponent == pytest.approx(-0.5, abs=0.1)
        assert fits["lr"].transform == "log" and fits["lr"].coefficient > 0
        # The workers' seconds grow in proportion to the epochs: the fit sees cost ∝ epochs.
        assert fits["epoch"].exponent == pytest.approx(1.0, abs=0.1)


# ---------------------------------------------------------------- asha-carbs

def test_asha_carbs_on_workers_sees_the_cost_of_every_rung(cluster: LocalCluster) -> None:
    """CARBS proposes, asynchronous Hyperband promotes: every rung a trial reaches is a front
    candidate whose cost is what the workers measured for its segments up to that rung."""
    problem = {"floor": 16.0, "lr_opt": 1e-2, "exponent": -0.5, "noise": 0.01}
    spec = {"trainer": "scaling", "trainer_settings": {"step_seconds": SCALING_STEP, **problem},
            "resource": {"max_resource": 9, "min_resource": 1, "eta": 3}, "max_trials": 18,
            "seed": 2, "algorithm": {"name": "asha-carbs", "settings": {"carbs": {
                "search_center": {"lr": 3e-3}, "scale": {"lr": 0.5}}}}}
    with cluster.client() as client:
        study = client.create_study(spec)
        # The same sampler under a plain scheduler serves a front too.
        plain = client.create_study({**spec, "max_trials": 4, "algorithm": {
            "name": "async-hyperband", "settings": {"sampler": "carbs"}}})
        assert study.wait(timeout=180).state == 2 and plain.wait(timeout=60).state == 2
        trials = {t.id: t for t in study.trials(curves=False)}
        assert any(t.resource > 1 and t.bracket == 0 for t in trials.values())  # promotions
        points = study.pareto_front()
        assert points and [p.cost for p in points] == sorted(p.cost for p in points)
        rungs = [p.config["epoch"] for p in points]
        for p in points:
            epochs = p.config.pop("epoch")  # a front point is a configuration at a rung
            assert epochs in (1, 3, 9) and p.config == trials[p.trial_id].config
            assert all(trials[t].resource >= epochs for t in p.trial_ids)
            assert p.cost >= epochs * SCALING_STEP
            if len(p.trial_ids) == 1 and trials[p.trial_id].resource == epochs:
                # The trial's highest rung: the sum of every segment its workers measured.
                assert p.cost == pytest.approx(trials[p.trial_id].cost, rel=1e-9)
        fits = study.scaling_fit()
        print(f"\nasha-carbs: {len(points)} front points at epochs {rungs}; epoch "
              f"exponent {fits['epoch'].exponent:.3f}")
        assert fits["epoch"].exponent == pytest.approx(1.0, abs=0.15)
        assert plain.pareto_front()


# ---------------------------------------------------------------- determinism

ASK_TELL_SPEC = {
    "resource": {"name": "epoch", "max_resource": 9}, "max_trials": 10, "seed": 11,
    "algorithm": {"name": "carbs", "settings": {"cost_source": "resource",
                                                "num_random_samples": 3}},
    "search_space": {
        "x1": {"type": "float", "low": -5.0, "high": 10.0},
        "x2": {"type": "float", "low": 0.0, "high": 15.0},
        "lr": {"type": "float", "low": 1e-4, "high": 1.0, "log": True},
        # The resource is searched, as in the paper: a trial trains to its own epoch count.
        "epoch": {"type": "int", "low": 1, "high": 9},
    },
}


def run_ask_tell(c: LocalCluster, restart_at: int | None) -> tuple[list, list]:
    """Ask two jobs, complete both, repeat; with ``restart_at``, kill and restart the server
    while the jobs of that round are still pending. Ask/tell fixes the order of the inputs
    (with workers, whether an ask sees the previous trial pending or finished is a race, and
    CARBS rightly answers those two cases differently); the reported cost is wall-clock noise,
    which ``cost_source: resource`` must ignore."""
    client = c.client()
    study = client.create_study(ASK_TELL_SPEC)
    configs: list = []
    for round_ in range(5):
        jobs = [study.ask(wait=False), study.ask(wait=False)]
        if round_ == restart_at:
            c.server.kill()
            c.server.wait()
            c.start_server()
            client.close()
            client = c.client()
            study = client.study(study.id)
        for job in jobs:
            assert job is not None
            job.study = study
            configs.append((job.trial_id, job.to_resource, sorted(job.config.items())))
            job.complete(analytic.value(job.config, job.to_resource),
                         cost=time.perf_counter() % 1.0 + 0.01)
    assert study.ask(wait=False) is None
    assert study.refresh().state == 2
    front = [(p.trial_id, p.cost, p.value) for p in study.pareto_front()]
    client.close()
    return sorted(configs), front


def test_same_seed_same_suggestions_twice_and_across_a_server_restart(tmp_path: Path) -> None:
    # One cluster, three studies with the same spec and seed: the third is interrupted by a
    # server restart while two of its trials are pending (their Thompson fantasies included).
    with LocalCluster(workers=0, trainers=("analytic",), workdir=str(tmp_path),
                      lease_seconds=30.0) as c:
        configs, front = run_ask_tell(c, restart_at=None)
        assert [t for t, _, _ in configs] == list(range(10))
        assert all(to == dict(cfg)["epoch"] for _, to, cfg in configs)  # its own epoch count
        # cost = epochs trained, whatever cost the client reported
        epochs = {t: dict(cfg)["epoch"] for t, _, cfg in configs}
        assert all(cost == epochs[t] for t, cost, _ in front)
        assert run_ask_tell(c, restart_at=None) == (configs, front)
        assert run_ask_tell(c, restart_at=2) == (configs, front)
