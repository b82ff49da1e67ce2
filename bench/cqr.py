"""Conformal quantile regression search against its baselines.

    python bench/cqr.py [--seeds 10] [--mlp-seeds 3] [--budget 20] [--mlp-budget 10]
                        [--max-resource 9] [--workers 4] [--jobs 2]
                        [--problems branin-curve,branin-mf,hartmann6-mf,mlp-digits]
                        [--out bench/results] [--quick]
                        [--peers syne-tune|none] [--syne-python PYTHON]
                        [--methods cqr,syne-cqr,...] [--stem cqr]

Two pairs, each like for like: ``cqr`` (single fidelity: every trial trains to R) against
``random`` (the same), and ``asha-cqr`` (ASHA whose new trials come from the CQR sampler)
against plain ``asha`` with random sampling, both in stopping mode. Every run drives the real
:class:`StudyEngine` through :mod:`hpod.server.simulator`: ``--workers`` simulated workers ask
for jobs when free and report each resource unit in simulated-clock order, so pending trials
and asynchronous promotions happen as on a cluster. A run stops once ``--budget`` R of resource
has been trained (``consumed``: every reported unit counts, stopped trials included).

Problems: the analytic trainer's Branin-curve function and BoTorch's AugmentedBranin and
AugmentedHartmann with a learning curve (``hpod.server.problems``), and ``mlp-digits``: the
``mlp`` trainer (Hinton et al.'s dropout MLP) on scikit-learn's digits, trained for real in this
process, one CPU thread, with R = 9 epochs. Its trials are cached per configuration (training
is seeded, so a configuration has one learning curve), which makes a resumed or repeated
configuration free, as a checkpoint would.

Normalised regret = (best value observed so far − optimum) / (reference − optimum); the
reference is the mean value at R of fixed random configurations (1,000 for the analytic
functions, 10 for the MLP): 0 is the optimum, 1 an average random guess. The MLP's optimum is
unknown, so it is the lowest validation error any run of this benchmark observed (regret 0 is
"as good as the best this benchmark found"). Reported: median and interquartile range over
seeds at 25 / 50 / 100 % of the budget, a JSON file, a Markdown table and a PNG plot of median
regret (IQR band) against resource consumed.

Syne Tune beside it (``--peers syne-tune``, the default): its ``CQR`` (beside ``cqr``) and
``ASHACQR`` (beside ``asha-cqr``), rows ``syne-cqr`` and ``syne-asha-cqr``, on the same problems,
seeds, workers, budgets and simulated clock. Syne Tune runs in an interpreter of its own
(``--syne-python``, else ``$HPOD_SYNE_PYTHON``, else this one if it has syne-tune), driven by
``bench/peers/driver.py``: the problems, the MLP's training included, are evaluated here. Without
such an interpreter the peer rows are skipped and the reason is printed and saved.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from hpod.server.algorithms import SearchSpace
from hpod.server.problems import Problem, get_problem
from hpod.server.simulator import simulate

FRACTIONS = (0.25, 0.5, 1.0)
GRID = 50  # points of the plotted regret curves
PAIRS = (("cqr", "random"), ("asha-cqr", "asha"))
# Syne Tune's counterparts (bench/peers/syne_tune_runner.py): method -> the runner's method.
SYNE = {"syne-cqr": "cqr", "syne-asha-cqr": "asha-cqr"}
ANALYTIC = ("branin-curve", "branin-mf", "hartmann6-mf")
Trace = list[tuple[float, float, float]]  # (simulated seconds, resource consumed, best so far)


# ------------------------------------------------------------------ the real trainer


@dataclass
class MLPDigits:
    """The ``mlp`` trainer on digits as a simulator problem. ``evaluate`` trains the
    configuration up to ``resource`` (continuing the cached model when it is already part
    way), so the simulator's per-unit calls cost one real epoch each. Cost model: one
    simulated second per epoch (the clock only orders events here; regret is plotted against
    resource)."""

    name: str = "mlp-digits"
    min_resource: float = 1.0
    max_resource: float = 9.0
    eta: int = 3
    optimum: float | None = None  # unknown: filled in from the runs afterwards
    space: list[dict[str, Any]] = field(default_factory=list)
    _cache: dict[tuple[Any, ...], tuple[Any, dict[float, float]]] = field(
        default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        from hpod.trainers.mlp import MLPTrainer

        self.space = MLPTrainer.default_space()

    def evaluate(self, config: Mapping[str, Any], resource: float) -> float:
        import torch
        from hpod.trainers.base import TrainerContext
        from hpod.trainers.mlp import MLPTrainer

        torch.set_num_threads(1)  # the benchmark runs one process per core
        r = float(min(max(round(resource), 1), self.max_resource))
        key = tuple(sorted(config.items()))
        if key not in self._cache:
            # One fixed trial seed: the objective is a function of the configuration alone,
            # the same for every method and seed of the benchmark.
            ctx = TrainerContext(seed=0, max_resource=self.max_resource,
                                 settings={"dataset": "digits", "recipe": "modern"})
            self._cache[key] = (MLPTrainer(dict(config), ctx), {})
        trainer, curve = self._cache[key]
        if r not in curve:
            for epoch, val_error in trainer.train(trainer.epoch, r):
                curve[epoch] = val_error
        return curve[r]

    def cost(self, config: Mapping[str, Any], resource: float) -> float:
        return float(resource)


def make_problem(name: str) -> Problem:
    return MLPDigits() if name == "mlp-digits" else get_problem(name)


# ------------------------------------------------------------------ runs


@dataclass
class Run:
    problem: str
    method: str
    seed: int
    budget: float
    trace: Trace
    trials: int
    wall_seconds: float


def settings_for(method: str, quick: bool) -> dict[str, Any]:
    """Both ASHAs in stopping mode (asha-cqr's default, the paper's form); CQR with its
    documented defaults, except in --quick where fewer trees and candidates keep CI fast."""
    out: dict[str, Any] = {"mode": "stopping"} if method.startswith("asha") else {}
    if quick and "cqr" in method:
        out["cqr"] = {"num_candidates": 200, "n_estimators": 20}
    return out


def _driver() -> Any:
    """bench/peers/driver.py, through compare.py's loader (this script's folder is on the path:
    bench/ is scripts, not a package)."""
    from compare import _driver as load

    return load()


def one_run(task: tuple[str, str, int, float, int, float | None, bool, str | None]) -> Run:
    problem_name, method, seed, budget_r, workers, r_max, quick, peer_python = task
    problem = _problem(problem_name)
    budget = budget_r * (r_max or problem.max_resource)
    t0 = time.perf_counter()
    if method in SYNE:  # Syne Tune in its own interpreter, on the same simulated clock
        assert peer_python is not None
        stats: dict[str, Any] = {}
        trace = _driver().run_peer("syne-tune", peer_python, SYNE[method], problem, workers,
                                   seed, budget, r_max, stats)
        return Run(problem_name, method, seed, budget, trace, stats["trials"],
                   time.perf_counter() - t0)
    r_min = float(getattr(problem, "min_resource", 1.0))
    # An upper bound on trials: the budget ends the run long before.
    trials = math.ceil(budget / r_min) + workers
    res = simulate(problem, method, workers, trials, seed, settings_for(method, quick),
                   max_resource=r_max, budget=budget)
    return Run(problem_name, method, seed, budget, res.trace, res.trials,
               time.perf_counter() - t0)


def syne_tune(peers: list[str], python: str | None) -> tuple[str | None, dict[str, str]]:
    """The interpreter to run Syne Tune with and its version, or None and why it is skipped."""
    if "syne-tune" not in peers:
        return None, {"syne-tune": "not asked for (--peers syne-tune)"}
    drv = _driver()
    try:
        path = drv.interpreter("syne-tune", python)
        info = drv.probe_cached("syne-tune", path)
    except drv.PeerUnavailable as exc:
        return None, {"syne-tune": str(exc)}
    missing = {m: info["unavailable"].get(peer_m, "not offered by the runner")
               for m, peer_m in SYNE.items() if peer_m not in info["methods"]}
    if missing:
        return None, missing
    return path, {"version": f"{info['version']} ({path})"}


_PROBLEMS: dict[str, Problem] = {}


def _problem(name: str) -> Problem:
    """One instance per worker process, so the MLP's trained models are reused across runs."""
    if name not in _PROBLEMS:
        _PROBLEMS[name] = make_problem(name)
    return _PROBLEMS[name]


