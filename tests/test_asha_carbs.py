"""Cost-aware and multi-fidelity together (issue 10, part 5): ``asha-carbs``, where CARBS
proposes configurations, asynchronous Hyperband decides how far each trains, and CARBS's models
see the cost measured at every rung. The pure algorithm here; tests/test_carbs_service.py runs
it on real workers."""

from __future__ import annotations

import json
import math
from collections.abc import Callable

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
from hpod.server.algorithms.asha import AsyncHyperband
from hpod.server.algorithms.base import SuggestContext, rng_for
from hpod.server.algorithms.carbs import AshaCarbs, CarbsSampler
from hpod.server.algorithms.space import Float
from hpod.server.engine import StudyEngine
from hpod.server.study import StudyConfig
from hpod.trainers import scaling

SPACE = SearchSpace((Float("lr", 1e-5, 1e-1, log=True), Float("momentum", 0.5, 0.99)))
# The optimal lr scales as epochs^-0.5; the front at e epochs is 16 / e.
PROBLEM = {"floor": 16.0, "lr_opt": 1e-2, "exponent": -0.5, "noise": 0.0}
CARBS = {"search_center": {"lr": 3e-3}, "scale": {"lr": 0.5}}


def make(seed: int = 0, trials: int = 24, max_resource: float = 9, **settings) -> AshaCarbs:
    ctx = Context(SPACE, Resource(max_resource=max_resource, min_resource=1, eta=3), seed=seed,
                  settings=settings, max_trials=trials)
    alg = build("asha-carbs", ctx)
    assert isinstance(alg, AshaCarbs)
    return alg


def epoch_cost(trial_id: int) -> float:
    """Device seconds per epoch: differs between trials, so sums over segments are checkable."""
    return 0.01 * (1 + trial_id % 3)


def train(alg: AshaCarbs, job: Job, measured: bool = True,
          per_epoch: Callable[[int], float] = epoch_cost) -> Outcome:
    """Report every epoch of the job (stopping where the scheduler says) and end it."""
    value, reached = math.nan, job.from_resource
    for epoch in range(int(job.from_resource) + 1, int(job.to_resource) + 1):
        value, reached = scaling.value(job.config["lr"], epoch, PROBLEM), float(epoch)
        if alg.on_progress(job.trial_id, reached, value) is Decision.STOP:
            break
    cost = (reached - job.from_resource) * per_epoch(job.trial_id) if measured else None
    return Outcome(Status.COMPLETED, value, reached, cost)


def run(alg: AshaCarbs, parallel: int = 2, measured: bool = True,
        per_epoch: Callable[[int], float] = epoch_cost) -> list[tuple[Job, Outcome]]:
    """Two workers: each ends its job in turn, then asks for more. Every job and how it ended."""
    done: list[tuple[Job, Outcome]] = []
    running: list[Job] = []
    while not alg.done():
        running += alg.next_jobs(parallel - len(running))
        job = running.pop(0)
        outcome = train(alg, job, measured, per_epoch)
        alg.on_job_end(job, outcome)
        done.append((job, outcome))
    return done


def sampler(alg: AshaCarbs) -> CarbsSampler:
    assert isinstance(alg.sampler, CarbsSampler)
    return alg.sampler


def test_asha_carbs_is_async_hyperband_with_the_carbs_sampler_and_checks_settings() -> None:
    alg = make(carbs={"num_random_samples": 3})
    assert isinstance(alg, AsyncHyperband) and alg.mode == "promotion"
    assert alg.n_brackets == 3  # every bracket of R = 9, eta = 3
    assert sampler(alg).core.cfg.num_random_samples == 3
    assert [d.name for d in sampler(alg).core.dims] == ["lr", "momentum", "epoch"]
    assert make(mode="stopping", brackets=1).mode == "stopping"  # every ASHA setting works

    def rejected(settings: dict, space: SearchSpace = SPACE) -> str:
        ctx = Context(space, Resource(max_resource=9), seed=0, settings=settings,
                      max_trials=4)
        with pytest.raises(SettingsError) as e:
            build("asha-carbs", ctx)
        return e.value.field

    assert rejected({"sampler": "random"}) == "algorithm.settings.sampler"
    assert rejected({"carbs": 5}) == "algorithm.settings.carbs"
    assert rejected({"carbs": {"bogus": 1}}) == "algorithm.settings.carbs.bogus"
    assert rejected({"bogus": 1}) == "algorithm.settings.bogus"
    # The scheduler decides the resource: searching it too is a contradiction.
    with_epoch = SearchSpace((*SPACE.params, Float("epoch", 1, 9)))
    assert rejected({}, with_epoch) == "search_space.epoch"


