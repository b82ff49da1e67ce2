"""PNG plots of one study: ``hpod study plot STUDY --out DIR`` or ``plot_study(study, dir)``.

Always:

    learning_curves.png   every trial's curve, one colour per bracket
    best_vs_resource.png  best value so far against resource consumed
    rungs.png             trials that reached each bracket's rungs against the plan
    importance.png        parameter importance (Optuna's fANOVA over the trials trained to the
                          maximum resource; says so instead when there are too few of them)

With a live mirror's timeline (``storage``: the Optuna storage that ``hpod server
--optuna-storage``, ``hpod local --optuna-storage`` or ``hpod study export --follow`` wrote while
the study ran, which records when each curve point and job segment happened):

    best_vs_time.png      best value so far against wall time
    occupancy.png         jobs per bracket and rung over wall time
    workers.png           busy workers (jobs training) over wall time

Without one, wall time is unknown, so those three are not drawn; instead:

    best_vs_device_time.png  best value so far against cumulative device seconds (the cost
                             workers measure; curve points ordered trial by trial, in id order)
    cost_per_trial.png       device seconds each trial spent against the resource it trained

and ``plot_study(..., with_notes=True)`` returns notes that say what a timeline would add.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpod.v1 import hpod_pb2 as pb

from .optuna_export import OptunaMirror

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from optuna.storages import BaseStorage

    from .sdk import Study, Trial


@dataclass
class Point:
    """One curve point in the order it was reported."""

    trial: int
    resource: float  # the trial's resource after it
    added: float     # resource this point consumed
    value: float
    time: float      # wall-clock seconds since the first point, or cumulative device seconds
    at_max: bool


@dataclass
class StudyData:
    info: pb.Study
    trials: list[Trial]
    mirror: OptunaMirror
    timed: bool  # wall-clock times were recorded by a live mirror

    @property
    def maximize(self) -> bool:
        return self.info.spec.objective.direction == pb.DIRECTION_MAXIMIZE

    @property
    def unit(self) -> str:
        return self.info.spec.resource.name or "resource"

    @property
    def metric(self) -> str:
        return self.info.spec.objective.metric or "value"


def load(study: Study, storage: str | BaseStorage | None = None) -> StudyData:
    """The study's trials and, from a mirror's storage, their times (in-memory if none)."""
    from optuna.storages import InMemoryStorage

    mirror = OptunaMirror(study, storage if storage is not None else InMemoryStorage())
    mirror.sync_all()
    timed = any(m.step_times for m in mirror.trials.values()) and storage is not None
    return StudyData(study.info, study.trials(curves=True), mirror, timed)


def points(data: StudyData) -> list[Point]:
    max_r = data.info.spec.resource.max_resource
    per_unit = {t.id: t.cost / t.resource if t.resource else 0.0 for t in data.trials}
    raw: list[tuple[float, int, float, float]] = []  # (order key, trial, resource, value)
    for t in data.trials:
        times = {r: s for r, s in data.mirror.trials[t.id].step_times} if data.timed else {}
        for r, v in t.curve:
            # Untimed: trial by trial in id order (then by resource, as the tuple sorts).
            raw.append((times.get(r, math.inf) if data.timed else float(t.id), t.id, r, v))
    raw.sort()
    start = raw[0][0] if raw and data.timed else 0.0
    last: dict[int, float] = {}
    out, clock = [], 0.0
    for key, tid, r, v in raw:
        added = r - last.get(tid, 0.0)
        last[tid] = r
        if not data.timed:
            clock += added * per_unit[tid]  # the trial's device seconds, spread evenly
        elif math.isfinite(key):
            clock = key - start  # a point the mirror has no time for keeps the last clock
        out.append(Point(tid, r, added, v, clock, r >= max_r - 1e-9))
    return out


def _better(a: float, b: float, maximize: bool) -> bool:
    return a > b if maximize else a < b


def best_so_far(pts: Sequence[Point], maximize: bool, at_max_only: bool) -> list[float]:
    best, out = math.nan, []
    for p in pts:
        if (p.at_max or not at_max_only) and (math.isnan(best) or _better(p.value, best,
                                                                             maximize)):
            best = p.value
        out.append(best)
    return out


def _log_if_wide(ax: Axes, values: Sequence[float], axis: str) -> None:
    # A log scale only when the values are positive and span more than a decade and a half.
    vals = [v for v in values if math.isfinite(v)]
    if vals and min(vals) > 0 and max(vals) / min(vals) > 30:
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")


# ---------------------------------------------------------------- the plots


def plot_curves(data: StudyData, ax: Axes) -> None:
    import matplotlib.pyplot as plt

    brackets = sorted({t.bracket for t in data.trials})
    cmap = plt.get_cmap("tab10")
    # Furthest-trained last, so the curves that matter are drawn on top.
    for t in sorted(data.trials, key=lambda t: (t.resource, t.id)):
        if t.curve:
            ax.plot([r for r, _ in t.curve], [v for _, v in t.curve], marker=".", lw=1,
                    color=cmap(brackets.index(t.bracket) % 10), alpha=0.75)
    for r in sorted({r.r for b in data.info.plan.brackets for r in b.rungs}):
        ax.axvline(r, color="grey", ls=":", lw=0.8)
    for i, b in enumerate(brackets):
        n = sum(1 for t in data.trials if t.bracket == b)
        ax.plot([], [], color=cmap(i % 10), label=f"bracket {b} ({n} trials)")
    ax.legend(fontsize=8)
    ax.set_xlabel(f"{data.unit}s trained")
    ax.set_ylabel(data.metric)
    ax.set_title(f"learning curves of {len(data.trials)} trials (dotted: rung resources)")
    _log_if_wide(ax, [r for t in data.trials for r, _ in t.curve], "x")
    _log_if_wide(ax, [v for t in data.trials for _, v in t.curve], "y")


def plot_best(data: StudyData, pts: list[Point], ax: Axes, against: str) -> None:
    x: list[float] = []
    total = 0.0
    for p in pts:
        total += p.added
        x.append(total if against == "resource" else p.time)
    ax.step(x, best_so_far(pts, data.maximize, True), where="post", lw=2.5,
            label="best at max resource (hpod's incumbent)")
    ax.step(x, best_so_far(pts, data.maximize, False), where="post", ls="--",
            label="best at any resource")
    ax.legend(fontsize=8)
    ax.set_ylabel(f"best {data.metric} so far")
    _log_if_wide(ax, [p.value for p in pts], "y")
    if against == "resource":
        ax.set_xlabel(f"{data.unit}s consumed (all trials)")
        ax.set_title("best value against resource consumed"
                     + ("" if data.timed else " (order approximated: trials in id order)"))
    elif data.timed:
        ax.set_xlabel("wall time since the first result (s)")
        ax.set_title("best value against wall time")
    else:
        ax.set_xlabel("cumulative device seconds (trials in id order; no wall-clock timeline)")
        ax.set_title("best value against device time")


def _typical_step(data: StudyData) -> float:
    """The median wall time between two curve points of one job: one step's duration."""
    gaps = sorted(b - a for m in data.mirror.trials.values() for start, end, _ in m.segments
                  for a, b in pairwise(sorted(t for _, t in m.step_times if start <= t <= end)))
    return gaps[len(gaps) // 2] if gaps else 0.0


def _segments(data: StudyData) -> list[tuple[float, float, int, int]]:
    """(start, end, bracket, rung) of every job segment a live mirror saw.

    A segment opens when its job is handed out, which may be before a worker takes it (queued);
    so it is taken to start one typical step before its first curve point, if that is later.
    """
    bracket = {t.id: t.bracket for t in data.trials}
    step = _typical_step(data)
    out = []
    for tid, m in data.mirror.trials.items():
        for s, e, rung in m.segments:
            first = min((t for _, t in m.step_times if s <= t <= e), default=s)
            out.append((max(s, first - step), e, bracket.get(tid, 0), int(rung)))
    t0 = min((s for s, *_ in out), default=0.0)
    return [(s - t0, e - t0, b, r) for s, e, b, r in out]


def _in_flight(segs: Sequence[tuple[float, float, int, int]], times: Sequence[float],
               key: tuple[int, int] | None = None) -> list[int]:
    return [sum(1 for s, e, b, r in segs if s <= t < e and (key is None or (b, r) == key))
            for t in times]


def _grid(segs: Sequence[tuple[float, float, int, int]]) -> list[float]:
    end = max((e for _, e, *_ in segs), default=1.0)
    return [end * i / 400 for i in range(401)]


def plot_occupancy(data: StudyData, ax: Axes) -> None:
    segs = _segments(data)
    times = _grid(segs)
    keys = sorted({(b, r) for _, _, b, r in segs})
    ax.stackplot(times, *[_in_flight(segs, times, k) for k in keys],
                 labels=[f"bracket {b} rung {r}" for b, r in keys], step="post")
    ax.legend(fontsize=7, ncol=2)
    ax.set_xlabel("wall time (s)")
    ax.set_ylabel("jobs running")
    ax.set_title("bracket and rung occupancy over time")


def plot_rungs(data: StudyData, ax: Axes) -> None:
    labels, planned, reached = [], [], []
    for b in data.info.plan.brackets:
        for i, rung in enumerate(b.rungs):
            labels.append(f"s={b.s}\nr={rung.r:g}")
            planned.append(rung.n)
            reached.append(sum(1 for t in data.trials if t.bracket == b.s and t.rung >= i))
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], planned, width=0.4, label="planned", color="lightgrey")
    ax.bar([x + 0.2 for x in xs], reached, width=0.4, label="reached")
    ax.set_xticks(list(xs), labels, fontsize=7)
    ax.set_xlabel(f"bracket s, rung resource r ({data.unit}s)")
    ax.set_ylabel("trials")
    ax.set_title("trials per rung against the plan")
    ax.legend(fontsize=8)


