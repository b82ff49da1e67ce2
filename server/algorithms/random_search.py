"""Random search: every trial trains from zero to the maximum resource, no early stopping.

The baseline every multi-fidelity method is measured against (bracket s = 0 of Hyperband is
exactly this). Settings: ``sampler`` (default ``random``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .base import (
    Algorithm,
    Context,
    Decision,
    Job,
    Outcome,
    Plan,
    Sampler,
    SettingsError,
    Status,
    SuggestContext,
    register_algorithm,
    rng_for,
)
from .persist import Persistent
from .samplers import make_sampler, sampler_options
from .settings import parse


@dataclass(frozen=True)
class RandomSearchSettings:
    sampler: str = "random"


class RandomSearch(Persistent, Algorithm):
    name = "random"
    saved = ("started", "running", "results", "sampler")
    state_version = 2

    def __init__(self, ctx: Context) -> None:
        parse(RandomSearchSettings, ctx.settings, passthrough=sampler_options(ctx.settings))
        if not ctx.max_trials or ctx.max_trials < 1:
            raise SettingsError(
                "max_trials", "random search needs max_trials >= 1 (how many trials to run)"
            )
        self.max_trials = int(ctx.max_trials)
        self.max_resource = ctx.resource.max_resource
        self.sampler = make_sampler(ctx, rng_for(ctx.seed, 0))
        self.started = 0
        self.running: dict[int, dict[str, Any]] = {}
        self.results: dict[int, float] = {}
        self._derive()

    def _derive(self) -> None:
        self._best: tuple[float, int] | None = min(  # (value, trial), kept as results arrive
            ((v, t) for t, v in self.results.items()), default=None)
        # Whether the sampler looks at learning-curve points at all: on_progress is called
        # once per point, and the plain random sampler ignores them.
        self._observes = type(self.sampler).observe is not Sampler.observe

    def next_jobs(self, free: int) -> list[Job]:
        jobs: list[Job] = []
        while len(jobs) < free and self.started < self.max_trials:
            tid = self.started
            pending = list(self.running.values()) if self.sampler.uses_pending else []
            config = self.sampler.suggest(SuggestContext(tid, 0, 0, self.max_resource, pending))
            self.running[tid] = config
            self.started += 1
            jobs.append(Job(tid, config, 0.0, self.max_resource, bracket=0, rung=0))
        return jobs

    def adopt_config(self, trial_id: int, config: Mapping[str, Any]) -> bool:
        self.running[trial_id] = dict(config)
        self.sampler.adopt_config(trial_id, config)
        return True

    def on_progress(self, trial_id: int, resource: float, value: float) -> Decision:
        if not self._observes:
            return Decision.CONTINUE
        config = self.running.get(trial_id)
        if config is not None:
            self.sampler.observe(trial_id, config, resource, value)
        return Decision.CONTINUE

    def on_job_end(self, job: Job, outcome: Outcome) -> None:
        config = self.running.pop(job.trial_id, job.config)
        if outcome.status is Status.COMPLETED and outcome.value is not None:
            self.results[job.trial_id] = float(outcome.value)
            self._note_best(job.trial_id, float(outcome.value))
            at = job.to_resource if outcome.resource is None else outcome.resource
            self.sampler.on_segment(job.trial_id, config, job.from_resource, at,
                                    float(outcome.value), outcome.cost)
        self.sampler.on_trial_end(job.trial_id, config, outcome.status)

    def plan(self) -> Plan:
        return Plan(
            total_resource=self.max_trials * self.max_resource,
            incremental_resource=self.max_trials * self.max_resource,
            max_trials=self.max_trials,
        )

    def done(self) -> bool:
        return self.started >= self.max_trials and not self.running

    def best(self) -> tuple[int, float] | None:
        # Kept as results arrive: the service asks for it on every commit, and a scan of all
        # results was the largest cost of an ask/tell round in a long study.
        return None if self._best is None else (self._best[1], self._best[0])

    def _note_best(self, tid: int, value: float) -> None:
        if self._best is None or (value, tid) < self._best:
            self._best = (value, tid)


register_algorithm("random")(RandomSearch)
