"""A multi-fidelity suite: hpod's methods and the peers on problems whose low fidelities range
from ranking configurations perfectly to ranking them backwards.

    python bench/mf_suite.py [--seeds 10] [--budget 30] [--jobs 2] [--problems a,b,...]
        [--methods auto,asha,...] [--peers optuna,syne-tune,ray-tune,dehb] [--out bench/results]
    python bench/mf_suite.py --quick          # a smoke test in seconds
    python bench/mf_suite.py --cost auto,asha@cqr   # CPU per suggestion up to 500 trials
    python bench/mf_suite.py --methods auto --peers none --seeds 30 --stem r0 \
        --settings '{"duplicate_radius": 0}'   # a setting of hpod's methods changed

Every method runs on the same simulated loop, problems and seeds as ``bench/compare.py`` (hpod's
algorithms through the real engine in :mod:`hpod.server.simulator`; Optuna in process; Syne Tune,
Ray Tune and DEHB in interpreters of their own through ``bench/peers/driver.py``), with one
worker and a budget of ``--budget`` full trainings (resource units, each reported point counts).

Scoring is that of a user who keeps the model trained to the end: the *incumbent at full
fidelity*, the best value reported at R so far (a low-fidelity value is never an answer).
Normalised regret = (incumbent − optimum) / (reference − optimum), the reference being the mean
value at R of 1,000 fixed random configurations (64 for the MLP); 1 before any trial reaches R.
Reported per method: median regret and interquartile range over seeds at 25 / 50 / 100 % of the
budget, and per problem whether ``auto`` reaches the best peer's median final regret with half
the budget and ends no worse than it.

Problems (R = 81, η = 3 unless said; all analytic ones are noise-free functions of the config):

* ``ranks-well``: Hartmann-6 plus one learning curve shared by every configuration: every
  fidelity ranks exactly as R does;
* ``branin-mf``, ``hartmann6-mf``: BoTorch's augmented functions with curves whose speed
  depends on a parameter (``hpod.server.problems``): curves cross a little;
* ``noisy-low``: Hartmann-6 plus a curve and a per-(config, resource) perturbation whose size
  shrinks as resource grows: low fidelities rank roughly;
* ``crossing``: Branin plus a "learning rate" that makes curves converge fast to a worse end:
  low fidelities prefer what R punishes;
* ``misleading``: Hartmann-6 whose ranking is reversed at low resource (r <= R/4) and right
  only near R;
* ``mlp-digits`` (R = 9): the ``mlp`` trainer on scikit-learn's digits, trained for real here
  (``bench/cqr.py``'s problem; pass ``--problems`` with it, it costs minutes).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import statistics
import sys
import zlib
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from hpod.server.algorithms import SearchSpace
from hpod.server.problems import (
    HARTMANN6_MIN,
    HARTMANN_NAMES,
    BraninMF,
    Hartmann6MF,
    augmented_branin,
    augmented_hartmann6,
    curve_gap,
)

HERE = Path(__file__).resolve().parent
FRACTIONS = (0.25, 0.5, 1.0)
BRANIN_MIN = 0.397887357729738
DEFAULT_METHODS = ("auto", "asha", "async-hyperband", "asha@tpe", "hyperband@tpe")
DEFAULT_PEERS = ("optuna", "syne-tune", "ray-tune", "dehb")
ANALYTIC = ("ranks-well", "branin-mf", "hartmann6-mf", "noisy-low", "crossing", "misleading")


def _bench(name: str) -> Any:
    """A sibling script of this one as a module (bench/ is scripts, not a package)."""
    key = f"hpod_bench_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, HERE / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


# ------------------------------------------------------------------ problems


def _unit(name: str) -> dict[str, Any]:
    return {"name": name, "type": "float", "low": 0.0, "high": 1.0, "log": False}


def _hartmann(config: Mapping[str, Any]) -> float:
    return augmented_hartmann6(tuple(float(config[n]) for n in HARTMANN_NAMES), 1.0)


@dataclass
class Analytic:
    """A problem from a value function; one epoch costs one simulated second per unit."""

    name: str
    value: Callable[[Mapping[str, Any], float], float]
    space: list[dict[str, Any]]
    optimum: float | None
    min_resource: float = 1.0
    max_resource: float = 81.0
    eta: int = 3

    def evaluate(self, config: Mapping[str, Any], resource: float) -> float:
        return self.value(config, min(max(resource, self.min_resource), self.max_resource))

    def cost(self, config: Mapping[str, Any], resource: float) -> float:
        return float(resource)


def _ranks_well(c: Mapping[str, Any], r: float) -> float:
    return _hartmann(c) + curve_gap(r, 1.0, 81.0, 0.5)


def _noise(c: Mapping[str, Any], r: float) -> float:
    """A fixed standard-normal draw per (configuration, resource): deterministic noise."""
    key = repr((sorted(c.items()), round(r, 6))).encode()
    return float(np.random.default_rng(zlib.crc32(key)).standard_normal())


def _noisy_low(c: Mapping[str, Any], r: float) -> float:
    gap = curve_gap(r, 1.0, 81.0, 0.5)
    return _hartmann(c) + gap + 0.6 * math.sqrt(gap) * _noise(c, r)


def _crossing(c: Mapping[str, Any], r: float) -> float:
    x1, x2, lr = float(c["x1"]) * 15 - 5, float(c["x2"]) * 15, float(c["lr"])
    final = augmented_branin(x1, x2, 1.0) + 40.0 * lr * lr
    return final + 60.0 * curve_gap(r, 1.0, 81.0, 0.15 + 1.6 * lr)


def _misleading(c: Mapping[str, Any], r: float) -> float:
    f = (_hartmann(c) - HARTMANN6_MIN) / -HARTMANN6_MIN  # 0 at the optimum, ~1 far from it
    w = 1.0 - math.sqrt(r / 81.0)  # 1 at no resource, 0 at R: low levels rank backwards
    return (1 - w) * f + w * (1.0 - f) + 0.5 * w


def make_problem(name: str) -> Any:
    hart = [_unit(n) for n in HARTMANN_NAMES]
    if name == "ranks-well":
        return Analytic(name, _ranks_well, hart, HARTMANN6_MIN)
    if name == "noisy-low":
        return Analytic(name, _noisy_low, hart, HARTMANN6_MIN)
    if name == "crossing":
        return Analytic(name, _crossing, [_unit("x1"), _unit("x2"), _unit("lr")], BRANIN_MIN)
    if name == "misleading":
        return Analytic(name, _misleading, hart, 0.0)
    if name == "branin-mf":
        return BraninMF()
    if name == "hartmann6-mf":
        return Hartmann6MF()
    if name == "mlp-digits":
        return _bench("cqr").MLPDigits()
    raise ValueError(f"unknown problem {name!r}; choose from {[*ANALYTIC, 'mlp-digits']}")


class Recorder:
    """The problem as the methods see it, logging each evaluation (one per resource unit):
    the incumbent at full fidelity is read from the log, whatever the method reports."""

    def __init__(self, problem: Any) -> None:
        self.problem = problem
        self.log: list[tuple[float, float]] = []  # (resource, value) per evaluation

    def __getattr__(self, name: str) -> Any:
        return getattr(self.problem, name)

    def evaluate(self, config: Mapping[str, Any], resource: float) -> float:
        value = float(self.problem.evaluate(config, resource))
        self.log.append((float(resource), value))
        return value

    def incumbent_curve(self) -> list[tuple[int, float]]:
        """(evaluations so far, best value at R so far) each time it improves."""
        top, best, out = float(self.problem.max_resource), math.inf, []
        for i, (r, v) in enumerate(self.log, 1):
            if r >= top - 1e-9 and v < best:
                best = v
                out.append((i, v))
        return out


# ------------------------------------------------------------------ runs


@dataclass
class Run:
    problem: str
    method: str
    seed: int
    curve: list[tuple[int, float]] = field(default_factory=list)
    error: str | None = None


def _methods(names: list[str], peers: list[str], settings: Mapping[str, Any] | None = None
             ) -> tuple[dict[str, Any], dict[str, str]]:
    return _bench("compare").methods(names, peers, hpod_settings=settings)


def one_run(task: tuple[str, str, int, float, tuple[str, ...], Mapping[str, Any] | None]
            ) -> Run:
    problem_name, method, seed, budget_r, peers, settings = task
    problem = Recorder(make_problem(problem_name))
    hpod = [m[len("hpod-"):] for m in [method] if m.startswith("hpod-")]
    table, _ = _methods(hpod, [] if hpod else list(peers), settings)
    try:
        table[method](problem, 1, seed, budget_r * problem.max_resource)
    except Exception as exc:  # noqa: BLE001 (a peer's failure is reported, not fatal)
        return Run(problem_name, method, seed, error=f"{type(exc).__name__}: {exc}")
    return Run(problem_name, method, seed, problem.incumbent_curve())


def reference(problem: Any, n: int) -> float:
    space = SearchSpace.from_dict(problem.space)
    rng = np.random.default_rng(12345)
    return statistics.fmean(problem.evaluate(space.sample(rng), problem.max_resource)
                            for _ in range(n))


def regret(curve: list[tuple[int, float]], spent: float, optimum: float, ref: float) -> float:
    best = min((v for i, v in curve if i <= spent + 1e-9), default=math.inf)
    return 1.0 if not math.isfinite(best) else max(best - optimum, 0.0) / (ref - optimum)


def _quartiles(xs: list[float]) -> tuple[float, float, float]:
    q = np.quantile(xs, [0.25, 0.5, 0.75])
    return float(q[1]), float(q[0]), float(q[2])


def summarise(runs: list[Run], budget_r: float, refs: Mapping[str, tuple[float, float]]
              ) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pname in sorted({r.problem for r in runs}):
        optimum, ref = refs[pname]
        top = make_problem(pname).max_resource
        rows: dict[str, Any] = {}
        for method in sorted({r.method for r in runs if r.problem == pname}):
            mine = [r for r in runs if r.problem == pname and r.method == method and not r.error]
            if not mine:
                continue
            rows[method] = {str(f): _quartiles([regret(r.curve, f * budget_r * top, optimum,
                                                       ref) for r in mine])
                            for f in FRACTIONS}
        out[pname] = {"rows": rows, "goal": _goal(rows)}
    return out


def _goal(rows: Mapping[str, Any]) -> dict[str, Any] | None:
    peers = {m: v for m, v in rows.items() if not m.startswith("hpod-")}
    if "hpod-auto" not in rows or not peers:
        return None
    best_peer = min(peers, key=lambda m: peers[m]["1.0"][0])
    target = peers[best_peer]["1.0"][0]
    auto = rows["hpod-auto"]
    return {"best_peer": best_peer, "peer_final": target,
            "half_budget_reaches": auto["0.5"][0] <= target + 1e-12,
            "final_not_worse": auto["1.0"][0] <= target + 1e-12}


def markdown(res: Mapping[str, Any]) -> str:
    lines = ["| problem | method | 25 % | 50 % | 100 % |", "|---|---|---|---|---|"]
    for pname, block in res["problems"].items():
        for method, row in block["rows"].items():
            cells = [f"{row[str(f)][0]:.3f} [{row[str(f)][1]:.3f}, {row[str(f)][2]:.3f}]"
                     for f in FRACTIONS]
            lines.append(f"| {pname} | {method} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("| problem | best peer (median final) | auto reaches it at 50 % | auto final "
                 "not worse |")
    lines.append("|---|---|---|---|")
    for pname, block in res["problems"].items():
        g = block["goal"]
        if g:
            lines.append(f"| {pname} | {g['best_peer']} ({g['peer_final']:.3f}) | "
                         f"{'yes' if g['half_budget_reaches'] else 'no'} | "
                         f"{'yes' if g['final_not_worse'] else 'no'} |")
    return "\n".join(lines)


def run_suite(problems: list[str], methods: list[str], peers: list[str], seeds: int,
              budget_r: float, jobs: int, reuse: list[Run] | None = None,
              settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every method on every problem and seed. Runs found in ``reuse`` (an earlier result
    file's, same budget) are taken from it instead of run again, except those of the hpod
    methods named here: those always run with the code as it is, and with ``settings``
    added to their algorithm settings."""
    table, skipped = _methods(methods, peers, settings)
    fresh = {f"hpod-{m}" for m in methods}
    kept = {(r.problem, r.method, r.seed): r for r in reuse or []
            if r.problem in problems and r.seed < seeds and not r.error
            and r.method not in fresh}
    names = sorted(set(table) | {m for _, m, _ in kept})
    tasks = [(p, m, s, budget_r, tuple(peers), settings) for p in problems for m in table
             for s in range(seeds) if (p, m, s) not in kept]
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            runs = list(pool.map(one_run, tasks))
    else:
        runs = [one_run(t) for t in tasks]
    runs += list(kept.values())
    errors = sorted({f"{r.method}: {r.error}" for r in runs if r.error})
    refs = {}
    for p in problems:
        prob = make_problem(p)
        ref = reference(prob, 64 if p == "mlp-digits" else 1000)
        optimum = prob.optimum
        if optimum is None:  # unknown (the MLP): the best this benchmark saw at R
            optimum = min((v for r in runs if r.problem == p for _, v in r.curve),
                          default=0.0)
        refs[p] = (float(optimum), float(ref))
    return {"setup": {"problems": problems, "methods": names, "seeds": seeds,
                      "budget_full_trainings": budget_r, "workers": 1, "skipped": skipped,
                      "hpod_settings": dict(settings or {}),
                      "environment": _bench("compare").environment(),
                      "errors": errors, "reused_runs": len(kept)},
            "problems": summarise(runs, budget_r, refs),
            "runs": [{"problem": r.problem, "method": r.method, "seed": r.seed,
                      "curve": r.curve, "error": r.error} for r in runs]}