def plot_workers(data: StudyData, ax: Axes) -> None:
    segs = _segments(data)
    times = _grid(segs)
    busy = _in_flight(segs, times)
    ax.step(times, busy, where="post")
    mean = sum(busy) / len(busy)
    ax.axhline(mean, color="grey", ls="--", label=f"mean {mean:.2f}")
    ax.legend(fontsize=8)
    ax.set_xlabel("wall time (s)")
    ax.set_ylabel("jobs in flight (busy workers)")
    ax.set_title("workers busy over time (a job counts from one typical step before its "
                 "first curve point until it ends)", fontsize=9)


def plot_cost(data: StudyData, ax: Axes) -> None:
    ax.scatter([t.resource for t in data.trials], [t.cost for t in data.trials], s=12)
    ax.set_xlabel(f"{data.unit}s trained by the trial")
    ax.set_ylabel("device seconds spent (cost)")
    ax.set_title("cost per trial against resource trained")


MIN_FANOVA_TRIALS = 10  # fewer trials at the maximum resource: fANOVA's forest says little


def importance_trials(data: StudyData) -> int:
    """Trials fANOVA would use: those trained to the maximum resource (COMPLETE in Optuna)."""
    from optuna.trial import TrialState

    return sum(1 for t in data.mirror.optuna_study.get_trials(deepcopy=False,
                                                              states=(TrialState.COMPLETE,)))


