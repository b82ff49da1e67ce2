"""The worked example of DESIGN.md ("Worked example: a sampler") is real code: it registers,
validates its settings, runs under two schedulers, and saves and restores its state."""

from __future__ import annotations

import json
import math
import re
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from hpod.server.algorithms import Context, Outcome, Resource, SearchSpace, SettingsError, Status
from hpod.server.algorithms.base import SAMPLERS
from hpod.server.algorithms.space import Float

DESIGN = Path(__file__).resolve().parent.parent / "DESIGN.md"
SPACE = SearchSpace((Float("x", 0.0, 1.0), Float("y", 0.0, 1.0)))


def example_source() -> str:
    text = DESIGN.read_text()
    section = text[text.index("### Worked example: a sampler"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture(scope="module")
def nearby() -> Any:
    module = types.ModuleType("design_example")  # dataclasses resolve types via sys.modules
    sys.modules[module.__name__] = module
    exec(compile(example_source(), str(DESIGN), "exec"), module.__dict__)
    yield module.Nearby
    SAMPLERS.pop("nearby", None)
    del sys.modules[module.__name__]


def run(name: str, settings: dict[str, Any], seed: int = 0) -> tuple[Any, list[Any]]:
    from hpod.server.algorithms import build

    alg = build(name, Context(SPACE, Resource(9, 1, 3), seed, settings, 40))
    jobs_seen = []
    while not alg.done():
        jobs = alg.next_jobs(3)
        if not jobs:
            break
        for job in jobs:
            jobs_seen.append(job)
            v = (job.config["x"] - 0.3) ** 2 + (job.config["y"] - 0.6) ** 2 + 1 / job.to_resource
            alg.on_progress(job.trial_id, job.to_resource, v)
            alg.on_job_end(job, Outcome(Status.COMPLETED, v, job.to_resource, 1.0))
    return alg, jobs_seen


@pytest.mark.parametrize("scheduler", ["hyperband", "asha"])
def test_the_example_sampler_runs_under_any_scheduler(nearby: Any, scheduler: str) -> None:
    settings = {"sampler": "nearby", "nearby": {"radius": 0.05, "explore": 4.0}}
    alg, jobs = run(scheduler, settings)
    assert isinstance(alg.sampler, nearby) and alg.sampler.opts.explore == 4
    assert alg.done() and len({j.trial_id for j in jobs}) > 4
    assert run(scheduler, settings)[1] == jobs  # seeded: the same study twice
    best = alg.best()
    assert best is not None and math.isfinite(best[1])
    saved = json.loads(json.dumps(alg.sampler.state(), allow_nan=False))
    twin = nearby(Context(SPACE, Resource(9, 1, 3), 0, settings), alg.sampler.rng)
    twin.restore(saved)
    assert twin.best == alg.sampler.best


def test_the_example_settings_are_checked(nearby: Any) -> None:
    with pytest.raises(SettingsError) as err:
        run("asha", {"sampler": "nearby", "nearby": {"explore": 2.5}})
    assert err.value.field == "algorithm.settings.nearby.explore"
