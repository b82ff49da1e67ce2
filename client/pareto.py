"""``hpod study pareto STUDY [--json] [--plot DIR]``: the cost/value Pareto front of a cost-aware
study and how each hyperparameter scales with cost, as text, JSON or PNG plots.

    pareto_front.png      every finished trial's cost and value, the front drawn through them
    scaling_<param>.png   the parameter over the front points against cost, with its fitted line
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .sdk import ParetoPoint, ScalingFit, Study


def non_dominated(points: list[ParetoPoint], maximize: bool) -> list[ParetoPoint]:
    """The points no other point dominates (no more cost and a value at least as good, better
    in one of the two), cheapest first. Ties matter: of two points at equal cost only the
    better value stays, and of two equal points the first by trial id."""
    def key(p: ParetoPoint) -> tuple[float, float, int]:
        return (p.cost, -p.value if maximize else p.value, p.trial_id)

    out: list[ParetoPoint] = []
    for p in sorted(points, key=key):
        # Sorted by cost then value: a point is on the front iff it beats the last one kept
        # (an equal-cost rival came first with a value at least as good).
        if not out or (p.value > out[-1].value if maximize else p.value < out[-1].value):
            out.append(p)
    return out


def cmd_study_pareto(study: Study, args: argparse.Namespace) -> int:
    points = study.pareto_front()
    fits = study.scaling_fit()
    if args.json:
        print(json.dumps({"points": [asdict(p) for p in points],
                          "fits": {k: asdict(f) for k, f in fits.items()}}))
    else:
        _print(study, points, fits)
    if args.plot:
        for path in plot_pareto(study, points, fits, args.plot):
            print(path)
    return 0


def _print(study: Study, points: list[ParetoPoint], fits: dict[str, ScalingFit]) -> None:
    if not points:
        print(f"study {study.id}: no finished trial yet, so no front")
        return
    print(f"study {study.id}: Pareto front, {len(points)} points, cheapest first")
    for p in points:
        extra = f" (mean of trials {p.trial_ids})" if len(p.trial_ids) > 1 else ""
        print(f"  trial {p.trial_id:4d}  cost {p.cost:10.4g}  value {p.value:10.6g}  "
              f"{p.config}{extra}")
    if not fits:
        print("scaling fit: needs two front points of different cost")
    for f in fits.values():
        law = (f"{f.parameter} ≈ {f.coefficient:.4g} × cost^{f.exponent:.3f}"
               if f.transform == "log" else
               f"{f.transform}({f.parameter}) ≈ {f.exponent:.4g} × log10(cost) "
               f"+ {f.intercept:.4g}")
        print(f"  {law}")


def plot_pareto(study: Study, points: list[ParetoPoint], fits: dict[str, ScalingFit],
                out_dir: str) -> list[Path]:
    """Write the PNGs; an empty list (and a note on stderr) when matplotlib is missing, since
    plotting is an extra that the rest of the command does not need."""
    try:
        import matplotlib
    except ImportError:
        import sys

        print("hpod: --plot needs matplotlib (pip install matplotlib)", file=sys.stderr)
        return []
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    trials = [t for t in study.trials(curves=False) if t.value is not None and t.cost > 0]
    source = study._pareto().cost_source

    fig, ax = plt.subplots(figsize=(6, 4.5))
    # Trials show device seconds; front points use the study's cost source, which may differ.
    if trials and source == "device_seconds":
        ax.scatter([t.cost for t in trials], [t.value for t in trials], s=14, c="0.6",
                   label="trials")
    ax.step([p.cost for p in points], [p.value for p in points], where="post", c="C3")
    ax.scatter([p.cost for p in points], [p.value for p in points], c="C3", s=28,
               label="Pareto front", zorder=3)
    ax.set_xscale("log")
    ax.set_xlabel(f"cost ({source})")
    ax.set_ylabel(study.info.spec.objective.metric or "value")
    ax.set_title(f"study {study.id}: cost/value front")
    ax.legend()
    fig.tight_layout()
    paths.append(out / "pareto_front.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    for name, f in fits.items():
        xs = [p.cost for p in points if isinstance(p.config.get(name), (int, float))]
        ys = [float(p.config[name]) for p in points if isinstance(p.config.get(name), (int, float))]
        if not xs:
            continue
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.scatter(xs, ys, c="C0", label="front points")
        grid = [min(xs) * (max(xs) / min(xs)) ** (i / 50) for i in range(51)]
        ax.plot(grid, [_line(f, c) for c in grid], c="C1", label=f"fit, exponent {f.exponent:.3f}")
        ax.set_xscale("log")
        if f.transform == "log":
            ax.set_yscale("log")
        ax.set_xlabel("cost")
        ax.set_ylabel(name)
        ax.set_title(f"{name} against cost")
        ax.legend()
        fig.tight_layout()
        paths.append(out / f"scaling_{name}.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def _line(f: ScalingFit, cost: float) -> float:
    """The fitted parameter value at ``cost``, back in the parameter's own units."""
    t = f.exponent * math.log10(cost) + f.intercept
    if f.transform == "log":
        return 10.0 ** t
    if f.transform == "logit":
        return 1.0 / (1.0 + 10.0 ** -t)
    return t


def add_parser(ssub: Any, address: str) -> None:
    sp = ssub.add_parser("pareto",
                         help="cost/value Pareto front and scaling fits (carbs, asha-carbs)")
    sp.add_argument("study_id")
    sp.add_argument("--address", default=address)
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--plot", metavar="DIR", help="write PNGs of the front and each fit here")
