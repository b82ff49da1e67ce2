"""The fast ASHA (ordered structures per rung) and the indexed ID-HB make exactly the
decisions of the straightforward versions they replaced (``asha_reference.py``: a scan of
every rung per decision; ``idhb_reference.py``), on seeded random runs with ties, early stops,
failures, lost jobs and diverged values."""

from __future__ import annotations

import bisect
import math
import random
from typing import Any

import numpy as np
import pytest
from asha_reference import ReferenceASHA, ReferenceAsyncHyperband
from hpod.server.algorithms import (
    Context,
    Decision,
    Job,
    Outcome,
    Resource,
    SearchSpace,
    Status,
    build,
)
from hpod.server.algorithms.asha import (
    _linear_quantile,
    continues,
    continues_sorted,
    in_top,
    in_top_sorted,
)
from hpod.server.algorithms.space import Float

SPACE = SearchSpace((Float("x", 0.0, 1.0), Float("y", 0.0, 1.0)))


def pair(name: str, max_trials: int, seed: int, r: tuple[float, float, int],
         settings: dict[str, Any]) -> tuple[Any, Any]:
    ctx = Context(SPACE, Resource(r[0], r[1], r[2]), seed, settings, max_trials)
    ref_cls = ReferenceASHA if name == "asha" else ReferenceAsyncHyperband
    return build(name, ctx), ref_cls(ctx)


def value_of(config: dict[str, Any], r: float, rng: random.Random) -> float:
    if rng.random() < 0.01:
        return math.nan  # a diverged point
    v = (config["x"] - 0.3) ** 2 + config["y"] / math.sqrt(r)
    return round(v, 1)  # coarse values: many ties, decided by trial id


def drive(fast: Any, ref: Any, seed: int, workers: int) -> int:
    """Feed both schedulers the same random inputs; assert every answer is equal. Returns the
    number of decisions compared."""
    rng = random.Random(seed)
    running: list[list[Any]] = []  # [job, last resource reported]
    compared = 0
    for _ in range(20_000):
        free = workers - len(running)
        if free > 0 and rng.random() < 0.7:
            jobs = fast.next_jobs(rng.randint(1, free))
            assert jobs == ref.next_jobs(len(jobs) if jobs else free)
            running.extend([job, job.from_resource] for job in jobs)
            compared += 1
        if not running:
            if fast.done():
                break
            continue
        entry = running[rng.randrange(len(running))]
        job, at = entry
        roll = rng.random()
        if roll < 0.02:
            outcome = Outcome(rng.choice([Status.FAILED, Status.LOST]))
        else:
            step = rng.choice([0.5, 1.0, 1.0, 2.0, 5.0])
            r = min(at + step, job.to_resource)
            value = value_of(job.config, r, rng)
            decision = fast.on_progress(job.trial_id, r, value)
            assert decision is ref.on_progress(job.trial_id, r, value)
            entry[1] = r
            compared += 1
            if decision is Decision.CONTINUE and r < job.to_resource:
                continue
            outcome = Outcome(Status.COMPLETED, value, r, cost=r - job.from_resource)
        running.remove(entry)
        fast.on_job_end(job, outcome)
        ref.on_job_end(job, outcome)
        assert fast.best() == ref.best()
        assert fast.done() == ref.done()
        compared += 2
    assert_same_asha(fast, ref)
    return compared


def assert_same_asha(fast: Any, ref: Any) -> None:
    """Everything the reference saves, field for field (the save formats differ)."""
    assert {t: vars(r) for t, r in fast.trials.items()} == {
        t: vars(r) for t, r in ref.trials.items()}
    for mine, theirs in zip(fast.rungs, ref.rungs, strict=True):
        for a, b in zip(mine, theirs, strict=True):
            assert (a.level, a.values, a.resources, a.promoted) == (
                b.level, b.values, b.resources, b.promoted)
    assert fast.running == ref.running
    assert fast.bracket_rng.bit_generator.state == ref.bracket_rng.bit_generator.state
    assert fast.sampler.state() == ref.sampler.state()


CASES = [
    ("asha", "promotion", "asha_floor", (27, 1, 3)),
    ("asha", "promotion", "linear_quantile", (27, 1, 3)),
    ("asha", "promotion", "ray_percentile", (16, 1, 2)),
    ("asha", "stopping", "asha_floor", (27, 1, 3)),
    ("asha", "stopping", "linear_quantile", (64, 1, 4)),
    ("asha", "stopping", "ray_percentile", (27, 1, 3)),
    ("async-hyperband", "promotion", "asha_floor", (81, 1, 3)),
    ("async-hyperband", "promotion", "linear_quantile", (24.3, 0.1, 3)),
    ("async-hyperband", "stopping", "ray_percentile", (81, 1, 3)),
]


