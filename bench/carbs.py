"""Cost-aware search: hpod's ``carbs`` against random search and imbue's reference CARBS.

    python bench/carbs.py [--problems scaling-law,mup-digits] [--methods carbs,random,imbue-carbs]
                          [--seeds 5] [--budget 1] [--mup-budget 0.25] [--workers 4] [--jobs 2]
                          [--center cheap|middle] [--carbs-python PATH]
                          [--reference-gp-steps N] [--out bench/results] [--quick]

Every method searches the same space on the same problem with the same seeds, ``--workers``
simulated workers and the same budget of **cumulative cost** (the cost of every trained epoch of
every trial, running ones included, as the workers would measure it); a run stops once the
budget is spent. All three run through hpod's real :class:`StudyEngine` in
:mod:`hpod.server.simulator`: the engine asks the algorithm for jobs when workers are free and
tells it each job's end and cost, on a simulated clock where a trial takes as long as it costs.

* ``carbs``: hpod's ``carbs`` algorithm, default settings, the epochs as a searched parameter
  (``resource_param``); its cost is what the simulated workers measured.
* ``random``: uniform random search over the same space, the epochs included (each trial trains
  to its own ``epochs``), on each parameter's own scale (log where the space is log).
* ``imbue-carbs``: imbue's reference CARBS (imbue-ai/carbs), run in its own virtual
  environment (``--carbs-python`` or ``HPOD_CARBS_PYTHON``) behind ``bench/carbs_reference.py``,
  one process per run, driven by a proxy algorithm in this process. It gets hpod's default
  basic-space map (transform, ``scale``, bounds) for every parameter, so the two CARBS see the
  same search space; its settings are the library's defaults (minimising, wandb and checkpoints
  off), which equal hpod's. ``--reference-gp-steps`` shortens its GP fits (1000 Adam steps each
  by default; see ``bench/README.md``). Without that interpreter the reference is skipped and
  the output says why.

Both CARBS start from the same search centre (``--center``): ``cheap`` (default) puts width and
epochs at 20 % of their log range, as the reference's README advises ("start out the search in a
low cost region"); ``middle`` is the middle of every range, hpod's own default.

Problems (three searched parameters each: ``lr``, ``width``, ``epochs``; cost grows with width
and epochs, the value falls with both once lr is right):

* ``scaling-law``: an analytic scaling law with a known Pareto front,
  ``loss = 0.5 + (2 (w/16)^-0.5 + e^-0.5) (1 + (log10 lr - log10 lr*(w))^2)`` with
  ``lr*(w) = 0.02 (w/16)^-0.5`` (the optimal lr shrinks as the model widens), cost ``w · e``,
  ``w`` in [16, 1024], ``e`` in [1, 32]. Noise-free.
* ``mup-digits``: the real ``mup_mlp`` trainer (muP MLP, 3 hidden layers, AdamW, cosine schedule
  over the trial's own epochs) on scikit-learn's digits, trained in this process on one thread,
  metric the validation cross-entropy; ``w`` in [16, 512], ``e`` in [1, 16], ``lr`` in
  [1e-4, 1e-1]. Its cost is modelled, not timed (timings on a shared machine are noise): the
  training FLOPs, 6 · parameters · training samples per epoch. One fixed trial seed, so the
  value is a function of the configuration; each configuration is trained once and cached.

Pareto-front quality: the hypervolume dominated by the observed (cost, value) points, with cost on
a log scale normalised over the space's cost range [c_min, c_max] and the value normalised
between the best value (0) and a bad reference value (1); reference point (c_max, reference).
It is divided by the hypervolume of the best front: the true front for ``scaling-law`` (its
reference value is the front's value at c_min, so the true front spans the whole square), and
the front of every observation of every method and seed for ``mup-digits`` (reference: ln 10,
the loss of the untrained muP model). So 1 is the best front and 0 nothing better than the
reference. Reported: median and interquartile range over seeds at 25 / 50 / 100 % of the budget,
JSON, a Markdown table and a PNG (hypervolume against cumulative cost, and seed 0's fronts).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from hpod.server.algorithms import SearchSpace
from hpod.server.algorithms.base import (
    Algorithm,
    Context,
    Decision,
    Job,
    Outcome,
    Plan,
    Status,
    register_algorithm,
    rng_for,
)
from hpod.server.algorithms.carbs import CarbsCore
from hpod.server.algorithms.space import Int
from hpod.server.simulator import Simulator, study_config

HERE = Path(__file__).resolve().parent
ADAPTER = HERE / "carbs_reference.py"
FRACTIONS = (0.25, 0.5, 1.0)
GRID = 50  # points of the plotted hypervolume curves
METHODS = ("carbs", "random", "imbue-carbs")
PROBLEMS = ("scaling-law", "mup-digits")
ENV_PYTHON = "HPOD_CARBS_PYTHON"
RESOURCE = "epochs"


def _param(name: str, kind: str, low: float, high: float, log: bool = True) -> dict[str, Any]:
    return {"name": name, "type": kind, "low": low, "high": high, "log": log}


# ------------------------------------------------------------------ problems


@dataclass
class ScalingLaw:
    """An analytic scaling law with a known cost/loss front (see the module docstring)."""

    name: str = "scaling-law"
    min_resource: float = 1.0
    max_resource: float = 32.0
    eta: int = 3
    width_range: tuple[int, int] = (16, 1024)
    space: list[dict[str, Any]] = field(default_factory=list)
    optimum: float | None = None

    floor, a, alpha, b, beta, lr0, lr_exp = 0.5, 2.0, 0.5, 1.0, 0.5, 0.02, -0.5

    def __post_init__(self) -> None:
        lo, hi = self.width_range
        self.space = [_param("lr", "float", 1e-4, 1e-1), _param("width", "int", lo, hi),
                      _param(RESOURCE, "int", 1, int(self.max_resource))]
        self.optimum = self.front()[1][-1]

    def best_lr(self, width: float) -> float:
        return self.lr0 * (width / self.width_range[0]) ** self.lr_exp

    def _reducible(self, width: np.ndarray | float, epochs: np.ndarray | float) -> Any:
        w = np.asarray(width, dtype=float) / self.width_range[0]
        return self.a * w ** -self.alpha + self.b * np.asarray(epochs, dtype=float) ** -self.beta

    def evaluate(self, config: Mapping[str, Any], resource: float) -> float:
        w = float(config["width"])
        miss = math.log10(float(config["lr"])) - math.log10(self.best_lr(w))
        return float(self.floor + self._reducible(w, max(resource, 1.0)) * (1.0 + miss * miss))

    def cost(self, config: Mapping[str, Any], resource: float) -> float:
        return float(config["width"]) * float(resource)

    def cost_range(self) -> tuple[float, float]:
        lo, hi = self.width_range
        return float(lo), float(hi) * self.max_resource

    def front(self) -> tuple[list[float], list[float]]:
        """The true front over the integer grid (every width and epoch count at its best lr):
        the lowest loss reachable at each cost, as a staircase of (cost, loss)."""
        lo, hi = self.width_range
        w, e = np.meshgrid(np.arange(lo, hi + 1), np.arange(1, int(self.max_resource) + 1))
        cost, loss = (w * e).ravel(), (self.floor + self._reducible(w, e)).ravel()
        order = np.lexsort((loss, cost))
        costs, values, best = [], [], math.inf
        for c, v in zip(cost[order], loss[order], strict=True):
            if v < best - 1e-12:
                best = float(v)
                costs.append(float(c))
                values.append(best)
        return costs, values

    def value_range(self) -> tuple[float, float]:
        """(best, reference) losses: the optimum and the front's loss at the cheapest cost."""
        costs, values = self.front()
        return values[-1], values[0]