def load_runs(path: str, budget_r: float) -> list[Run]:
    """The runs saved in an earlier result file (with the same budget)."""
    res = json.loads(Path(path).read_text())
    if res["setup"]["budget_full_trainings"] != budget_r:
        raise SystemExit(f"{path}: budget {res['setup']['budget_full_trainings']} R, "
                         f"not {budget_r} R: its runs cannot be reused")
    return [Run(r["problem"], r["method"], r["seed"],
                [(int(i), float(v)) for i, v in r["curve"]], r["error"])
            for r in res.get("runs", [])]


def suggestion_cost(method: str, trials: int = 500, problem: str = "ranks-well",
                    settings: Mapping[str, Any] | None = None) -> dict[str, float]:
    """CPU milliseconds per new trial (the sampler's proposal, the scheduler's bracket choice
    and its search for a promotion first) while a study grows to ``trials`` trials on one
    simulated worker: the mean over the whole run and the median and maximum over the last
    50 trials; and the CPU the algorithm spent on the reports (learning-curve points, job
    ends), per trial. Any algorithm: the calls timed are those of the algorithm interface
    (``next_jobs`` that started a trial, ``on_progress``, ``on_job_end``)."""
    import time

    from hpod.server.simulator import Simulator, study_config

    algorithm, chosen = _bench("compare").hpod_settings(method, settings)
    prob = make_problem(problem)
    config = study_config(prob, algorithm, trials, 0, chosen, None, None, None)
    sim = Simulator(prob, config, 1, None)
    alg = sim.engine.algorithm
    next_jobs, costs = alg.next_jobs, []
    started: set[int] = set()

    def timed(free: int) -> Any:
        t0 = time.thread_time()
        jobs = next_jobs(free)
        new = {j.trial_id for j in jobs} - started
        if new:  # a call that only promoted is not a new trial's cost
            share = (time.thread_time() - t0) * 1e3 / len(new)
            costs.extend([share] * len(new))  # one figure per trial it started
            started.update(new)
        return jobs

    reports = [0.0]

    def counted(method: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any) -> Any:
            t0 = time.thread_time()
            try:
                return method(*args)
            finally:
                reports[0] += (time.thread_time() - t0) * 1e3
        return run

    alg.next_jobs = timed
    alg.on_progress = counted(alg.on_progress)
    alg.on_job_end = counted(alg.on_job_end)
    sim.run()
    last = costs[-50:]
    return {"trials": len(costs), "mean_ms": statistics.fmean(costs),
            "last50_median_ms": statistics.median(last), "last50_max_ms": max(last),
            "reports_ms_per_trial": reports[0] / max(len(costs), 1)}