def plot_importance(data: StudyData, ax: Axes) -> str | None:
    """The importance bars, or a plain message (also returned) when they cannot be trusted."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator

    n = importance_trials(data)
    ax.set_title("parameter importance (Optuna fANOVA)")
    ax.set_axis_off()
    if n < MIN_FANOVA_TRIALS:
        note = (f"importance not computed: {n} trials reached the maximum resource, fANOVA "
                f"needs at least {MIN_FANOVA_TRIALS} (a larger study, or more brackets)")
        ax.text(0.5, 0.5, note.replace(", ", ",\n", 1), ha="center", va="center", wrap=True)
        return note
    try:
        scores = optuna.importance.get_param_importances(
            data.mirror.optuna_study, evaluator=FanovaImportanceEvaluator(seed=0))
    except (ValueError, RuntimeError) as e:
        note = f"importance not computed: {e}"
        ax.text(0.5, 0.5, note, ha="center", va="center", wrap=True)
        return note
    ax.set_axis_on()
    names = list(scores)[::-1]
    ax.barh(names, [scores[n] for n in names])
    ax.set_xlabel(f"share of variance, fANOVA over the {n} trials at the maximum resource")
    return None


NO_TIMELINE = ("best_vs_time.png, occupancy.png and workers.png need wall-clock times: mirror "
               "the study live (hpod local/server --optuna-storage FILE, or hpod study export "
               "ID --optuna-storage FILE --follow) and pass --optuna-storage FILE")


def plot_study(study: Study, out_dir: str | Path, storage: str | BaseStorage | None = None,
               with_notes: bool = False) -> Any:
    """Write the PNGs into ``out_dir``; returns their paths (and, ``with_notes``, a list of
    plain sentences about what could not be drawn and why)."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = load(study, storage)
    pts = points(data)
    notes: list[str] = []
    timed = data.timed and bool(_segments(data))
    figures: list[tuple[str, Any]] = [
        ("learning_curves", lambda f: plot_curves(data, f.subplots())),
        ("best_vs_resource", lambda f: plot_best(data, pts, f.subplots(), "resource")),
        ("best_vs_time" if timed else "best_vs_device_time",
         lambda f: plot_best(data, pts, f.subplots(), "time")),
        ("rungs", lambda f: plot_rungs(data, f.subplots())),
    ]
    if timed:
        figures += [("occupancy", lambda f: plot_occupancy(data, f.subplots())),
                    ("workers", lambda f: plot_workers(data, f.subplots()))]
    else:
        figures.append(("cost_per_trial", lambda f: plot_cost(data, f.subplots())))
        notes.append(NO_TIMELINE if storage is None else
                     f"the storage has no timeline for this study ({NO_TIMELINE})")
    figures.append(("importance", lambda f: notes.append(plot_importance(data, f.subplots()))))
    paths = []
    for name, draw in figures:
        fig = plt.figure(figsize=(8, 5))
        draw(fig)
        title = data.info.spec.name or study.id
        fig.suptitle(f"{title} ({study.id}, {data.info.spec.algorithm.name})", fontsize=9)
        fig.tight_layout()
        paths.append(out / f"{name}.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    notes = [n for n in notes if n]
    return (paths, notes) if with_notes else paths