def test_every_rung_is_an_observation_with_the_cost_measured_up_to_it() -> None:
    alg = make(carbs=CARBS)
    done = run(alg)
    by_trial: dict[int, list[tuple[float, float, float]]] = {}
    spent: dict[int, float] = {}
    for job, outcome in done:
        spent[job.trial_id] = spent.get(job.trial_id, 0.0) + outcome.cost
        by_trial.setdefault(job.trial_id, []).append(
            (outcome.resource, outcome.value, spent[job.trial_id]))
    successes = sampler(alg).core.successes
    assert len(successes) == len(done)  # one observation per job: per rung in promotion mode
    for obs in successes:
        assert (obs.config["epoch"], obs.value, obs.cost) in [
            (r, v, pytest.approx(c, rel=1e-12)) for r, v, c in by_trial[obs.trial]]
    promoted = [t for t, rungs in by_trial.items() if len(rungs) > 1]
    assert promoted, "some trials were promoted, so their cost is a sum over segments"
    assert not sampler(alg).core.outstanding
    # Only trials that may still be promoted keep a running cost.
    paused = {t for t, rec in alg.trials.items() if rec.status == "paused"}
    assert set(sampler(alg).spent) == paused


def test_cost_falls_back_to_the_resource_trained_when_nothing_was_measured() -> None:
    alg = make(trials=10, carbs=CARBS)
    run(alg, measured=False)
    assert all(o.cost == o.config["epoch"] for o in sampler(alg).core.successes)


def test_stopping_mode_observes_each_trial_once_where_it_stopped() -> None:
    alg = make(trials=12, mode="stopping", carbs=CARBS)
    done = run(alg)
    assert len(done) == 12 and any(o.resource < 9 for _, o in done)
    observed = {o.trial: (o.config["epoch"], o.cost) for o in sampler(alg).core.successes}
    assert observed == {j.trial_id: (o.resource, pytest.approx(o.cost)) for j, o in done}


def test_failed_diverged_and_lost_trials() -> None:
    alg = make(trials=6, carbs=CARBS)
    a, b, c, d = alg.next_jobs(4)
    alg.on_progress(a.trial_id, a.to_resource, 5.0)  # reported a point, then crashed
    alg.on_job_end(a, Outcome(Status.FAILED))
    alg.on_job_end(b, Outcome(Status.COMPLETED, math.nan, b.to_resource, 0.1))  # diverged
    alg.on_job_end(c, Outcome(Status.LOST))
    alg.on_job_end(d, train(alg, d))
    core = sampler(alg).core
    failures = {o.trial: o.config["epoch"] for o in core.failures}
    assert failures == {a.trial_id: a.to_resource, b.trial_id: 1.0}  # where each broke
    assert [o.trial for o in core.successes] == [d.trial_id]
    assert not core.outstanding  # the lost trial is forgotten, not a failure


def test_same_seed_same_jobs_and_the_state_continues_exactly() -> None:
    first = [(j.trial_id, j.config, j.from_resource, j.to_resource)
             for j, _ in run(make(seed=5, trials=16, carbs=CARBS))]
    again = [(j.trial_id, j.config, j.from_resource, j.to_resource)
             for j, _ in run(make(seed=5, trials=16, carbs=CARBS))]
    assert first == again
    # Stop half-way with jobs pending (their Thompson fantasies included), save, restore.
    alg = make(seed=5, trials=16, carbs=CARBS)
    pending = alg.next_jobs(2)
    for _ in range(8):
        job = pending.pop(0)
        alg.on_job_end(job, train(alg, job))
        pending += alg.next_jobs(2 - len(pending))
    twin = make(seed=5, trials=16, carbs=CARBS)
    twin.restore(json.loads(json.dumps(alg.state(), allow_nan=False)))
    assert twin.state() == alg.state()
    for a in (alg, twin):
        for job in list(pending):
            a.on_job_end(job, train(a, job))
    assert [j.config for j in twin.next_jobs(2)] == [j.config for j in alg.next_jobs(2)]


