"""Every scheduler tells its sampler the same way: each learning-curve point once, in
increasing resource; each completed job as a segment after its last point; a trial's end once,
after its segments, when the scheduler decides it; and a suggestion context that says where
the new trial starts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from hpod.server.algorithms import Context, Outcome, Resource, SearchSpace, Status, build
from hpod.server.algorithms.base import Sampler, SuggestContext, register_sampler
from hpod.server.algorithms.space import Float

SPACE = SearchSpace((Float("x", 0.0, 1.0),))
CALLS: list[tuple[Any, ...]] = []
PROMOTING = ("asha", "async-hyperband")


class HookRecorder(Sampler):
    name = "test-hooks"

    def __init__(self, ctx: Context, rng: Any) -> None:
        self.rng = rng

    def suggest(self, ctx: SuggestContext) -> dict[str, Any]:
        CALLS.append(("suggest", ctx.trial_id, ctx.bracket, ctx.rung, ctx.resource))
        return {"x": float(self.rng.uniform())}

    def observe(self, trial_id: int, config: Mapping[str, Any], resource: float,
                value: float) -> None:
        CALLS.append(("observe", trial_id, resource, id(self)))

    def on_segment(self, trial_id: int, config: Mapping[str, Any], from_resource: float,
                   resource: float, value: float, cost: float | None) -> None:
        CALLS.append(("segment", trial_id, from_resource, resource, cost, id(self)))

    def on_trial_end(self, trial_id: int, config: Mapping[str, Any], status: Status) -> None:
        CALLS.append(("end", trial_id, id(self)))

    def state(self) -> dict[str, Any]:
        return {}

    def restore(self, state: Mapping[str, Any]) -> None:
        pass


register_sampler("test-hooks")(HookRecorder)


@pytest.mark.parametrize("name", ["random", "hyperband", "asha", "async-hyperband", "idhb"])
def test_every_scheduler_calls_the_hooks_the_same_way(name: str) -> None:
    CALLS.clear()
    alg = build(name, Context(SPACE, Resource(9, 1, 3), 0, {"sampler": "test-hooks"}, 30))
    jobs = []
    while not alg.done():
        batch = alg.next_jobs(3)
        assert batch, "a scheduler that is not done hands out work to idle workers"
        for job in batch:
            jobs.append(job)
            for r in range(int(job.from_resource) + 1, int(job.to_resource) + 1):
                alg.on_progress(job.trial_id, float(r), job.config["x"] + 1 / r)
            value = job.config["x"] + 1 / job.to_resource
            alg.on_job_end(job, Outcome(Status.COMPLETED, value, job.to_resource, 2.0))
    starts = {j.trial_id: j for j in jobs if j.from_resource == 0}
    suggested = [c for c in CALLS if c[0] == "suggest"]
    assert [c[1] for c in suggested] == sorted(starts)
    for _, tid, bracket, rung, resource in suggested:  # the context says where it starts
        assert (rung, resource) == (0, starts[tid].to_resource)
        # The bracket is its number of halvings s; ID-HB's jobs name a bracket by its place
        # in the list instead (s grows with each raise, the place does not).
        assert bracket == starts[tid].bracket or name == "idhb"
    # ID-HB keeps one sampler per bracket and tells each of them everything: follow one.
    one = next(c[-1] for c in CALLS if c[0] == "observe")
    for tid in starts:
        mine = [c for c in CALLS if c[0] != "suggest" and c[1] == tid and c[-1] == one]
        points = [c[2] for c in mine if c[0] == "observe"]
        assert points == sorted(set(points))  # each point once, increasing
        segments = [c for c in mine if c[0] == "segment"]
        assert [c[2:5] for c in segments] == [
            (j.from_resource, j.to_resource, 2.0) for j in jobs if j.trial_id == tid]
        ends = [c[0] for c in mine].count("end")
        # At most once, and last. Asynchronous promotion never decides that a paused trial is
        # over (it may be promoted while the study runs), so there it may never come.
        assert ends == 1 and mine[-1][0] == "end" or ends == 0 and name in PROMOTING
        for seg in segments:  # a segment comes after the point it ends at
            assert mine.index(("observe", tid, seg[3], one)) < mine.index(seg)
