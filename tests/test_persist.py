"""Derived state saving: for every scheduler, a snapshot taken mid-study (through JSON) and
the inputs since, replayed on a fresh object, give exactly the live state and the same answers
(DESIGN.md, "Persisting an algorithm")."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
from hpod.server.algorithms import Context, Outcome, Resource, SearchSpace, Status, build
from hpod.server.algorithms.persist import decode, encode
from hpod.server.algorithms.space import Float

SPACE = SearchSpace((Float("x", 0.0, 1.0), Float("y", 0.0, 1.0)))


def test_encoding_keeps_types_exactly() -> None:
    value = {1: (0.5, math.inf), "a": {Fraction(1, 3), Fraction(2)}, "l": [-math.inf, None]}
    text = json.dumps(encode(value), allow_nan=False)
    assert decode(json.loads(text)) == value


def test_a_generator_is_restored_in_place() -> None:
    rng, fresh = np.random.default_rng(1), np.random.default_rng(2)
    rng.random()
    saved = json.loads(json.dumps(encode(rng)))
    assert decode(saved, fresh) is fresh and fresh.random() == rng.random()


def drive(alg: Any, rng: random.Random, steps: int, log: list[Any]) -> list[Any]:
    """Random asks, points and job ends; every input appended to ``log``; the answers."""
    answers: list[Any] = []
    running: list[Any] = []
    for _ in range(steps):
        if rng.random() < 0.4 or not running:
            inp = ("ask", rng.randint(1, 4))
        else:
            job = running[rng.randrange(len(running))]
            r = job.to_resource if rng.random() < 0.7 else (job.from_resource + job.to_resource) / 2
            value = round(rng.random(), 2)
            inp = ("end", job, Outcome(Status.COMPLETED, value, r, 1.0)) if rng.random() < 0.9 \
                else ("end", job, Outcome(Status.FAILED))
        answers.append(apply(alg, inp, running))
        log.append(inp)
    return answers


def apply(alg: Any, inp: tuple[Any, ...], running: list[Any] | None = None) -> Any:
    if inp[0] == "ask":
        jobs = alg.next_jobs(inp[1])
        if running is not None:
            running.extend(jobs)
        return (jobs, alg.best(), alg.done())
    _, job, outcome = inp
    if running is not None:
        running.remove(job)
    if outcome.status is Status.COMPLETED:
        alg.on_progress(job.trial_id, outcome.resource, outcome.value)
    alg.on_job_end(job, outcome)
    return (alg.best(), alg.done(), alg.finalized())


def replay_from_snapshot(live: Any, fresh: Callable[[], Any], log: list[Any],
                         rng: random.Random, steps: int) -> Any:
    """Snapshot ``live`` (through JSON), drive it ``steps`` further (inputs appended to
    ``log``), restore a ``fresh()`` algorithm from the snapshot and replay those inputs on it:
    asserts it answers as the live one did and ends in the same state; returns it."""
    snapshot = json.loads(json.dumps(live.state(), allow_nan=False))
    mark = len(log)
    later = drive(live, rng, steps, log)
    restored = fresh()
    restored.restore(snapshot)
    assert [apply(restored, inp) for inp in log[mark:]] == later
    assert json.dumps(restored.state()) == json.dumps(live.state())
    return restored


@pytest.mark.parametrize(("name", "settings", "steps"), [
    ("random", {}, 150), ("asha", {}, 150), ("asha", {"mode": "stopping"}, 150),
    ("async-hyperband", {}, 150), ("hyperband", {"iterations": 3}, 150), ("idhb", {}, 150),
    ("hyperband", {"sampler": "tpe"}, 40), ("asha", {"sampler": "cqr"}, 40),
    ("carbs", {}, 25), ("asha-carbs", {}, 25),
])
def test_snapshot_plus_replay_is_the_live_state(name: str, settings: dict[str, Any],
                                                steps: int) -> None:
    def fresh() -> Any:
        return build(name, Context(SPACE, Resource(9, 1, 3), 4, settings, 120))

    live, log = fresh(), []
    drive(live, random.Random(7), steps, log)
    replay_from_snapshot(live, fresh, log, random.Random(8), steps)
