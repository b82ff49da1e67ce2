"""Optimisation quality against peers, on the simulated cluster.

    python bench/compare.py --problem branin-mf,hartmann6-mf --algorithms hyperband,asha@cqr \
        --peers optuna --seeds 5 --workers 4 --budget 100 [--plots DIR] [--json]
    hpod bench compare ...                       # the same, from a source checkout

Every method gets the same problems, seeds, number of workers and budget, measured as resource
trained (``--budget`` is in units of the problem's maximum resource R: 100 means as much as 100
full trainings). hpod's algorithms run in :mod:`hpod.server.simulator` (the real engine); peers
run against the same problems, cost model and simulated clock through their own ask/tell APIs,
with the same number of concurrent trials. Each run yields the best value observed so far as a
function of resource consumed and of simulated time.

Output: normalised regret at 25 / 50 / 100 % of the budget (mean and a 95 % normal-approximation
interval over seeds), the average rank per method and, with ``--plots DIR``, one PNG per problem
of regret against resource consumed and against simulated time. Normalised regret is
``(best - optimum) / (reference - optimum)``, the reference being the mean value of 1,000 fixed
random configurations at R: 0 is the optimum, 1 is an average random configuration.

Peers, all driven by one simulated-clock loop (``bench/peers/driver.py``: ``workers`` trials at
a time, a report every resource unit, the same problem objects and cost model):

* Optuna, in this process: HyperbandPruner and SuccessiveHalvingPruner, with RandomSampler and
  TPESampler (``optuna-{hyperband,sha}-{random,tpe}``);
* Syne Tune, in its own interpreter (``--syne-python`` or ``$HPOD_SYNE_PYTHON``): ``syne-asha``,
  ``syne-hyperband`` (asynchronous Hyperband), ``syne-bohb`` (BOHB on one ASHA bracket, its
  default), ``syne-bohb-hyperband`` (on Hyperband's brackets), and by name ``syne-asha-cqr``,
  ``syne-cqr``;
* Ray Tune, in its own interpreter (``--ray-python`` or ``$HPOD_RAY_PYTHON``): ``ray-asha``,
  ``ray-hyperband`` (its synchronous HyperBandScheduler, with pause and resume).

A peer that cannot run here is skipped, and the output says which and why (``skipped``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from hpod.server.algorithms import SearchSpace
from hpod.server.problems import Problem, get_problem
from hpod.server.simulator import simulate

FRACTIONS = (0.25, 0.5, 1.0)
Trace = list[tuple[float, float, float]]  # (simulated seconds, resource consumed, best so far)


@dataclass
class Run:
    method: str
    problem: str
    seed: int
    trace: Trace
    regret: dict[float, float] = field(default_factory=dict)  # fraction -> normalised regret
    wall_seconds: float = 0.0


# ------------------------------------------------------------------ hpod


def environment() -> dict[str, Any]:
    """What a result's numbers depend on besides the code: the model-based methods' studies
    are deterministic per seed on one machine and library set, but a different BLAS kernel or
    numpy, scipy or torch release rounds a model fit differently in its last bits, and a study
    of hundreds of fits then takes another path (its seed's regret, and so a median over seeds,
    moves)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, Any] = {"python": platform.python_version(), "machine": platform.machine()}
    for package in ("numpy", "scipy", "torch", "optuna", "botorch", "scikit-learn"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    try:
        with open("/proc/cpuinfo") as f:
            out["cpu"] = next((line.split(":", 1)[1].strip() for line in f
                               if line.startswith("model name")), None)
    except OSError:
        out["cpu"] = platform.processor() or None
    try:
        from threadpoolctl import threadpool_info

        out["blas"] = sorted({f"{i.get('internal_api')} {i.get('version')} "
                              f"{i.get('architecture')}" for i in threadpool_info()
                              if i.get("user_api") == "blas"})
    except ImportError:
        out["blas"] = None
    return out


def hpod_settings(name: str, extra: Mapping[str, Any] | None = None
                  ) -> tuple[str, dict[str, Any]]:
    """The algorithm and its settings for ``algorithm`` or ``algorithm@sampler`` (e.g.
    ``asha@cqr``: ASHA with the CQR sampler), ``extra`` added to the settings (e.g.
    ``{"duplicate_radius": 0}``)."""
    algorithm, _, sampler = name.partition("@")
    return algorithm, {**(extra or {}), **({"sampler": sampler} if sampler else {})}


def hpod_method(name: str, extra: Mapping[str, Any] | None = None
                ) -> Callable[[Problem, int, int, float], Trace]:
    """An hpod method for the simulated loop (names as :func:`hpod_settings` reads them)."""
    algorithm, chosen = hpod_settings(name, extra)

    def run(problem: Problem, workers: int, seed: int, budget: float) -> Trace:
        r_min = float(getattr(problem, "min_resource", 1.0))
        settings = dict(chosen)
        if algorithm == "hyperband":  # enough iterations to spend the budget
            settings["iterations"] = math.ceil(budget / problem.max_resource) + 1
        trials = math.ceil(budget / r_min) + 1  # an upper bound: the budget stops the run
        return simulate(problem, algorithm, workers, trials, seed, settings,
                        budget=budget).trace
    return run


# ------------------------------------------------------------------ Optuna


def _optuna_distributions(space: list[dict[str, Any]]) -> dict[str, Any]:
    import optuna.distributions as d

    out: dict[str, Any] = {}
    for p in space:
        if p["type"] == "float":
            out[p["name"]] = d.FloatDistribution(p["low"], p["high"], log=p.get("log", False))
        elif p["type"] == "int":
            out[p["name"]] = d.IntDistribution(p["low"], p["high"], log=p.get("log", False))
        else:
            out[p["name"]] = d.CategoricalDistribution(p["choices"])
    return out


def optuna_method(pruner: str, sampler: str) -> Callable[[Problem, int, int, float], Trace]:
    """Optuna's ask/tell API on the simulated clock: ``workers`` trials run at once, each
    reports every resource unit and asks ``should_prune`` as an Optuna objective would."""

    def run(problem: Problem, workers: int, seed: int, budget: float) -> Trace:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        r_min, r_max = int(getattr(problem, "min_resource", 1)), int(problem.max_resource)
        eta = int(getattr(problem, "eta", 3))
        pr = (optuna.pruners.HyperbandPruner(r_min, r_max, eta) if pruner == "hyperband"
              else optuna.pruners.SuccessiveHalvingPruner(r_min, eta))
        sa = (optuna.samplers.TPESampler(seed=seed) if sampler == "tpe"
              else optuna.samplers.RandomSampler(seed=seed))
        # A fixed name: HyperbandPruner picks a trial's bracket from a hash of the study name,
        # and a random default name would make runs differ for the same seed.
        study = optuna.create_study(sampler=sa, pruner=pr,
                                    study_name=f"hpod-bench-{problem.name}-{seed}")
        return _driver().run_loop(problem, _OptunaScheduler(
            study, _optuna_distributions(problem.space)), workers, budget, r_max)
    return run


class _OptunaScheduler:
    """Optuna's ask/tell API as a scheduler of :func:`driver.run_loop`: a new trial is
    ``study.ask``; each resource unit is ``trial.report`` then ``should_prune`` (pruned: told
    PRUNED and stopped); the last unit tells the value."""

    def __init__(self, study: Any, dists: dict[str, Any]) -> None:
        self.study, self.dists = study, dists
        self.trials: dict[int, Any] = {}

    def suggest(self) -> tuple[int, dict[str, Any], bool]:
        trial = self.study.ask(self.dists)
        self.trials[trial.number] = trial
        return trial.number, trial.params, False

    def result(self, key: int, resource: float, value: float, last: bool) -> str:
        trial = self.trials[key]
        trial.report(value, int(resource))
        if trial.should_prune():
            self.study.tell(trial, state=_pruned())
            return "stop"
        if last:
            self.study.tell(trial, value)
        return "continue"


def _pruned() -> Any:
    import optuna

    return optuna.trial.TrialState.PRUNED


# ------------------------------------------------------------------ methods and peers

OPTUNA = {f"optuna-{p}-{s}": (p, s) for p in ("hyperband", "sha") for s in ("random", "tpe")}
# Peers run in interpreters of their own (bench/peers/driver.py). Asking for a peer by name runs
# its default methods; any of its methods can be named (e.g. syne-asha-cqr). CQR is not in the
# defaults: like hpod's CQR sampler it costs minutes per run at these budgets.
PEER_METHODS = {"syne-tune": (["asha", "hyperband", "bohb", "bohb-hyperband"],
                              ["asha", "hyperband", "bohb", "bohb-hyperband", "asha-cqr", "cqr"]),
                "ray-tune": (["asha", "hyperband"], ["asha", "hyperband"]),
                "dehb": (["dehb"], ["dehb"])}
PEER_PREFIX = {"syne-tune": "syne", "ray-tune": "ray", "dehb": "dehb"}


def _driver() -> Any:
    """bench/peers/driver.py, loaded by path (bench/ is scripts, not a package)."""
    name = "hpod_bench_peers_driver"
    if name not in sys.modules:
        from pathlib import Path

        path = Path(__file__).resolve().parent / "peers" / "driver.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules[name]


def _peer_entry(entry: str) -> tuple[str | None, list[str]]:
    """``syne-tune`` -> (syne-tune, its default methods); ``syne-asha-cqr`` -> (syne-tune,
    [asha-cqr]); anything else -> (None, [])."""
    if entry in PEER_METHODS:
        return entry, list(PEER_METHODS[entry][0])
    for peer, prefix in PEER_PREFIX.items():
        if entry.startswith(prefix + "-") and entry[len(prefix) + 1:] in PEER_METHODS[peer][1]:
            return peer, [entry[len(prefix) + 1:]]
    return None, []


def peer_method(peer: str, python: str, method: str
                ) -> Callable[[Problem, int, int, float], Trace]:
    def run(problem: Problem, workers: int, seed: int, budget: float) -> Trace:
        drv = _driver()
        try:
            return drv.run_peer(peer, python, method, problem, workers, seed, budget)
        except drv.PeerError as exc:
            raise PeerRunFailed(str(exc)) from exc
    return run


class PeerRunFailed(RuntimeError):
    """A peer's runner failed in a run: the method is dropped and reported as skipped."""


def methods(algorithms: list[str], peers: list[str],
            pythons: Mapping[str, str | None] | None = None,
            versions: dict[str, str] | None = None,
            hpod_settings: Mapping[str, Any] | None = None,
            ) -> tuple[dict[str, Callable[..., Trace]], dict[str, str]]:
    """The methods to run, and the peers (or peer methods) skipped with the reason.
    ``pythons`` maps a peer to its interpreter (else its environment variable, else this
    interpreter if it has the peer); ``versions`` receives the version of each peer used;
    ``hpod_settings`` is added to every hpod algorithm's settings."""
    out: dict[str, Callable[..., Trace]] = {f"hpod-{a}": hpod_method(a, hpod_settings)
                                            for a in algorithms}
    skipped: dict[str, str] = {}
    known = ["optuna", *OPTUNA, *PEER_METHODS,
             *(f"{PEER_PREFIX[p]}-{m}" for p, (_, ms) in PEER_METHODS.items() for m in ms)]
    for entry in peers:
        if entry == "optuna" or entry in OPTUNA:
            if importlib.util.find_spec("optuna") is None:
                skipped[entry] = "not installed (pip install optuna)"
                continue
            import optuna

            if versions is not None:
                versions["optuna"] = optuna.__version__
            chosen = OPTUNA if entry == "optuna" else {entry: OPTUNA[entry]}
            out.update({name: optuna_method(p, s) for name, (p, s) in chosen.items()})
            continue
        peer, wanted = _peer_entry(entry)
        if peer is None:
            skipped[entry] = f"unknown peer; known: {', '.join(known)}"
            continue
        drv = _driver()
        try:
            python = drv.interpreter(peer, (pythons or {}).get(peer))
            info = drv.probe_cached(peer, python)
        except drv.PeerUnavailable as exc:
            skipped[entry] = str(exc)
            continue
        if versions is not None:
            versions[peer] = f"{info['version']} ({python})"
        for m in wanted:
            name = f"{PEER_PREFIX[peer]}-{m}"
            if m in info["methods"]:
                out[name] = peer_method(peer, python, m)
            else:
                skipped[name] = info.get("unavailable", {}).get(m, "not offered by the runner")
    return out, skipped


# ------------------------------------------------------------------ scoring


def reference_value(problem: Problem, n: int = 1000) -> float:
    """Mean value of n fixed random configurations at R: the 'average guess' of regret 1."""
    space = SearchSpace.from_dict(problem.space)
    rng = np.random.default_rng(12345)
    return statistics.fmean(problem.evaluate(space.sample(rng), problem.max_resource)
                            for _ in range(n))


def regret_at(trace: Trace, spent: float, optimum: float, ref: float, axis: int = 1) -> float:
    """Normalised regret of the best value seen once ``spent`` resource (axis 1) or simulated
    seconds (axis 0) were used."""
    best = min((p[2] for p in trace if p[axis] <= spent + 1e-9), default=math.inf)
    if not math.isfinite(best):
        return 1.0  # nothing observed yet: no better than an average guess
    return max(best - optimum, 0.0) / (ref - optimum)


def interval(xs: list[float]) -> tuple[float, float]:
    """Mean and the half-width of a 95 % normal-approximation interval."""
    mean = statistics.fmean(xs)
    half = 1.96 * statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else 0.0
    return mean, half


def average_ranks(runs: list[Run], fraction: float) -> dict[str, float]:
    """Rank of each method within each (problem, seed) at a budget fraction, averaged."""
    groups: dict[tuple[str, int], list[Run]] = {}
    for r in runs:
        groups.setdefault((r.problem, r.seed), []).append(r)
    ranks: dict[str, list[float]] = {}
    for group in groups.values():
        for r in group:
            mine = r.regret[fraction]
            better = sum(1 for o in group if o.regret[fraction] < mine)
            equal = sum(1 for o in group if o.regret[fraction] == mine)  # itself included
            ranks.setdefault(r.method, []).append(1 + better + (equal - 1) / 2)
    return {m: statistics.fmean(v) for m, v in sorted(ranks.items())}


def summarise(runs: list[Run]) -> dict[str, Any]:
    table: dict[str, dict[str, Any]] = {}
    for problem in sorted({r.problem for r in runs}):
        for method in sorted({r.method for r in runs}):
            mine = [r for r in runs if r.problem == problem and r.method == method]
            if not mine:
                continue
            row = {}
            for f in FRACTIONS:
                mean, half = interval([r.regret[f] for r in mine])
                row[f"{int(f * 100)}%"] = {"mean": mean, "ci95": half}
            row["wall_seconds"] = statistics.fmean(r.wall_seconds for r in mine)
            table.setdefault(problem, {})[method] = row
    return {"regret": table,
            "average_rank": {f"{int(f * 100)}%": average_ranks(runs, f) for f in FRACTIONS}}


# ------------------------------------------------------------------ plots


def _mean_curve(traces: list[Trace], xs: np.ndarray, axis: int, optimum: float,
                ref: float) -> np.ndarray:
    """Mean normalised regret over seeds of the best-so-far at each x (resource or time)."""
    return np.array([statistics.fmean(regret_at(tr, x, optimum, ref, axis) for tr in traces)
                     for x in xs])


LINESTYLES = {"hpod": "-", "optuna": "--", "syne": "-.", "ray": ":"}  # one per tool


def plot(runs: list[Run], problems: dict[str, tuple[float, float, float]], out_dir: str
         ) -> list[str]:
    """One PNG per problem: regret against resource consumed and against simulated time."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    from pathlib import Path

    import matplotlib.pyplot as plt

    Path(out_dir).mkdir(parents=True, exist_ok=True)
    paths = []
    for name, (optimum, ref, budget) in problems.items():
        mine = [r for r in runs if r.problem == name]
        t_max = max((p[0] for r in mine for p in r.trace), default=1.0)
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        colors = plt.get_cmap("tab20").colors  # more methods than the default 10 colours
        for i, method in enumerate(sorted({r.method for r in mine})):
            traces = [r.trace for r in mine if r.method == method]
            style = {"color": colors[i % len(colors)],
                     "linestyle": LINESTYLES.get(method.split("-")[0], "-")}
            for ax, axis, top in ((axes[0], 1, budget), (axes[1], 0, t_max)):
                xs = np.linspace(top / 200, top, 200)
                ax.plot(xs, _mean_curve(traces, xs, axis, optimum, ref), label=method,
                        **style)
        for ax, label in zip(axes, ("resource consumed", "simulated seconds"), strict=True):
            ax.set_xlabel(label)
            ax.set_ylabel("normalised regret (mean over seeds)")
            ax.set_yscale("log")
        axes[0].legend(fontsize=7)
        fig.suptitle(name)
        fig.tight_layout()
        path = str(Path(out_dir) / f"regret-{name}.png")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


# ------------------------------------------------------------------ main


def compare(problems: list[str], algorithms: list[str], peers: list[str], seeds: int,
            workers: int, budget_r: float, log: Callable[[str], None] = lambda s: None,
            plots: str | None = None, pythons: Mapping[str, str | None] | None = None
            ) -> dict[str, Any]:
    versions: dict[str, str] = {}
    todo, skipped = methods(algorithms, peers, pythons, versions)
    for entry, why in skipped.items():
        log(f"skipped {entry}: {why}")
    runs: list[Run] = []
    scales: dict[str, tuple[float, float, float]] = {}  # problem -> optimum, reference, budget
    try:
        for name in problems:
            problem = get_problem(name)
            optimum = problem.optimum
            if optimum is None:
                raise ValueError(f"problem {name!r} has no known optimum; regret needs one")
            ref = reference_value(problem)
            budget = budget_r * problem.max_resource
            scales[problem.name] = (optimum, ref, budget)
            for method, fn in todo.items():
                mine: list[Run] = []
                for seed in range(seeds):
                    t0 = time.perf_counter()
                    try:
                        trace = fn(problem, workers, seed, budget)
                    except PeerRunFailed as exc:
                        skipped[f"{method} on {problem.name}"] = f"failed: {exc}"
                        log(f"{problem.name} {method} seed {seed}: FAILED {exc}")
                        mine = []
                        break
                    run = Run(method, problem.name, seed, trace,
                              {f: regret_at(trace, f * budget, optimum, ref)
                               for f in FRACTIONS},
                              time.perf_counter() - t0)
                    mine.append(run)
                    log(f"{problem.name} {method} seed {seed}: regret@100% "
                        f"{run.regret[1.0]:.4f} ({run.wall_seconds:.1f} s)")
                runs.extend(mine)
    finally:
        if "hpod_bench_peers_driver" in sys.modules:
            sys.modules["hpod_bench_peers_driver"].close_all()
    if plots is None:
        drawn: Any = "not asked for (--plots DIR)"
    elif importlib.util.find_spec("matplotlib") is None:
        drawn = "skipped: matplotlib is not installed"
    else:
        drawn = plot(runs, scales, plots)
    return {"setup": {"problems": problems, "seeds": seeds, "workers": workers,
                      "budget_in_R": budget_r, "fractions": list(FRACTIONS),
                      "peer_versions": versions},
            "skipped": skipped, **summarise(runs), "plots": drawn}


def print_report(res: Mapping[str, Any]) -> None:
    for problem, rows in res["regret"].items():
        print(f"\n{problem}: normalised regret (mean ± 95% CI over {res['setup']['seeds']} "
              f"seeds), budget {res['setup']['budget_in_R']:g} R, "
              f"{res['setup']['workers']} workers")
        print(f"{'method':28}" + "".join(f"{k:>18}" for k in ("25%", "50%", "100%")))
        for method, row in rows.items():
            cells = "".join(f"{row[k]['mean']:10.4f} ±{row[k]['ci95']:6.4f}"
                            for k in ("25%", "50%", "100%"))
            print(f"{method:28}{cells}")
    print("\naverage rank at 100% of the budget (1 is best):")
    for method, rank in sorted(res["average_rank"]["100%"].items(), key=lambda kv: kv[1]):
        print(f"  {rank:5.2f}  {method}")
    for peer, why in res["skipped"].items():
        print(f"skipped {peer}: {why}")
    print(f"plots: {res['plots']}")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="hpod bench compare",
                                 description="optimisation quality against peers")
    ap.add_argument("--problem", default="branin-mf,hartmann6-mf,branin-curve",
                    help="comma-separated problem names or module:attribute")
    ap.add_argument("--algorithms", default="hyperband,asha,async-hyperband,random")
    ap.add_argument("--peers", default="optuna,syne-tune,ray-tune",
                    help="peers (their default methods) or single peer methods, e.g. "
                         "optuna,syne-tune,ray-tune,syne-asha-cqr,syne-cqr")
    ap.add_argument("--syne-python", default=None, metavar="PYTHON",
                    help="interpreter with syne-tune (else $HPOD_SYNE_PYTHON, else this one)")
    ap.add_argument("--ray-python", default=None, metavar="PYTHON",
                    help="interpreter with ray[tune] (else $HPOD_RAY_PYTHON, else this one)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--budget", type=float, default=100.0, help="in units of max resource R")
    ap.add_argument("--plots", default=None, metavar="DIR",
                    help="write regret plots (PNG) against resource and simulated time here")
    ap.add_argument("--json", action="store_true")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    split = [s for s in args.peers.split(",") if s]
    res = compare(args.problem.split(","), args.algorithms.split(","), split, args.seeds,
                  args.workers, args.budget,
                  (lambda s: None) if args.json else (lambda s: print(s, file=sys.stderr)),
                  args.plots, {"syne-tune": args.syne_python, "ray-tune": args.ray_python})
    if args.json:
        print(json.dumps(res))
    else:
        print_report(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
