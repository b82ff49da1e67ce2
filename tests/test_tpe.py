"""Optuna TPE as the sampler inside Hyperband: seeded, restorable by replay, better than random."""

from __future__ import annotations

import json

import numpy as np
from hpod.server.algorithms import Context, Outcome, Resource, SearchSpace, Status, build

SPACE = SearchSpace.from_dict([
    {"name": "x", "type": "float", "low": -2, "high": 2},
    {"name": "y", "type": "float", "low": 1e-3, "high": 10, "log": True},
    {"name": "k", "type": "categorical", "choices": ["a", "b"]}])


def loss(c: dict, r: float) -> float:
    return (c["x"] - 0.5) ** 2 + (np.log10(c["y"])) ** 2 + (c["k"] == "b") + 1.0 / r


def hyperband(seed: int, sampler: str):
    return build("hyperband", Context(SPACE, Resource(9, 1, 3), seed,
                                      {"sampler": sampler, "iterations": 2}))


def run(alg, stop_after: int | None = None) -> list:
    jobs_seen = []
    while not alg.done():
        jobs = alg.next_jobs(4)
        if not jobs:
            break
        for job in jobs:
            jobs_seen.append(job)
            for r in range(int(job.from_resource) + 1, int(job.to_resource) + 1):
                alg.on_progress(job.trial_id, float(r), loss(job.config, r))
            alg.on_job_end(job, Outcome(Status.COMPLETED, loss(job.config, job.to_resource),
                                        job.to_resource))
            if stop_after is not None and len(jobs_seen) >= stop_after:
                return jobs_seen
    return jobs_seen


def test_same_seed_same_proposals_and_restore_continues_identically():
    full = run(hyperband(3, "tpe"))
    assert run(hyperband(3, "tpe")) == full
    alg = hyperband(3, "tpe")
    head = run(alg, stop_after=40)
    restored = hyperband(3, "tpe")
    restored.restore(json.loads(json.dumps(alg.state())))
    assert head + run(restored) == full


def test_tpe_beats_random_search_inside_hyperband():
    def best(seed: int, sampler: str) -> float:
        alg = hyperband(seed, sampler)
        run(alg)
        return alg.best()[1]

    tpe = np.median([best(s, "tpe") for s in range(5)])
    rnd = np.median([best(s, "random") for s in range(5)])
    assert tpe < rnd


def test_suggest_leaves_optunas_logging_as_the_process_set_it():
    import logging

    import optuna

    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = Keep()
    optuna.logging.get_logger("optuna").addHandler(handler)
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.INFO)
    try:
        run(hyperband(0, "tpe"), stop_after=12)
        assert optuna.logging.get_verbosity() == optuna.logging.INFO
        assert not [m for m in records if "new study created" in m]  # ours stay quiet
        optuna.create_study()  # ...and the process's own studies still log
        assert [m for m in records if "new study created" in m]
    finally:
        optuna.logging.get_logger("optuna").removeHandler(handler)
        optuna.logging.set_verbosity(before)
