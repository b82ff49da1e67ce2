"""The engine replays: a snapshot plus the log of inputs since gives the live state exactly."""

from __future__ import annotations

import json

import pytest
from hpod.server.algorithms import Resource, SearchSpace
from hpod.server.engine import EngineError, StudyEngine
from hpod.server.study import StudyConfig
from hpod.trainers.analytic import value

SPACE = SearchSpace.from_dict([
    {"name": "x1", "type": "float", "low": -5, "high": 10},
    {"name": "x2", "type": "float", "low": 0, "high": 15},
    {"name": "lr", "type": "float", "low": 1e-4, "high": 1, "log": True}])


def config(algorithm: str = "hyperband", **kw) -> StudyConfig:
    return StudyConfig(SPACE, Resource(9, 1, 3), algorithm, seed=4, **kw)


def drive(eng: StudyEngine, log: list[dict], workers: int = 3, fail_every: int = 0) -> None:
    """A tiny synchronous cluster: ask, start, report each step, complete (or fail/lose)."""
    n = 0
    while eng.state == "active":
        inp = {"op": "ask", "free": workers}
        jobs = eng.apply(inp)
        log.append(inp)
        jobs = list(eng.jobs.values())  # new jobs and retries of lost ones
        assert jobs, "the engine stalled"
        for job in jobs:
            n += 1
            steps = [{"op": "start", "job_id": job.job_id}]
            done = int(eng.trials[job.trial_id].resource)  # a retry re-reports nothing
            for r in range(max(int(job.from_resource), done) + 1, int(job.to_resource) + 1):
                steps.append({"op": "progress", "job_id": job.job_id, "resource": float(r),
                              "value": value(job.config, r)})
            if fail_every and n % fail_every == 0:
                steps.append({"op": "lost", "job_id": job.job_id})
            else:
                steps.append({"op": "complete", "job_id": job.job_id,
                              "value": value(job.config, job.to_resource), "cost": 0.1})
            for s in steps:
                eng.apply(s)
                log.append(s)
        eng.take_effects()


@pytest.mark.parametrize("cut", [0, 7, 40, 120])
def test_snapshot_plus_log_tail_replays_to_the_live_state(cut: int) -> None:
    live = StudyEngine("s", config(max_retries=1))
    log: list[dict] = []
    drive(live, log, fail_every=5)
    assert live.state == "completed"
    replayed = StudyEngine("s", config(max_retries=1))
    for inp in log[:cut]:
        replayed.apply(inp)
    snap = json.loads(json.dumps(replayed.state_dict(), allow_nan=False))
    restored = StudyEngine.from_state("s", config(max_retries=1), snap)
    for inp in log[cut:]:
        restored.apply(json.loads(json.dumps(inp)))
    assert restored.state_dict() == live.state_dict()
    assert restored.counts() == live.counts()


def test_lost_job_is_retried_under_a_new_id_and_the_old_one_is_refused() -> None:
    eng = StudyEngine("s", config("random", max_trials=1, max_retries=1))
    (job,) = eng.apply({"op": "ask", "free": 1})
    eng.apply({"op": "lost", "job_id": job.job_id})
    (retry,) = eng.jobs.values()
    assert retry.job_id != job.job_id and retry.from_resource == job.from_resource
    with pytest.raises(EngineError) as err:
        eng.apply({"op": "complete", "job_id": job.job_id, "value": 1.0})
    assert err.value.code == "precondition"
    eng.apply({"op": "lost", "job_id": retry.job_id})  # retries exhausted: the trial is LOST
    assert eng.trials[0].state == "lost" and eng.state == "completed"


def test_maximised_metric_is_flipped_once_at_the_boundary() -> None:
    eng = StudyEngine("s", config("random", max_trials=2, maximize=True))
    jobs = eng.apply({"op": "ask", "free": 2})
    for job, v in zip(jobs, (0.9, 0.4), strict=True):
        eng.apply({"op": "complete", "job_id": job.job_id, "value": v})
    best = eng.best_trial()
    assert best is not None and best.value == 0.9
