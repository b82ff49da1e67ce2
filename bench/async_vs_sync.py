"""Asynchronous against synchronous Hyperband in wall time, on the simulated cluster.

    python bench/async_vs_sync.py [--problems branin-mf,hartmann6-mf] [--workers 4]
        [--seeds 10] [--budget 60] [--plot bench/plots/async_vs_sync.png] [--json]

Each method runs the real engine in :mod:`hpod.server.simulator` with the same problems, seeds,
number of workers and budget (resource trained, in units of the maximum resource R). The clock
is the problems' cost model, so "wall time" is what a cluster of that many workers would take.
Synchronous Hyperband waits at each rung for the rung's last trial; the asynchronous forms do
not. Reported per problem, over seeds (medians, paired by seed):

* the simulated time each method needs to reach a normalised regret target (a method that
  never reaches it within the budget counts as the time at which its budget ran out, flagged);
  the targets are the median final regret of synchronous Hyperband and two easier ones;
* the speed-up of each method over synchronous Hyperband at those targets (ratio of times);
* worker utilisation.

Normalised regret is ``(best - optimum) / (reference - optimum)``, with ``reference`` the mean
value of 1,000 fixed random configurations at R, as in ``bench/compare.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from hpod.server.algorithms import SearchSpace
from hpod.server.problems import Problem, get_problem
from hpod.server.simulator import simulate

# name -> (algorithm, settings)
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "hyperband (sync)": ("hyperband", {}),
    "async-hyperband promotion": ("async-hyperband", {"mode": "promotion"}),
    "async-hyperband stopping": ("async-hyperband", {"mode": "stopping"}),
    "asha promotion": ("asha", {"mode": "promotion"}),
}
BASELINE = "hyperband (sync)"


@dataclass
class Run:
    problem: str
    method: str
    seed: int
    trace: list[tuple[float, float, float]]  # (simulated s, resource consumed, best so far)
    end: float  # simulated seconds when the budget ran out
    utilisation: float


def reference_value(problem: Problem, n: int = 1000) -> float:
    space = SearchSpace.from_dict(problem.space)
    rng = np.random.default_rng(12345)
    return float(np.mean([problem.evaluate(space.sample(rng), problem.max_resource)
                          for _ in range(n)]))


def one_run(problem: Problem, method: str, workers: int, seed: int, budget: float) -> Run:
    algorithm, settings = METHODS[method]
    settings = dict(settings)
    r_min = float(getattr(problem, "min_resource", 1.0))
    if algorithm == "hyperband":
        settings["iterations"] = math.ceil(budget / problem.max_resource) + 1
    res = simulate(problem, algorithm, workers, math.ceil(budget / r_min) + 1, seed, settings,
                   budget=budget)
    return Run(problem.name, method, seed, res.trace, res.simulated_seconds, res.utilisation)


def normalised(best: float, optimum: float, ref: float) -> float:
    return max(best - optimum, 0.0) / max(ref - optimum, 1e-12)


def time_to(run: Run, target: float, optimum: float, ref: float) -> tuple[float, bool]:
    """Simulated seconds until the best value's regret is <= target; (end, False) if never."""
    for t, _, best in run.trace:
        if normalised(best, optimum, ref) <= target:
            return t, True
    return run.end, False


def final_regret(run: Run, optimum: float, ref: float) -> float:
    return normalised(run.trace[-1][2], optimum, ref) if run.trace else 1.0