@pytest.mark.parametrize(("name", "mode", "rule", "resource"), CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_asha_decides_as_the_reference(name: str, mode: str, rule: str,
                                            resource: tuple[float, float, int],
                                            seed: int) -> None:
    fast, ref = pair(name, 300, seed, resource, {"mode": mode, "quantile_rule": rule})
    assert drive(fast, ref, seed, workers=1 + seed * 7) > 500


def test_fast_asha_restored_midway_continues_as_the_reference() -> None:
    """The derived structures (sorted rungs, candidate heaps, incumbent) rebuilt by
    ``restore`` give the same decisions as the live ones."""
    fast, ref = pair("async-hyperband", 200, 5, (27, 1, 3), {})
    rng = random.Random(5)
    jobs: list[Job] = []
    for _ in range(60):
        jobs += fast.next_jobs(3)
        ref.next_jobs(3)
        job = jobs.pop(0)
        v = round(rng.random(), 1)
        for alg in (fast, ref):
            alg.on_job_end(job, Outcome(Status.COMPLETED, v, job.to_resource))
    restored = build("async-hyperband", Context(SPACE, Resource(27, 1, 3), 5, {}, 200))
    restored.restore(fast.state())
    for job in jobs:
        for alg in (restored, ref):
            alg.on_job_end(job, Outcome(Status.COMPLETED, 0.5, job.to_resource))
    assert drive(restored, ref, 6, workers=5) > 100


def test_sorted_quantile_is_numpys_bit_for_bit() -> None:
    rng = np.random.default_rng(0)
    for n in range(1, 60):
        values = sorted(np.round(rng.normal(size=n), int(rng.integers(0, 4))).tolist())
        for q in (1 / 2, 1 / 3, 1 / 4, (100.0 / 3) / 100, 0.2):
            assert _linear_quantile(values.__getitem__, n, q) == float(np.quantile(values, q))


def test_sorted_tests_agree_with_the_plain_ones() -> None:
    rng = random.Random(1)
    for _ in range(2000):
        n, eta = rng.randint(0, 12), rng.choice([2, 3, 4])
        rung = {t: round(rng.random(), 1) for t in rng.sample(range(40), n)}
        order = sorted((v, t) for t, v in rung.items())
        value = round(rng.random(), 1)
        for rule in ("asha_floor", "linear_quantile", "ray_percentile"):
            assert continues_sorted(rule, order, value, eta) == continues(
                rule, list(rung.values()), value, eta)
            for tid, v in rung.items():
                assert in_top_sorted(rule, tid, v, order, eta) == in_top(rule, tid, v, rung, eta)


# --- ID-HB: indexed rounds against the scanning reference -----------------------------------


@pytest.mark.parametrize("variant", ["efficient", "preserving", "discarding"])
@pytest.mark.parametrize("seed", [0, 1])
def test_indexed_idhb_decides_as_the_reference(variant: str, seed: int) -> None:
    from idhb_reference import ReferenceIDHyperband

    ctx = Context(SPACE, Resource(9, 1, 3), seed, {"variant": variant})
    fast, ref = build("idhb", ctx), ReferenceIDHyperband(ctx)
    rng = random.Random(seed)
    for _ in range(2):  # one run, then one raise of the maximum resource
        running: list[Job] = []
        while not (fast.done() and not running):
            free = 7 - len(running)
            if free and rng.random() < 0.6:
                jobs = fast.next_jobs(rng.randint(1, free))
                assert jobs == ref.next_jobs(len(jobs) if jobs else free)
                running += jobs
            if not running:
                continue
            job = running.pop(rng.randrange(len(running)))
            roll = rng.random()
            outcome = (Outcome(Status.FAILED) if roll < 0.05 else
                       Outcome(Status.COMPLETED, round(rng.random(), 1), job.to_resource))
            fast.on_job_end(job, outcome)
            ref.on_job_end(job, outcome)
            assert (fast.best(), fast.done()) == (ref.best(), ref.done())
        assert {t: vars(r) for t, r in fast.trials.items()} == {
            t: vars(r) for t, r in ref.trials.items()}
        assert [vars(b) for b in fast.brackets] == [vars(b) for b in ref.brackets]
        assert fast.running == ref.running
        assert [s.state() for s in fast.samplers] == [s.state() for s in ref.samplers]
        fast.raise_max_resource()
        ref.raise_max_resource()


def test_sorted_keys_rank_and_access_match_a_sorted_list() -> None:
    from hpod.server.algorithms.ordered import SortedKeys

    rng = random.Random(3)
    keys = SortedKeys((rng.random(), -i) for i in range(700))
    plain = sorted(keys)
    for i in range(3000):  # enough to split buckets many times, at the ends and inside
        key = (rng.choice([0.0, 1.0, rng.random()]), i)
        keys.add(key)
        plain.insert(bisect.bisect_left(plain, key), key)
        probe = (rng.random(), 0)
        assert keys.bisect_left(probe) == bisect.bisect_left(plain, probe)
        j = rng.randrange(len(plain))
        assert keys[j] == plain[j] and len(keys) == len(plain)
    assert list(keys) == plain
