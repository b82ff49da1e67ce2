"""DEHB (Awad et al., IJCAI 2021) behind the JSON-lines protocol of ``runner_common.py``.

    /tmp/peers/dehb/bin/python bench/peers/dehb_runner.py [--probe]

DEHB pins numpy < 2, so it lives in a venv of its own like the other peers. Its ask/tell
interface is driven from hpod's simulated clock: each ``ask()`` is a new trial trained from
scratch to the fidelity DEHB chose (DEHB does not resume from checkpoints: a configuration
promoted to a higher fidelity is evaluated again from the start, as in the paper); the trial
is told ``continue`` until it reports at that fidelity, then DEHB is told its value (cost: the
fidelity) and the trial ``stop``. With one worker DEHB runs its brackets one job at a time, as
its own synchronous loop does.

Configurations: DEHB works on the unit cube (``configspace=False``); this runner maps each
coordinate to hpod's parameter (linear or log float and int ranges; a categorical takes the
choice whose equal-width cell holds the coordinate). Method ``dehb``: DEHB's defaults
(mutation 0.5, crossover 0.5, ``rand1_bin``, ``async_strategy="immediate"``), ``min_fidelity``
/ ``max_fidelity`` = the problem's resources, ``eta`` as given, the run's seed.
"""

from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from runner_common import serve  # noqa: E402

METHODS = ["dehb"]


def decode(space: list[dict[str, Any]], vector: Any) -> dict[str, Any]:
    """hpod's configuration for a point of the unit cube."""
    out: dict[str, Any] = {}
    for p, u in zip(space, vector, strict=True):
        u = min(max(float(u), 0.0), 1.0)
        if p["type"] == "categorical":
            choices = list(p["choices"])
            out[p["name"]] = choices[min(int(u * len(choices)), len(choices) - 1)]
            continue
        lo, hi = float(p["low"]), float(p["high"])
        if p.get("log", False):
            x = math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
        else:
            x = lo + u * (hi - lo)
        out[p["name"]] = int(min(max(round(x), lo), hi)) if p["type"] == "int" else x
    return out


class Session:
    def __init__(self, req: dict[str, Any]) -> None:
        from dehb import DEHB

        self.space = req["space"]
        self.out = tempfile.TemporaryDirectory(prefix="hpod-dehb-")
        self.dehb = DEHB(f=None, dimensions=len(self.space), configspace=False,
                         min_fidelity=float(req["min_resource"]),
                         max_fidelity=float(req["max_resource"]), eta=int(req["eta"]),
                         n_workers=1, seed=int(req["seed"]), output_path=self.out.name,
                         save_freq="end")
        self.jobs: dict[int, dict[str, Any]] = {}

    def suggest(self) -> dict[str, Any]:
        job = self.dehb.ask()
        tid = len(self.jobs)
        self.jobs[tid] = job
        return {"trial": tid, "config": decode(self.space, job["config"]), "resume": False}

    def result(self, tid: int, r: int | float, value: float, last: bool) -> str:
        job = self.jobs[tid]
        if r + 1e-9 < float(job["fidelity"]) and not last:
            return "continue"
        self.dehb.tell(job, {"fitness": float(value), "cost": float(r)})
        return "stop"


def main() -> int:
    try:
        import dehb
        from dehb import DEHB  # noqa: F401
    except ImportError as exc:
        print(f"dehb is not importable here: {exc}", file=sys.stderr)
        return 3
    from importlib.metadata import version

    return serve("dehb", getattr(dehb, "__version__", None) or version("dehb"), METHODS,
                 Session)


if __name__ == "__main__":
    sys.exit(main())