def summarise(runs: Sequence[Run], problems: dict[str, Problem]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, prob in problems.items():
        ref = reference_value(prob)
        opt = float(prob.optimum)
        mine = [r for r in runs if r.problem == name]
        base = {r.seed: r for r in mine if r.method == BASELINE}
        sync_final = statistics.median(final_regret(r, opt, ref) for r in base.values())
        targets = sorted({round(sync_final, 4), round(2 * sync_final, 4),
                          round(4 * sync_final, 4)}, reverse=True)
        rows = []
        for method in METHODS:
            these = {r.seed: r for r in mine if r.method == method}
            row: dict[str, Any] = {
                "method": method,
                "final_regret": statistics.median(final_regret(r, opt, ref)
                                                  for r in these.values()),
                "utilisation": statistics.median(r.utilisation for r in these.values()),
                "targets": {}}
            for target in targets:
                times = [time_to(r, target, opt, ref) for r in these.values()]
                ratios = [time_to(base[s], target, opt, ref)[0] / max(time_to(r, target, opt,
                                                                              ref)[0], 1e-9)
                          for s, r in these.items()]
                row["targets"][str(target)] = {
                    "median_seconds": statistics.median(t for t, _ in times),
                    "reached": sum(ok for _, ok in times), "runs": len(times),
                    "speedup_vs_sync": statistics.median(ratios)}
            rows.append(row)
        out[name] = {"reference": ref, "optimum": opt, "targets": targets, "rows": rows}
    return out


def print_table(summary: dict[str, Any], workers: int, seeds: int, budget: float) -> None:
    print(f"{workers} workers, {seeds} seeds, budget {budget:g} x R; medians over seeds; "
          "time = simulated seconds to reach the normalised-regret target (reached/runs); "
          "speed-up = sync time / method time, paired by seed")
    for name, s in summary.items():
        print(f"\n{name} (targets: regret <= {', '.join(str(t) for t in s['targets'])})")
        head = "| method | final regret | utilisation | " + " | ".join(
            f"time to {t} | speed-up" for t in s["targets"]) + " |"
        print(head)
        print("|" + " --- |" * (3 + 2 * len(s["targets"])))
        for row in s["rows"]:
            cells = [row["method"], f"{row['final_regret']:.4f}", f"{row['utilisation']:.1%}"]
            for t in s["targets"]:
                c = row["targets"][str(t)]
                cells += [f"{c['median_seconds']:.0f} s ({c['reached']}/{c['runs']})",
                          f"{c['speedup_vs_sync']:.2f}x"]
            print("| " + " | ".join(cells) + " |")


def plot(runs: Sequence[Run], problems: dict[str, Problem], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(problems), figsize=(6 * len(problems), 4.2), squeeze=False)
    for ax, (name, prob) in zip(axes[0], problems.items(), strict=True):
        ref, opt = reference_value(prob), float(prob.optimum)
        mine = [r for r in runs if r.problem == name]
        horizon = max(r.end for r in mine)
        xs = np.linspace(0, horizon, 200)
        for method in METHODS:
            curves = []
            for r in (r for r in mine if r.method == method):
                ys, k, best = [], 0, 1.0
                for x in xs:
                    while k < len(r.trace) and r.trace[k][0] <= x:
                        best = normalised(r.trace[k][2], opt, ref)
                        k += 1
                    ys.append(best)
                curves.append(ys)
            ax.plot(xs, np.median(np.array(curves), axis=0), label=method)
        ax.set_yscale("log")
        ax.set_xlabel("simulated wall time (s)")
        ax.set_ylabel("normalised regret (median over seeds)")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--problems", default="branin-mf,hartmann6-mf")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--budget", type=float, default=60.0, help="resource budget in units of R")
    ap.add_argument("--plot", default=None, help="write a PNG of regret against wall time")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    problems = {name: get_problem(name) for name in args.problems.split(",")}
    runs = [one_run(prob, method, args.workers, seed, args.budget * prob.max_resource)
            for prob in problems.values() for method in METHODS for seed in range(args.seeds)]
    summary = summarise(runs, problems)
    if args.plot:
        plot(runs, problems, args.plot)
    if args.json:
        json.dump(summary, sys.stdout, indent=1)
        print()
    else:
        print_table(summary, args.workers, args.seeds, args.budget)
    return 0


if __name__ == "__main__":
    sys.exit(main())