def reference(name: str, r_max: float | None, n: int) -> float:
    problem = _problem(name)
    space = SearchSpace.from_dict(problem.space)
    rng = np.random.default_rng(12345)
    r = r_max or problem.max_resource
    return statistics.fmean(problem.evaluate(space.sample(rng), r)
                            for _ in range(n))


# ------------------------------------------------------------------ scoring


def best_at(trace: Trace, spent: float) -> float:
    return min((v for _, c, v in trace if c <= spent + 1e-9), default=math.inf)


def regret(best: float, optimum: float, ref: float) -> float:
    if not math.isfinite(best):
        return 1.0  # nothing observed yet: no better than an average guess
    return max(best - optimum, 0.0) / (ref - optimum)


def quartiles(xs: Sequence[float]) -> tuple[float, float, float]:
    q1, med, q3 = np.percentile(np.asarray(xs, dtype=float), [25, 50, 75])
    return float(q1), float(med), float(q3)


def summarise(runs: list[Run], optima: Mapping[str, float], refs: Mapping[str, float]
              ) -> dict[str, Any]:
    table: dict[str, dict[str, Any]] = {}
    curves: dict[str, dict[str, Any]] = {}
    grid = np.linspace(0.0, 1.0, GRID + 1)[1:]
    for problem in dict.fromkeys(r.problem for r in runs):
        opt, ref = optima[problem], refs[problem]
        for method in dict.fromkeys(r.method for r in runs):
            mine = [r for r in runs if r.problem == problem and r.method == method]
            if not mine:
                continue
            row: dict[str, Any] = {"seeds": len(mine),
                                   "trials": statistics.fmean(r.trials for r in mine),
                                   "wall_seconds": statistics.fmean(r.wall_seconds
                                                                    for r in mine)}
            for f in FRACTIONS:
                q1, med, q3 = quartiles([regret(best_at(r.trace, f * r.budget), opt, ref)
                                         for r in mine])
                row[f"{int(f * 100)}%"] = {"median": med, "q1": q1, "q3": q3}
            table.setdefault(problem, {})[method] = row
            per_seed = np.array([[regret(best_at(r.trace, g * r.budget), opt, ref)
                                  for g in grid] for r in mine])
            q = np.percentile(per_seed, [25, 50, 75], axis=0)
            curves.setdefault(problem, {})[method] = {
                "fraction": grid.tolist(), "q1": q[0].tolist(), "median": q[1].tolist(),
                "q3": q[2].tolist()}
    return {"regret": table, "curves": curves}