@dataclass
class MuPDigits:
    """The ``mup_mlp`` trainer on digits, trained for real (see the module docstring)."""

    name: str = "mup-digits"
    min_resource: float = 1.0
    max_resource: float = 16.0
    eta: int = 3
    width_range: tuple[int, int] = (16, 512)
    space: list[dict[str, Any]] = field(default_factory=list)
    optimum: float | None = None  # unknown
    depth: int = 3
    n_in: int = 64  # digits: 8 x 8 pixels, 10 classes
    n_out: int = 10
    _train_samples: int | None = field(default=None, repr=False)
    _curves: dict[tuple[Any, ...], dict[float, float]] = field(default_factory=dict, repr=False)
    _live: dict[tuple[Any, ...], Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        lo, hi = self.width_range
        self.space = [_param("lr", "float", 1e-4, 1e-1), _param("width", "int", lo, hi),
                      _param(RESOURCE, "int", 1, int(self.max_resource))]

    def params(self, width: int) -> int:
        w = int(width)
        return (self.n_in + 1) * w + (self.depth - 1) * (w + 1) * w + (w + 1) * self.n_out

    def train_samples(self) -> int:
        if self._train_samples is None:
            from hpod.trainers.data import load_mnist_or_digits

            self._train_samples = len(load_mnist_or_digits(None, "digits").x_train)
        return self._train_samples

    def cost(self, config: Mapping[str, Any], resource: float) -> float:
        """Training FLOPs in GFLOP: 6 · parameters · samples per epoch."""
        return 6e-9 * self.params(int(config["width"])) * self.train_samples() * float(resource)

    def cost_range(self) -> tuple[float, float]:
        lo, hi = self.width_range
        return (self.cost({"width": lo}, 1.0), self.cost({"width": hi}, self.max_resource))

    def evaluate(self, config: Mapping[str, Any], resource: float) -> float:
        import torch
        from hpod.trainers.base import TrainerContext
        from hpod.trainers.mup_mlp import MuPMLPTrainer

        torch.set_num_threads(1)  # the benchmark runs one process per core
        epochs = int(config[RESOURCE])
        r = float(min(max(round(resource), 1), epochs))
        key = (float(config["lr"]), int(config["width"]), epochs)
        curve = self._curves.setdefault(key, {})
        if r not in curve:
            trainer = self._live.get(key)
            if trainer is None:
                # The cosine schedule spans the trial's own epochs; one fixed seed, so the
                # objective is a function of the configuration alone.
                ctx = TrainerContext(seed=0, max_resource=float(epochs),
                                     settings={"dataset": "digits", "recipe": "modern"})
                trainer = MuPMLPTrainer({"lr": key[0], "width": key[1], "depth": self.depth},
                                        ctx)
                self._live[key] = trainer
            for epoch, val_loss in trainer.train(trainer.epoch, r):
                curve[float(epoch)] = float(val_loss)
            if trainer.epoch >= epochs:
                del self._live[key]  # done: keep the curve, free the model
        return curve[r]

    def value_range(self) -> tuple[float, float] | None:
        return None  # the best is what the runs found; the reference is ln 10

    reference_value: float = math.log(10.0)


def make_problem(name: str) -> Any:
    if name == "scaling-law":
        return ScalingLaw()
    if name == "mup-digits":
        return MuPDigits()
    raise ValueError(f"unknown problem {name!r}; choose from {list(PROBLEMS)}")


# ------------------------------------------------------------------ random search and the proxy


class UniformRandom(Algorithm):
    """Uniform random search over the whole space, the resource parameter included: each trial
    trains from 0 to its own value of that parameter (hpod's ``random`` always trains to R)."""

    name = "bench-random"

    def __init__(self, ctx: Context) -> None:
        self.space = ctx.space
        self.resource_param = str(ctx.settings.get("resource_param", RESOURCE))
        self.max_trials = int(ctx.max_trials or 1)
        self.rng = rng_for(ctx.seed, 0)
        self.started = 0
        self.running: set[int] = set()
        self.results: dict[int, float] = {}

    def next_jobs(self, free: int) -> list[Job]:
        jobs = []
        while len(jobs) < free and self.started < self.max_trials:
            config = self.space.sample(self.rng)
            tid, self.started = self.started, self.started + 1
            self.running.add(tid)
            jobs.append(Job(tid, config, 0.0, float(config[self.resource_param]), 0, 0))
        return jobs

    def on_progress(self, trial_id: int, resource: float, value: float) -> Decision:
        return Decision.CONTINUE

    def on_job_end(self, job: Job, outcome: Outcome) -> None:
        self.running.discard(job.trial_id)
        if outcome.status is Status.COMPLETED and outcome.value is not None:
            self.results[job.trial_id] = float(outcome.value)

    def plan(self) -> Plan:
        return Plan(max_trials=self.max_trials)

    def done(self) -> bool:
        return self.started >= self.max_trials and not self.running

    def best(self) -> tuple[int, float] | None:
        if not self.results:
            return None
        tid = min(self.results, key=lambda t: (self.results[t], t))
        return tid, self.results[tid]

    def state(self) -> dict[str, Any]:
        return {"started": self.started}

    def restore(self, state: Mapping[str, Any]) -> None:
        raise NotImplementedError("a benchmark algorithm")


class ReferenceFailed(RuntimeError):
    """The reference process failed; the message carries its traceback or stderr."""


class ReferenceCarbs(UniformRandom):
    """imbue's CARBS in another interpreter, as an hpod algorithm: ``next_jobs`` asks it for
    suggestions, ``on_job_end`` tells it the value and cost. The process starts on the first
    ask (building the study to validate it must not start one) and stops with :meth:`close`."""

    name = "imbue-carbs"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.python = str(ctx.settings["python"])
        self.gp_steps = ctx.settings.get("gp_steps")
        self.seed = int(ctx.seed)
        self.proc: subprocess.Popen[str] | None = None
        self.errfile: Any = None
        self.tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self.ids: dict[int, str] = {}
        self.ints = {p.name for p in ctx.space.params if isinstance(p, Int)}
        # The same basic space hpod's carbs builds by default (transform, scale, bounds) and
        # the same search centre.
        center = {"search_center": ctx.settings["search_center"]} if ctx.settings.get(
            "search_center") else {}
        core = CarbsCore(ctx.space, center, rng_for(0, 0))
        self.params = [{"name": d.name, "transform": d.transform, "low": d.low, "high": d.high,
                        "scale": d.scale, "integer": d.integer, "rounding": d.rounding,
                        "center": float(d.from_basic(u))}
                       for d, u in zip(core.dims, core.center, strict=True)]

    def _call(self, req: Mapping[str, Any]) -> dict[str, Any]:
        if self.proc is None:
            self._start()
        assert self.proc is not None and self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise ReferenceFailed(f"the reference process died:\n{self._stderr_tail()}")
        reply = json.loads(line)
        if "error" in reply:
            raise ReferenceFailed(f"the reference failed on {req['op']}:\n{reply['error']}")
        return reply

    def _start(self) -> None:
        self.tmpdir = tempfile.TemporaryDirectory(prefix="imbue-carbs-")
        self.errfile = open(Path(self.tmpdir.name) / "stderr.log", "w+")
        self.proc = subprocess.Popen([self.python, str(ADAPTER)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.errfile, text=True,
                                     cwd=self.tmpdir.name)
        self._call({"op": "init", "seed": self.seed, "params": self.params,
                    "gp_steps": self.gp_steps,
                    "checkpoint_dir": str(Path(self.tmpdir.name) / "checkpoints")})

    def _stderr_tail(self) -> str:
        if self.errfile is None:
            return ""
        self.errfile.flush()
        self.errfile.seek(0)
        return self.errfile.read()[-3000:]

    def next_jobs(self, free: int) -> list[Job]:
        jobs = []
        while len(jobs) < free and self.started < self.max_trials:
            reply = self._call({"op": "suggest"})
            config = {p.name: self._clip(p, reply["config"][p.name]) for p in self.space.params}
            tid, self.started = self.started, self.started + 1
            self.running.add(tid)
            self.ids[tid] = reply["id"]
            jobs.append(Job(tid, config, 0.0, float(config[self.resource_param]), 0, 0))
        return jobs

    def _clip(self, p: Any, value: float) -> int | float:
        v = min(max(float(value), p.low), p.high)
        return int(round(v)) if p.name in self.ints else v

    def on_job_end(self, job: Job, outcome: Outcome) -> None:
        super().on_job_end(job, outcome)
        sid = self.ids.pop(job.trial_id)
        value = outcome.value if outcome.status is Status.COMPLETED else None
        self._call({"op": "observe", "id": sid, "config": job.config,
                    "value": math.nan if value is None else float(value),
                    "cost": float(outcome.cost or (job.to_resource - job.from_resource))})

    def stats(self) -> dict[str, Any]:
        return self._call({"op": "stats"}) if self.proc is not None else {}

    def close(self) -> None:
        if self.proc is not None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        if self.errfile is not None:
            self.errfile.close()
            self.errfile = None
        if self.tmpdir is not None:
            self.tmpdir.cleanup()
            self.tmpdir = None


register_algorithm(UniformRandom.name)(UniformRandom)
register_algorithm(ReferenceCarbs.name)(ReferenceCarbs)


def reference_status(python: str | None) -> tuple[bool, str]:
    """Whether the reference can run, and if not why (printed, and kept in the results)."""
    if not python:
        return False, (f"skipped: no --carbs-python (or {ENV_PYTHON}) given; install "
                       "imbue-ai/carbs into a separate venv (bench/README.md) and pass its python")
    try:
        out = subprocess.run([python, "-c", "import carbs, torch; print(torch.__version__)"],
                             capture_output=True, text=True, timeout=300, cwd=tempfile.gettempdir())
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"skipped: cannot run {python}: {exc}"
    if out.returncode != 0:
        return False, (f"skipped: {python} cannot import carbs: "
                       f"{out.stderr.strip().splitlines()[-1] if out.stderr.strip() else '?'}")
    return True, f"ran with {python} (torch {out.stdout.strip()})"


# ------------------------------------------------------------------ runs


class CostSimulator(Simulator):
    """The simulator, stopped by cumulative cost instead of resource, recording each trial's
    end: (cost spent so far by the whole study, the trial's cost, its value, its config)."""

    def __init__(self, problem: Any, config: Any, workers: int, budget_cost: float) -> None:
        super().__init__(problem, config, workers)
        self.budget_cost = budget_cost
        self.spent = 0.0
        self.ends: list[tuple[float, float, float, dict[str, Any]]] = []
        self._configs: dict[str, dict[str, Any]] = {}

    def _start(self, job: Any, worker: int) -> None:
        self._configs[job.job_id] = job.config
        super()._start(job, worker)

    def _step(self, run: Any) -> None:
        r = run.steps[run.index]
        prev = run.steps[run.index - 1] if run.index else run.job.from_resource
        config = run.job.config
        self.spent += self.problem.cost(config, r) - self.problem.cost(config, prev)
        super()._step(run)

    def _event(self, ev: dict[str, Any]) -> Any:
        if ev["op"] == "complete":
            config = self._configs.pop(ev["job_id"])
            self.ends.append((self.spent, float(ev["cost"]), float(ev["value"]), config))
        return super()._event(ev)

    def _spent(self) -> bool:
        return self.spent >= self.budget_cost


@dataclass
class Run:
    problem: str
    method: str
    seed: int
    budget: float  # cumulative cost
    ends: list[tuple[float, float, float, dict[str, Any]]]
    trials: int
    wall_seconds: float
    notes: dict[str, Any] = field(default_factory=dict)


_PROBLEMS: dict[str, Any] = {}


def _problem(name: str) -> Any:
    """One instance per process, so trained configurations are reused across runs."""
    if name not in _PROBLEMS:
        _PROBLEMS[name] = make_problem(name)
    return _PROBLEMS[name]


def budget_of(problem: Any, budget_in_cmax: float) -> float:
    return budget_in_cmax * problem.cost_range()[1]


def search_center(problem: Any, where: str) -> dict[str, float]:
    """The CARBS search centre: ``middle`` is hpod's default (the middle of every parameter's
    basic-space range); ``cheap`` moves the cost parameters (width, epochs) to 20 % of theirs,
    as the reference's README recommends ("start out the search in a low cost region")."""
    if where == "middle":
        return {}
    core = CarbsCore(SearchSpace.from_dict(problem.space), {}, rng_for(0, 0))
    out = {}
    for d, lo, hi in zip(core.dims, core.lo, core.hi, strict=True):
        if d.name in ("width", RESOURCE):
            out[d.name] = float(d.from_basic(lo + 0.2 * (hi - lo)))
    return out


def one_run(task: tuple[str, str, int, Mapping[str, Any]]) -> Run:
    """One run. ``opts``: ``budget`` (in c_max), ``workers``, ``center``, and for the
    reference ``python`` and ``gp_steps``."""
    problem_name, method, seed, opts = task
    problem = _problem(problem_name)
    budget = budget_of(problem, opts["budget"])
    workers = int(opts["workers"])
    algorithm = {"carbs": "carbs", "random": UniformRandom.name,
                 "imbue-carbs": ReferenceCarbs.name}[method]
    settings: dict[str, Any] = {"resource_param": RESOURCE}
    if method != "random":
        settings["search_center"] = search_center(problem, opts["center"])
    if method == "imbue-carbs":
        settings.update(python=opts["python"], gp_steps=opts.get("gp_steps"))
    # An upper bound on trials: the cost budget ends the run long before.
    max_trials = int(budget / problem.cost_range()[0]) + workers + 1
    config = study_config(problem, algorithm, max_trials, seed, settings)
    t0 = time.perf_counter()
    sim = CostSimulator(problem, config, workers, budget)
    notes: dict[str, Any] = {}
    try:
        sim.run()
        alg = sim.engine.algorithm
        if isinstance(alg, ReferenceCarbs):
            notes = alg.stats().get("counts", {})
        elif hasattr(alg, "events"):
            notes = dict(alg.events)
    finally:
        if isinstance(sim.engine.algorithm, ReferenceCarbs):
            sim.engine.algorithm.close()
    return Run(problem_name, method, seed, budget, sim.ends, len(sim.engine.trials),
               time.perf_counter() - t0, notes)


# ------------------------------------------------------------------ scoring


def hypervolume(points: Sequence[tuple[float, float]]) -> float:
    """Area dominated by (u, v) points in the unit square, reference point (1, 1); both
    coordinates are to be minimised, and are clipped to [0, 1]."""
    pts = sorted((min(max(u, 0.0), 1.0), min(max(v, 0.0), 1.0)) for u, v in points)
    area, best = 0.0, 1.0
    for i, (u, v) in enumerate(pts):
        best = min(best, v)
        nxt = pts[i + 1][0] if i + 1 < len(pts) else 1.0
        area += (nxt - u) * (1.0 - best)
    return area


@dataclass(frozen=True)
class Scale:
    """Normalisation of one problem: log cost over [c_min, c_max], value over [best, ref]."""

    c_min: float
    c_max: float
    best: float
    ref: float

    def point(self, cost: float, value: float) -> tuple[float, float]:
        u = (math.log(cost) - math.log(self.c_min)) / (math.log(self.c_max) - math.log(self.c_min))
        return u, (value - self.best) / (self.ref - self.best)

    def hv(self, cost_values: Sequence[tuple[float, float]]) -> float:
        return hypervolume([self.point(c, v) for c, v in cost_values])


def front_of(cost_values: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The non-dominated (cost, value) points, cheapest first."""
    out: list[tuple[float, float]] = []
    for c, v in sorted(cost_values):
        if not out or v < out[-1][1]:
            out.append((c, v))
    return out


def hv_at(run: Run, scale: Scale, spent: float, ideal: float) -> float:
    pts = [(c, v) for at, c, v, _ in run.ends if at <= spent + 1e-9]
    return scale.hv(pts) / ideal if pts else 0.0


def quartiles(xs: Sequence[float]) -> tuple[float, float, float]:
    q1, med, q3 = np.percentile(np.asarray(xs, dtype=float), [25, 50, 75])
    return float(q1), float(med), float(q3)


def scale_for(name: str, runs: Sequence[Run]) -> tuple[Scale, float, list[tuple[float, float]]]:
    """The problem's normalisation, the best front's hypervolume and that front."""
    problem = _problem(name)
    c_min, c_max = problem.cost_range()
    if name == "scaling-law":
        best, ref = problem.value_range()
        front = list(zip(*problem.front(), strict=True))
    else:
        ref = problem.reference_value
        pts = [(c, v) for r in runs if r.problem == name for _, c, v, _ in r.ends]
        front = front_of(pts)
        best = min((v for _, v in front), default=0.0)
    scale = Scale(c_min, c_max, best, ref)
    return scale, scale.hv(front), front


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def summarise(runs: list[Run]) -> dict[str, Any]:
    table: dict[str, dict[str, Any]] = {}
    curves: dict[str, dict[str, Any]] = {}
    fronts: dict[str, dict[str, Any]] = {}
    norm: dict[str, Any] = {}
    grid = np.linspace(0.0, 1.0, GRID + 1)[1:]
    for problem in dict.fromkeys(r.problem for r in runs):
        scale, ideal, best_front = scale_for(problem, runs)
        norm[problem] = {"c_min": scale.c_min, "c_max": scale.c_max, "best_value": scale.best,
                         "reference_value": scale.ref, "best_front_hypervolume": ideal,
                         "best_front": best_front}
        for method in dict.fromkeys(r.method for r in runs):
            mine = [r for r in runs if r.problem == problem and r.method == method]
            if not mine:
                continue
            row: dict[str, Any] = {
                "seeds": len(mine), "trials": statistics.fmean(r.trials for r in mine),
                "wall_seconds": statistics.fmean(r.wall_seconds for r in mine),
                "best_value": _finite_or_none(statistics.median(
                    min((v for _, _, v, _ in r.ends), default=math.inf) for r in mine)),
                "notes": {k: sum(r.notes.get(k, 0) for r in mine)
                          for k in sorted({k for r in mine for k in r.notes})}}
            for f in FRACTIONS:
                q1, med, q3 = quartiles([hv_at(r, scale, f * r.budget, ideal) for r in mine])
                row[f"{int(f * 100)}%"] = {"median": med, "q1": q1, "q3": q3}
            table.setdefault(problem, {})[method] = row
            per_seed = np.array([[hv_at(r, scale, g * r.budget, ideal) for g in grid]
                                 for r in mine])
            q = np.percentile(per_seed, [25, 50, 75], axis=0)
            curves.setdefault(problem, {})[method] = {
                "fraction": grid.tolist(), "q1": q[0].tolist(), "median": q[1].tolist(),
                "q3": q[2].tolist()}
            first = min(mine, key=lambda r: r.seed)
            fronts.setdefault(problem, {})[method] = {
                "seed": first.seed,
                "points": [[c, v] for _, c, v, _ in first.ends],
                "front": front_of([(c, v) for _, c, v, _ in first.ends]),
                "configs": [cfg for _, _, _, cfg in first.ends]}
    return {"hypervolume": table, "curves": curves, "fronts": fronts, "normalisation": norm}


def markdown(res: Mapping[str, Any]) -> str:
    lines = ["| problem | method | seeds | trials | 25 % | 50 % | 100 % | best value | s / run |",
             "| --- | --- | ---: | ---: | --- | --- | --- | ---: | ---: |"]
    for problem, rows in res["hypervolume"].items():
        for method, row in rows.items():
            cells = [f"{row[k]['median']:.3f} [{row[k]['q1']:.3f}, {row[k]['q3']:.3f}]"
                     for k in ("25%", "50%", "100%")]
            best = "none" if row["best_value"] is None else f"{row['best_value']:.4f}"
            lines.append(f"| {problem} | {method} | {row['seeds']} | {row['trials']:.0f} | "
                         + " | ".join(cells) + f" | {best} | {row['wall_seconds']:.1f} |")
    return "\n".join(lines) + "\n"


STYLES = {"carbs": "C3", "random": "C7", "imbue-carbs": "C0"}


def plot(res: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt

    problems = list(res["curves"])
    fig, axes = plt.subplots(2, len(problems), figsize=(5.0 * len(problems), 7.6),
                             squeeze=False)
    for col, problem in enumerate(problems):
        ax = axes[0][col]
        budget = res["setup"]["budgets"][problem]
        for method, c in res["curves"][problem].items():
            x = np.asarray(c["fraction"]) * budget
            ax.plot(x, c["median"], color=STYLES.get(method, "k"), label=method)
            ax.fill_between(x, c["q1"], c["q3"], color=STYLES.get(method, "k"), alpha=0.15)
        ax.set_title(f"{problem}: front quality")
        ax.set_xlabel("cumulative cost")
        ax.set_ylabel("normalised hypervolume (median, IQR)")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)

        ax = axes[1][col]
        norm = res["normalisation"][problem]
        bx, by = zip(*norm["best_front"], strict=True)
        label = "true front" if problem == "scaling-law" else "best front (all runs)"
        ax.step(bx, by, where="post", color="k", linewidth=1, label=label)
        for method, fr in res["fronts"][problem].items():
            color = STYLES.get(method, "k")
            if fr["points"]:
                px, py = zip(*fr["points"], strict=True)
                ax.scatter(px, py, s=8, color=color, alpha=0.35)
            if fr["front"]:
                fx, fy = zip(*fr["front"], strict=True)
                ax.step(fx, fy, where="post", color=color, label=f"{method} (seed {fr['seed']})")
        ax.set_xscale("log")
        ax.set_ylim(norm["best_value"] - 0.05 * (norm["reference_value"] - norm["best_value"]),
                    norm["reference_value"])
        ax.set_xlabel("trial cost" + (" (width x epochs)" if problem == "scaling-law"
                                      else " (GFLOP)"))
        ax.set_ylabel("loss" if problem == "scaling-law" else "validation loss")
        ax.set_title(f"{problem}: observed fronts, seed 0")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------ main


def run_all(problems: list[str], methods: list[str], seeds: int, budgets: Mapping[str, float],
            workers: int, jobs: int, python: str | None, center: str = "cheap",
            gp_steps: int | None = None, log: Any = print) -> dict[str, Any]:
    status: dict[str, Any] = {"ran": False, "why": "not requested"}
    if "imbue-carbs" in methods:
        ok, why = reference_status(python)
        status = {"ran": ok, "why": why, "gp_steps": gp_steps or "library default (1000)"}
        log(f"imbue-carbs: {why}")
        if not ok:
            methods = [m for m in methods if m != "imbue-carbs"]
    tasks = [(p, m, s, {"budget": budgets[p], "workers": workers, "python": python,
                        "center": center, "gp_steps": gp_steps})
             for p in problems for m in methods for s in range(seeds)]
    # The slow ones first (real training, the reference's GPs), so they are not the tail.
    tasks.sort(key=lambda t: (t[1] != "imbue-carbs", t[0] != "mup-digits"))
    runs: list[Run] = []
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        for run in pool.map(one_run, tasks):
            runs.append(run)
            log(f"{run.problem} {run.method} seed {run.seed}: {run.trials} trials, best "
                f"{min((v for _, _, v, _ in run.ends), default=math.nan):.4f}, "
                f"{run.wall_seconds:.1f} s {run.notes or ''}")
    runs.sort(key=lambda r: (problems.index(r.problem), methods.index(r.method), r.seed))
    res = {"setup": {"problems": problems, "methods": methods, "seeds": seeds,
                     "budget_in_c_max": dict(budgets), "workers": workers, "center": center,
                     "search_center": {p: search_center(_problem(p), center) for p in problems},
                     "budgets": {p: budget_of(_problem(p), budgets[p]) for p in problems},
                     "fractions": list(FRACTIONS), "reference": status},
           **summarise(runs),
           "runs": [{"problem": r.problem, "method": r.method, "seed": r.seed,
                     "trials": r.trials, "wall_seconds": r.wall_seconds, "notes": r.notes,
                     "ends": [[at, c, v] for at, c, v, _ in r.ends]} for r in runs]}
    return res


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description="carbs vs random vs imbue's reference CARBS")
    ap.add_argument("--problems", default=",".join(PROBLEMS))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--budget", type=float, default=1.0,
                    help="scaling-law budget of cumulative cost, in multiples of the costliest "
                         "configuration's cost")
    ap.add_argument("--mup-budget", type=float, default=0.25,
                    help="mup-digits budget, in multiples of its costliest configuration")
    ap.add_argument("--workers", type=int, default=4, help="simulated concurrent workers")
    ap.add_argument("--center", choices=("cheap", "middle"), default="cheap",
                    help="CARBS search centre (both implementations): the cheap corner (the "
                         "reference's advice) or the middle of the space (hpod's default)")
    ap.add_argument("--jobs", type=int, default=max(1, min(2, os.cpu_count() or 1)),
                    help="benchmark processes")
    ap.add_argument("--carbs-python", default=os.environ.get(ENV_PYTHON),
                    help=f"python of a venv with imbue-ai/carbs installed (or {ENV_PYTHON})")
    ap.add_argument("--reference-gp-steps", type=int, default=None,
                    help="override the reference's Adam steps per GP fit (library: 1000, at "
                         "lr 1e-4); for runs where its ~3,000 steps per suggestion are too slow")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--quick", action="store_true",
                    help="CI smoke run: 2 seeds, tiny budgets (numbers mean nothing)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problems = args.problems.split(",")
    methods = args.methods.split(",")
    for m in methods:
        if m not in METHODS:
            raise SystemExit(f"unknown method {m!r}; choose from {list(METHODS)}")
    if args.quick:
        args.seeds, args.budget, args.mup_budget = 2, 0.03, 0.005
    budgets = {p: args.mup_budget if p == "mup-digits" else args.budget for p in problems}
    started = time.perf_counter()
    res = run_all(problems, methods, args.seeds, budgets, args.workers, args.jobs,
                  args.carbs_python, args.center, args.reference_gp_steps,
                  lambda s: print(s, file=sys.stderr, flush=True))
    res["setup"].update({
        "quick": args.quick,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}, "
                   f"Python {platform.python_version()}",
        "wall_seconds": round(time.perf_counter() - started, 1)})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "carbs-quick" if args.quick else "carbs"
    (out / f"{stem}.json").write_text(json.dumps(res, indent=1))
    table = markdown(res)
    (out / f"{stem}.md").write_text(table)
    plot(res, out / f"{stem}.png")
    print(table)
    print(f"imbue-carbs: {res['setup']['reference']['why']}")
    print(f"wrote {out / stem}.json, .md, .png in {res['setup']['wall_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