def _settings_arg(text: str) -> dict[str, Any]:
    """``--settings``: a JSON object (empty: none)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object such as "
                                         f"'{{\"duplicate_radius\": 0}}', got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--problems", default=",".join(ANALYTIC))
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                    help="hpod algorithms, algorithm@sampler allowed")
    ap.add_argument("--peers", default=",".join(DEFAULT_PEERS),
                    help="optuna, syne-tune, ray-tune, dehb or single peer methods; 'none' for "
                    "none")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--budget", type=float, default=30.0, help="in full trainings (R)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--cost", default="",
                    help="only measure CPU per suggestion (at --cost-trials) for these methods "
                    "(e.g. auto,asha@cqr,asha@tpe)")
    ap.add_argument("--cost-trials", type=int, default=500,
                    help="the study size --cost measures at (e.g. 2000 to see growth)")
    ap.add_argument("--stem", default="", help="name of the result files (default mf_suite)")
    ap.add_argument("--reuse", default="",
                    help="earlier result files, comma-separated: their runs (same budget) are "
                    "reused, not run again (e.g. the peers' runs while hpod's methods change)")
    ap.add_argument("--settings", default="", type=_settings_arg, metavar="JSON",
                    help="added to every hpod method's algorithm settings (also with "
                    "--cost), e.g. "
                    "'{\"duplicate_radius\": 0}' (auto without grouping)")
    ap.add_argument("--quick", action="store_true",
                    help="two problems, two seeds, budget 3 R, auto and asha and optuna's HB+TPE")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cost:
        for method in args.cost.split(","):
            print(method, json.dumps({k: round(v, 2) for k, v in
                                      suggestion_cost(method, args.cost_trials,
                                                      settings=args.settings).items()}))
        return 0
    problems = args.problems.split(",")
    methods = [] if args.methods == "none" else args.methods.split(",")
    peers = [] if args.peers == "none" else args.peers.split(",")
    seeds, budget = args.seeds, args.budget
    if args.quick:
        problems, methods, seeds, budget = ["ranks-well", "misleading"], ["auto", "asha"], 2, 3
        peers = ["optuna-hyperband-tpe"] if importlib.util.find_spec("optuna") else []
    reuse = [run for path in args.reuse.split(",") if path
             for run in load_runs(path, budget)] or None
    res = run_suite(problems, methods, peers, seeds, budget, args.jobs, reuse, args.settings)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "mf_suite-quick" if args.quick else (args.stem or "mf_suite")
    table = markdown(res)
    (out / f"{stem}.json").write_text(json.dumps(res, indent=1))
    (out / f"{stem}.md").write_text(table + "\n")
    print(table)
    if res["setup"]["skipped"]:
        print("skipped:", json.dumps(res["setup"]["skipped"]))
    if res["setup"]["errors"]:
        print("errors:", "; ".join(res["setup"]["errors"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