def markdown(res: Mapping[str, Any]) -> str:
    """One row per problem and method: median [q1, q3] of normalised regret."""
    lines = ["| problem | method | seeds | 25 % | 50 % | 100 % |",
             "| --- | --- | ---: | --- | --- | --- |"]
    for problem, rows in res["regret"].items():
        for method, row in rows.items():
            cells = [f"{row[k]['median']:.4f} [{row[k]['q1']:.4f}, {row[k]['q3']:.4f}]"
                     for k in ("25%", "50%", "100%")]
            lines.append(f"| {problem} | {method} | {row['seeds']} | " + " | ".join(cells)
                         + " |")
    return "\n".join(lines) + "\n"


def plot(res: Mapping[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in CI
    import matplotlib.pyplot as plt

    problems = list(res["curves"])
    fig, axes = plt.subplots(1, len(problems), figsize=(4.2 * len(problems), 3.6),
                             squeeze=False)
    styles = {"cqr": ("C0", "-"), "random": ("C0", ":"), "asha-cqr": ("C3", "-"),
              "asha": ("C3", ":"), "syne-cqr": ("C2", "--"), "syne-asha-cqr": ("C1", "--")}
    for ax, problem in zip(axes[0], problems, strict=True):
        for method, c in res["curves"][problem].items():
            color, ls = styles.get(method, ("k", "-"))
            x = np.asarray(c["fraction"]) * res["setup"][
                "mlp_budget_in_R" if problem == "mlp-digits" else "budget_in_R"]
            ax.plot(x, c["median"], color=color, linestyle=ls, label=method)
            ax.fill_between(x, c["q1"], c["q3"], color=color, alpha=0.12)
        ax.set_yscale("log")
        ax.set_title(problem)
        ax.set_xlabel("resource consumed (multiples of R)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("normalised regret (median, IQR)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------ main


def run_all(problems: list[str], seeds: int, mlp_seeds: int, budget_r: float,
            mlp_budget_r: float, workers: int, jobs: int, r_max: float, quick: bool,
            log: Any = print, peers: Sequence[str] = ("syne-tune",),
            syne_python: str | None = None, only: Sequence[str] | None = None
            ) -> dict[str, Any]:
    """Every method (or those in ``only``) on every problem and seed."""
    methods = [m for pair in PAIRS for m in pair]
    peer_python, peer_info = syne_tune(list(peers), syne_python)
    if peer_python is None:
        skipped = peer_info
        for what, why in skipped.items():
            log(f"skipped {what}: {why}")
    else:
        skipped = {}
        methods += list(SYNE)
    if only:
        methods = [m for m in methods if m in only]

    def rmax(p: str) -> float | None:  # the MLP keeps its own R (9 epochs)
        return None if p == "mlp-digits" else r_max

    def n_ref(p: str) -> int:
        return (3 if quick else 10) if p == "mlp-digits" else 1000

    def budget(p: str) -> float:
        return mlp_budget_r if p == "mlp-digits" else budget_r

    tasks = [(p, m, s, budget(p), workers, rmax(p), quick, peer_python) for p in problems
             for m in methods for s in range(mlp_seeds if p == "mlp-digits" else seeds)]
    # The MLP first: its runs are the longest, so they should not be the tail of the pool.
    tasks.sort(key=lambda t: t[0] != "mlp-digits")
    runs: list[Run] = []
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        refs_f = {p: pool.submit(reference, p, rmax(p), n_ref(p)) for p in problems}
        for run in pool.map(one_run, tasks):
            runs.append(run)
            log(f"{run.problem} {run.method} seed {run.seed}: best "
                f"{best_at(run.trace, run.budget):.5f}, {run.trials} trials, "
                f"{run.wall_seconds:.1f} s")
        refs = {p: f.result() for p, f in refs_f.items()}
    optima: dict[str, float] = {}
    for p in problems:
        known = _problem(p).optimum
        seen = min(best_at(r.trace, r.budget) for r in runs if r.problem == p)
        optima[p] = known if known is not None else seen
    res = {"setup": {"problems": problems, "seeds": seeds, "mlp_seeds": mlp_seeds,
                     "budget_in_R": budget_r, "mlp_budget_in_R": mlp_budget_r,
                     "workers": workers, "quick": quick,
                     "max_resource_analytic": r_max, "max_resource_mlp": MLPDigits.max_resource,
                     "pairs": [list(p) for p in PAIRS], "methods": methods,
                     "fractions": list(FRACTIONS),
                     "peers": {"syne-tune": peer_info.get("version")} if peer_python else {}},
           "skipped": skipped, "optimum": optima, "reference": refs,
           **summarise(runs, optima, refs)}
    return res


KNOWN_METHODS = (*(m for pair in PAIRS for m in pair), *SYNE)


def _methods_arg(text: str) -> list[str]:
    names = [m for m in text.split(",") if m]
    unknown = [m for m in names if m not in KNOWN_METHODS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown method(s) {', '.join(unknown)}; choose "
                                         f"from {', '.join(KNOWN_METHODS)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description="cqr vs random and asha-cqr vs asha")
    ap.add_argument("--problems", default=",".join((*ANALYTIC, "mlp-digits")))
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--mlp-seeds", type=int, default=3)
    ap.add_argument("--budget", type=float, default=20.0, help="in multiples of R")
    ap.add_argument("--mlp-budget", type=float, default=10.0,
                    help="the MLP's budget, in multiples of its R (real training)")
    ap.add_argument("--workers", type=int, default=4, help="simulated concurrent workers")
    ap.add_argument("--max-resource", type=float, default=9.0,
                    help="R of the analytic problems (eta 3, min 1); the MLP uses 9 epochs")
    ap.add_argument("--jobs", type=int, default=max(1, min(2, os.cpu_count() or 1)),
                    help="benchmark processes")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    ap.add_argument("--peers", default="syne-tune",
                    help="syne-tune (its CQR and ASHACQR beside hpod's, when it runs) or none")
    ap.add_argument("--syne-python", default=None, metavar="PYTHON",
                    help="interpreter with syne-tune (else $HPOD_SYNE_PYTHON, else this one)")
    ap.add_argument("--methods", default="", type=_methods_arg,
                    help="only these, comma-separated (default: all of "
                    f"{', '.join(KNOWN_METHODS)})")
    ap.add_argument("--stem", default="",
                    help="name of the result files (default cqr, or cqr-quick)")
    ap.add_argument("--quick", action="store_true",
                    help="CI smoke run: 2 seeds, budget 2 R, small CQR models")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.seeds, args.mlp_seeds, args.budget, args.max_resource = 2, 1, 2.0, 9.0
        args.mlp_budget = 1.0
    from compare import environment  # this script's folder is on the path (see _driver)

    started = time.perf_counter()
    res = run_all(args.problems.split(","), args.seeds, args.mlp_seeds, args.budget,
                  args.mlp_budget,
                  args.workers, args.jobs, args.max_resource, args.quick,
                  lambda s: print(s, file=sys.stderr, flush=True),
                  [p for p in args.peers.split(",") if p and p != "none"], args.syne_python,
                  args.methods)
    res["setup"].update({
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}, "
                   f"Python {platform.python_version()}",
        "wall_seconds": round(time.perf_counter() - started, 1),
        "environment": environment()})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = args.stem or ("cqr-quick" if args.quick else "cqr")
    (out / f"{stem}.json").write_text(json.dumps(res, indent=1))
    table = markdown(res)
    (out / f"{stem}.md").write_text(table)
    plot(res, out / f"{stem}.png")
    print(table)
    for what, why in res["skipped"].items():
        print(f"skipped {what}: {why}")
    print(f"wrote {out / stem}.json, .md, .png in {res['setup']['wall_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
