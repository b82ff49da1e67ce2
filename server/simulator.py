"""A simulated cluster: the real :class:`StudyEngine` (the same algorithm objects, the same
inputs the live server applies) driven by N simulated workers on a simulated clock.

Workers follow the job protocol of ``trainers/worker.py``: a free worker takes a job (the
engine's answer to ``{"op": "ask", "free": k}``), reports ``start``, one ``progress`` point per
resource unit at the simulated time the problem's cost model says it is reached, and
``complete`` with the last point and the segment's cost; a STOP answer ends the job after that
point, as a real worker does. Worker events go through the server's own translation
(``manager._event_to_input``) into ``engine.apply``, so nothing here re-implements a scheduler.

The clock is an event heap keyed by (simulated time, sequence number): each running job holds
exactly one entry (its next point), so the heap never grows beyond the number of workers and
equal times resolve in a fixed order, which keeps a run deterministic given its seed.

Utilisation is reported twice: up to the *drain* (the moment the last new trial started: the
study's trial limit, or its budget, stops new work there, and only work on existing trials
remains) and overall. An algorithm that can raise its maximum resource (ID-HB) is raised,
as an operator would with ``hpod study raise``, each time a run completes while the raised
run's trials still fit ``max_trials``; a segment longer than ``MAX_POINTS`` units reports every
``ceil(span / MAX_POINTS)`` units, so a raised R of thousands of units stays cheap to simulate.

Idle workers ask again after each job end, which is when a scheduler can release work (a rung
completes, a trial pauses); asking after every progress point would multiply the asks while a
synchronous rung waits, and no algorithm here releases work on a progress point.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .algorithms import Resource, SearchSpace
from .algorithms.base import can_deepen
from .algorithms.hb_math import hyperband_table, to_fraction
from .engine import ACTIVE, FINAL_TRIAL_STATES, STUDY_COMPLETED, Curve, JobRec, StudyEngine
from .manager import _event_to_input
from .problems import Problem, get_problem
from .study import StudyConfig


@dataclass
class SimResult:
    problem: str
    algorithm: str
    workers: int
    seed: int
    trials: int
    jobs: int
    events: int  # inputs applied to the engine: worker events and asks
    worker_events: int
    simulated_seconds: float
    busy_seconds: float
    utilisation: float  # busy worker-seconds / (workers x simulated seconds), overall
    drain_start: float  # simulated seconds at which the last new trial started
    utilisation_before_drain: float  # the same ratio over [0, drain_start]
    drain_seconds: float  # the tail after drain_start, where only existing trials train
    raises: int  # times the maximum resource was raised (algorithms that deepen)
    resource_used: float  # resource of ended jobs, as the engine counts it
    consumed: float  # resource trained, counted at each reported point
    best_value: float | None  # the algorithm's incumbent, by its own rule
    best_trial: int | None
    best_observed: float | None  # the lowest value any learning-curve point reached
    optimum: float | None
    regret: float | None  # best_value - optimum
    study_state: str
    wall_seconds: float
    engine_seconds: float
    # The engine's CPU time (its wall time x the run's CPU / wall): steadier than wall on a
    # shared machine.
    engine_cpu_seconds: float
    overhead_us_per_event: float  # real seconds of engine work per input, in microseconds
    engine_cpu_us_per_event: float  # the same in CPU time
    simulator_us_per_event: float  # everything else (heap, problem, bookkeeping)
    # (simulated seconds, resource consumed, best observed so far) at each improvement
    trace: list[tuple[float, float, float]] = field(default_factory=list)

    def to_dict(self, with_trace: bool = False) -> dict[str, Any]:
        out = dict(self.__dict__)
        if not with_trace:
            out.pop("trace")
        return out


@dataclass
class _Run:
    """One job on one worker: its resource steps, the simulated time each is reached and the
    value reported there (all computed when the job starts), and where its clock started."""

    job: JobRec
    worker: int
    start: float  # simulated time the job started
    steps: list[float]
    times: list[float]
    values: list[float]
    index: int = 0


MAX_POINTS = 128  # learning-curve points per segment at most (every unit up to this span)


def resource_steps(r0: float, r1: float) -> list[float]:
    """The points a worker reports for a segment: each whole unit above r0 (each multiple of
    a coarser stride on a segment longer than MAX_POINTS units), then r1 itself (so
    fractional rung resources such as 1/3 or 26.7 are reported exactly)."""
    stride = max(1, math.ceil((r1 - r0) / MAX_POINTS))
    first = (math.floor(r0 / stride + 1e-9) + 1) * stride
    steps = [float(r) for r in range(first, math.ceil(r1 - 1e-9), stride)]
    return [*steps, float(r1)]


def _values(problem: Problem, config: Mapping[str, Any], steps: list[float]) -> list[float]:
    """The values a job reports at its steps: ``problem.evaluate_steps`` when the problem has
    it (one call per job instead of one per point), else ``evaluate`` at each step."""
    many = getattr(problem, "evaluate_steps", None)
    if many is not None:
        return [float(v) for v in many(config, steps)]
    return [float(problem.evaluate(config, r)) for r in steps]


def raised_run_trials(config: StudyConfig, max_resource: float) -> int:
    """Trials of the Hyperband run with maximum resource eta * ``max_resource``: what an
    ID-HB study holds after raising from ``max_resource``."""
    res = config.resource
    table = hyperband_table(to_fraction(max_resource) * res.eta,
                            to_fraction(res.min_resource), res.eta)
    return sum(b.rungs[0].n for b in table)


def study_config(problem: Problem, algorithm: str, max_trials: int, seed: int,
                 settings: Mapping[str, Any] | None = None, max_resource: float | None = None,
                 min_resource: float | None = None, eta: int | None = None) -> StudyConfig:
    """The StudyConfig the simulator runs: the problem's space and resource range, with the
    command line's overrides. Synchronous Hyperband has no trial count, only iterations: it
    gets as many iterations as it takes to start ``max_trials`` trials."""
    res = Resource(float(max_resource or problem.max_resource),
                   float(min_resource or getattr(problem, "min_resource", 1.0)),
                   int(eta or getattr(problem, "eta", 3)))
    settings = dict(settings or {})
    space = SearchSpace.from_dict(problem.space)
    if algorithm == "hyperband" and "iterations" not in settings:
        one = StudyConfig(space, res, algorithm, settings, seed).build_algorithm().plan()
        per = one.max_trials or 1
        settings["iterations"] = max(1, -(-max_trials // per))
    return StudyConfig(space, res, algorithm, settings, seed, max_trials=max_trials,
                       name=f"simulate {problem.name}", trainer="simulated", max_retries=0)


class Simulator:
    def __init__(self, problem: Problem, config: StudyConfig, workers: int,
                 budget: float | None = None) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.problem = problem
        self.config = config
        self.engine = StudyEngine("sim", config)
        self.n_workers = workers
        self.budget = budget  # stop once this much resource was trained (bench compare)
        self.consumed = 0.0
        self.idle = list(range(workers - 1, -1, -1))  # a stack: worker 0 is taken first
        self.names = [f"w{i}" for i in range(workers)]
        self.heap: list[tuple[float, int, _Run]] = []
        self.seq = 0
        self.now = 0.0
        self.busy = 0.0
        self.jobs = 0
        self.worker_events = 0
        self.engine_seconds = 0.0
        self.cpu_at_start = 0.0
        self.best_observed = math.inf
        self.trace: list[tuple[float, float, float]] = []
        self.idle_ask_at = -1  # engine.inputs after the last ask that returned nothing
        # Busy worker-seconds integrated as the clock moves, and their value when the last
        # new trial started (the start of the drain).
        self.busy_integral = 0.0
        self.clock_at = 0.0
        self.drain = (0.0, 0.0)
        self.raises = 0

    # ------------------------------------------------------------------ the engine

    def _apply(self, inp: Mapping[str, Any]) -> Any:
        # Wall time only: reading the thread's CPU clock is a system call, and two per input
        # were a tenth of a run. The engine's CPU time is estimated in result().
        t0 = time.perf_counter()
        result = self.engine.apply(inp)
        self.engine_seconds += time.perf_counter() - t0
        effects = self.engine.effects
        if inp["op"] != "progress":  # a progress point never ends a trial
            for eff in effects:
                if eff.kind == "trial":  # a state change: the trial may have ended for good
                    self._release(eff.trial_id)
        effects.clear()  # the live server turns these into Redis writes
        return result

    def _event(self, ev: dict[str, Any]) -> Any:
        """A worker event, translated into an input exactly as the server does."""
        self.worker_events += 1
        inp = _event_to_input(ev)
        assert inp is not None, ev
        return self._apply(inp)

    # ------------------------------------------------------------------ workers

    def _dispatch(self) -> None:
        if not self.idle or self.engine.state != ACTIVE:
            return
        if self.idle_ask_at == self.engine.inputs:
            return  # nothing happened since the engine last had nothing to give
        trials = len(self.engine.trials)
        jobs: list[JobRec] = self._apply({"op": "ask", "free": len(self.idle)})
        self.idle_ask_at = -1 if jobs else self.engine.inputs
        if len(self.engine.trials) > trials:
            self.drain = (self.now, self.busy_integral)
        for job in jobs:
            self._start(job, self.idle.pop())

    def _start(self, job: JobRec, worker: int) -> None:
        self.jobs += 1
        self._event({"op": "start", "job_id": job.job_id, "worker": self.names[worker]})
        config, cost = job.config, self.problem.cost
        base = cost(config, job.from_resource) if job.from_resource else 0.0
        steps = resource_steps(job.from_resource, job.to_resource)
        now = self.now
        run = _Run(job, worker, now, steps, [now + cost(config, r) - base for r in steps],
                   _values(self.problem, config, steps))
        self._schedule(run)

    def _schedule(self, run: _Run) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (run.times[run.index], self.seq, run))

    def _step(self, run: _Run) -> None:
        """The next learning-curve point of a running job; its end if it was the last one or
        the engine said stop."""
        i = run.index
        r, value = run.steps[i], run.values[i]
        self.consumed += r - (run.steps[i - 1] if i else run.job.from_resource)
        job_id = run.job.job_id
        self.worker_events += 1
        decision = self._apply(_event_to_input({"op": "progress", "job_id": job_id,
                                                "resource": r, "value": value}))
        if value < self.best_observed:
            self.best_observed = value
            self.trace.append((self.now, self.consumed, value))
        run.index = i = i + 1
        if decision != "stop" and i < len(run.steps):
            self._schedule(run)
            return
        cost = self.now - run.start
        self._event({"op": "complete", "job_id": job_id, "value": value, "resource": r,
                     "cost": cost})
        self.busy += cost
        self.idle.append(run.worker)

    def _release(self, trial_id: int | None) -> None:
        """Drop the learning curve of a trial that has ended for good: nothing reads it
        again here (a live server has it in the trial's Redis hash), and 100,000 kept curves
        were most of a run's memory. A paused trial keeps its curve."""
        trial = self.engine.trials.get(trial_id)
        if trial is not None and trial.state in FINAL_TRIAL_STATES and len(trial.curve):
            trial.curve = Curve()

    # ------------------------------------------------------------------ the clock

    def run(self) -> None:
        self.cpu_at_start = time.process_time()
        self._dispatch()
        while self.heap and self.engine.state == ACTIVE and not self._spent():
            at, _, run = heapq.heappop(self.heap)
            self._advance_clock(at)
            free_before = len(self.idle)
            self._step(run)
            if len(self.idle) > free_before:
                self._dispatch()
            if not self.heap and self._deepen():
                self._dispatch()

    def _advance_clock(self, at: float) -> None:
        self.busy_integral += (self.n_workers - len(self.idle)) * (at - self.clock_at)
        self.now = self.clock_at = at

    def _deepen(self) -> bool:
        """Raise the maximum resource of a completed run (ID-HB) when the raised run still
        fits within ``max_trials``; False when it cannot or need not. A raised run has exactly
        the trials of Hyperband(eta*R) (the old ones and a top-up), so its size is known
        before raising, and the trial limit is respected rather than overshot."""
        eng = self.engine
        if eng.state != STUDY_COMPLETED or not can_deepen(eng.algorithm):
            return False
        if raised_run_trials(self.config, eng.max_resource()) > (self.config.max_trials or 0):
            return False
        self._apply({"op": "raise_max_resource"})
        self.raises += 1
        return True

    def _spent(self) -> bool:
        return self.budget is not None and self.consumed >= self.budget

    def result(self, wall: float) -> SimResult:
        eng = self.engine
        best = eng.best_trial()
        best_value = best.value if best is not None else None
        optimum = getattr(self.problem, "optimum", None)
        inputs = max(eng.inputs, 1)
        span = self.now * self.n_workers
        drain_at, drain_busy = self.drain
        # The engine's share of the process's CPU time, in proportion to its share of the wall
        # time (a shared machine takes the CPU away from both alike).
        cpu = time.process_time() - self.cpu_at_start
        engine_cpu = self.engine_seconds * min(1.0, cpu / wall) if wall > 0 else 0.0
        return SimResult(
            problem=self.problem.name, algorithm=self.config.algorithm,
            workers=self.n_workers, seed=self.config.seed, trials=len(eng.trials),
            jobs=self.jobs, events=eng.inputs, worker_events=self.worker_events,
            simulated_seconds=self.now, busy_seconds=self.busy,
            utilisation=self.busy / span if span > 0 else 0.0, drain_start=drain_at,
            utilisation_before_drain=(drain_busy / (drain_at * self.n_workers)
                                      if drain_at > 0 else 1.0),
            drain_seconds=self.now - drain_at, raises=self.raises,
            resource_used=eng.resource_used, consumed=self.consumed, best_value=best_value,
            best_trial=best.id if best is not None else None,
            best_observed=self.best_observed if self.trace else None, optimum=optimum,
            regret=None if best_value is None or optimum is None else best_value - optimum,
            study_state=eng.state, wall_seconds=wall, engine_seconds=self.engine_seconds,
            engine_cpu_seconds=engine_cpu,
            overhead_us_per_event=1e6 * self.engine_seconds / inputs,
            engine_cpu_us_per_event=1e6 * engine_cpu / inputs,
            simulator_us_per_event=1e6 * max(wall - self.engine_seconds, 0.0) / inputs,
            trace=self.trace)


def simulate(problem: str | Problem, algorithm: str, workers: int, max_trials: int,
             seed: int = 0, settings: Mapping[str, Any] | None = None,
             max_resource: float | None = None, min_resource: float | None = None,
             eta: int | None = None, budget: float | None = None) -> SimResult:
    """Run one simulated study to its end (or until ``budget`` resource was trained) and
    summarise it."""
    prob = get_problem(problem) if isinstance(problem, str) else problem
    config = study_config(prob, algorithm, max_trials, seed, settings, max_resource,
                          min_resource, eta)
    config.check()
    started = time.perf_counter()
    sim = Simulator(prob, config, workers, budget)
    sim.run()
    return sim.result(time.perf_counter() - started)