@pytest.mark.parametrize("cut", [9, 60])
def test_engine_snapshot_plus_log_replays_asha_carbs_exactly(cut: int) -> None:
    """What a server restart does: snapshot, then the log tail, with lost jobs retried."""
    config = StudyConfig(SPACE, Resource(9, 1, 3), "asha-carbs", seed=4, max_trials=12,
                         max_retries=1, settings={"carbs": CARBS})
    live = StudyEngine("s", config)
    log: list[dict] = []
    n = 0
    while live.state == "active":
        log.append({"op": "ask", "free": 2})
        live.apply(log[-1])
        for job in list(live.jobs.values()):
            n += 1
            steps: list[dict] = [{"op": "start", "job_id": job.job_id}]
            if n % 7 == 0:
                steps.append({"op": "lost", "job_id": job.job_id})
            else:
                value = scaling.value(job.config["lr"], job.to_resource, PROBLEM)
                steps.append({"op": "complete", "job_id": job.job_id, "value": value,
                              "cost": 0.01 * n})
            for step in steps:
                live.apply(step)
                log.append(step)
        live.take_effects()
    replayed = StudyEngine("s", config)
    for inp in log[:cut]:
        replayed.apply(inp)
    snap = json.loads(json.dumps(replayed.state_dict(), allow_nan=False))
    restored = StudyEngine.from_state("s", config, snap)
    for inp in log[cut:]:
        restored.apply(inp)
    assert restored.state_dict() == live.state_dict()


def test_front_holds_configurations_at_a_resource_and_cost_scales_with_it() -> None:
    alg = make(seed=0, trials=40, max_resource=27, carbs=CARBS)
    run(alg, per_epoch=lambda trial: 0.02)  # every epoch costs the same
    s = sampler(alg)
    points, configs = s.pareto_front(), s.pareto_configs()
    assert len(points) == len(configs) == len(s.pareto_groups()) >= 3
    levels = {1.0, 3.0, 9.0, 27.0}
    assert {c["epoch"] for c in configs} <= levels and len({c["epoch"] for c in configs}) >= 3
    assert [c for _, c, _ in points] == sorted(c for _, c, _ in points)
    # Cost was measured in proportion to the epochs trained, and the fit says so.
    fit = s.scaling_fit()
    assert fit["epoch"]["exponent"] == pytest.approx(1.0, abs=0.1)
    # The dearest point of the front is near the known optimum for its resource.
    top = configs[-1]
    assert abs(math.log10(top["lr"] / scaling.best_lr(top["epoch"], PROBLEM))) < 0.2


def test_sampler_under_a_scheduler_without_segments_observes_completed_trials() -> None:
    ctx = Context(SPACE, Resource(max_resource=9), seed=0, settings={"sampler": "carbs"})
    s = CarbsSampler(ctx, rng_for(0, 0))
    config = s.suggest(SuggestContext(0, pending=[]))
    assert set(config) == {"lr", "momentum"}  # the resource is the scheduler's business
    s.observe(0, config, 3.0, 0.5)
    s.on_trial_end(0, config, Status.COMPLETED)
    (obs,) = s.core.successes
    assert obs.config == {**config, "epoch": 3.0} and obs.cost == 3.0
    with pytest.raises(ValueError, match="version"):
        s.restore({"core": s.core.state(), "last": {}})


def test_scaling_trainer_has_the_known_front_law_and_resumes() -> None:
    from hpod.trainers.base import TrainerContext, get_trainer

    problem = {"floor": 16.0, "lr_opt": 1e-2, "exponent": -0.5}
    for epochs in (1, 4, 64):
        best = scaling.best_lr(epochs, problem)
        assert best == pytest.approx(1e-2 * epochs**-0.5)
        assert scaling.front(epochs, problem) == pytest.approx(16.0 / epochs)
        assert scaling.value(best * 1.5, epochs, problem) > scaling.front(epochs, problem)
    # The defaults are imbue's demo function: (log10 lr + 3)^2 * 512 / epochs.
    assert scaling.value(1e-2, 8) == pytest.approx(512 / 8)
    cls = get_trainer("scaling")
    ctx = TrainerContext(seed=3, max_resource=9, data_dir=None, device="cpu",
                         settings={"noise": 0.1, **problem})
    config = {"lr": 2e-3, "momentum": 0.9, "epoch": 9}  # a searched resource is accepted
    whole = list(cls(config, ctx).train(0, 9))
    first = cls(config, ctx)
    part = list(first.train(0, 4))
    resumed = cls(config, ctx)
    resumed.load_state_dict(first.state_dict())
    assert part + list(resumed.train(4, 9)) == whole  # noise keyed by (seed, epoch)
    for epoch, loss in whole:
        assert 0 <= loss - scaling.value(2e-3, epoch, problem) <= 0.1
    with pytest.raises(ValueError, match="unknown"):
        cls({"lr": 1e-3, "width": 3}, ctx)
