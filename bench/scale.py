"""Scale of the engine and algorithms on the simulated cluster: 1,000 workers, 100,000 trials.

    python bench/scale.py [--algorithms asha,async-hyperband,hyperband,idhb,random]
        [--workers 1000] [--trials 100000] [--small 10000] [--problem branin-curve]
        [--out bench/results/scale.json]

Each run is ``hpod simulate --algorithm A --workers W --max-trials T`` (the real
``StudyEngine`` and algorithms, see bench/README.md §1) in a fresh interpreter, so its peak
RSS is its own. Reported per algorithm: wall and CPU time, engine µs per input (CPU time, which
a shared machine disturbs less than wall time, and wall), simulator µs per input,
peak RSS, utilisation until the last new trial started and overall, and the drain (simulated
hours after the last new trial). The growth figure is engine CPU µs per input at ``--trials``
over the same at ``--small``: 1 when an input's cost does not depend on the study's size.

Two notes: an extra row of ASHA stopped by a resource budget (``budget`` = what the
trial-limited run trained) instead of a trial count, which keeps starting trials while
promotions remain; and ID-HB, which runs one Hyperband run per maximum resource and is raised
(as ``hpod study raise`` would) while the raised run's trials stay within ``--trials``.
Engine CPU µs per input is the engine's wall time scaled by the run's CPU / wall ratio.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any

ALGORITHMS = ("asha", "async-hyperband", "hyperband", "idhb", "random")

_CHILD = """
import json, resource, sys
from hpod.server.simulator import simulate
a = json.loads(sys.argv[1])
res = simulate(a["problem"], a["algorithm"], a["workers"], a["trials"], 0, a["settings"])
out = res.to_dict()
usage = resource.getrusage(resource.RUSAGE_SELF)
out["peak_rss_mb"] = usage.ru_maxrss / 1024
out["cpu_seconds"] = usage.ru_utime + usage.ru_stime
print(json.dumps(out))
"""


def run(problem: str, algorithm: str, workers: int, trials: int,
        settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """One simulated study in its own interpreter; its summary plus peak RSS."""
    args = {"problem": problem, "algorithm": algorithm, "workers": workers, "trials": trials,
            "settings": settings or {}}
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(args)], check=True,
                          capture_output=True, text=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def row(name: str, r: dict[str, Any]) -> str:
    return (f"| {name} | {r['trials']:,} | {r['events']:,} | {r['wall_seconds']:.0f} s | "
            f"{r['cpu_seconds']:.0f} s | {r['engine_cpu_us_per_event']:.1f} | "
            f"{r['overhead_us_per_event']:.1f} | {r['simulator_us_per_event']:.1f} | "
            f"{r['peak_rss_mb']:.0f} MB | {r['utilisation_before_drain']:.1%} | "
            f"{r['utilisation']:.1%} | {r['drain_seconds'] / 3600:.2f} h of "
            f"{r['simulated_seconds'] / 3600:.2f} h |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--algorithms", default=",".join(ALGORITHMS))
    ap.add_argument("--workers", type=int, default=1000)
    ap.add_argument("--trials", type=int, default=100_000)
    ap.add_argument("--small", type=int, default=10_000)
    ap.add_argument("--problem", default="branin-curve")
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    names = [a for a in args.algorithms.split(",") if a]
    results: dict[str, Any] = {"workers": args.workers, "trials": args.trials,
                               "small": args.small, "runs": {}}
    print("| algorithm | trials | engine inputs | wall | CPU | engine CPU µs/input | engine wall "
          "µs/input | simulator wall µs/input | peak RSS | utilisation before the drain | "
          "overall | drain |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in names:
        big = run(args.problem, name, args.workers, args.trials)
        small = run(args.problem, name, args.workers, args.small)
        growth = big["engine_cpu_us_per_event"] / max(small["engine_cpu_us_per_event"], 1e-9)
        results["runs"][name] = {"large": big, "small": small, "growth": growth}
        print(row(name, big), flush=True)
        if name == "asha":
            budget = {"budget": big["resource_used"]}
            stop = run(args.problem, name, args.workers, 0, budget)
            results["runs"]["asha (budget stop)"] = {"large": stop, "settings": budget}
            print(row("asha, budget stop", stop), flush=True)
    print()
    print("| algorithm | engine CPU µs/input at "
          f"{args.small:,} trials | at {args.trials:,} | ratio |")
    print("| --- | ---: | ---: | ---: |")
    for name in names:
        r = results["runs"][name]
        print(f"| {name} | {r['small']['engine_cpu_us_per_event']:.1f} | "
              f"{r['large']['engine_cpu_us_per_event']:.1f} | {r['growth']:.2f} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
