"""Continuation affinity: how often a promoted trial continues in the memory of the
worker that trained it, and what each such continuation saves.

    python bench/affinity.py [--trainer analytic] [--workers 4] [--keep-models 8] [--json]

Two measurements in one run:

1. **Warm fraction, through the real service**: the same iterative-deepening Hyperband study
   (R = 9, eta = 3, raised once to 27; by default on the analytic trainer with 0.05 s per
   epoch standing in for training) on real worker processes, once with affinity
   (``hpod server --handoff-seconds 1``) and once without (``--handoff-seconds 0``: a
   continuation goes to whichever worker is free). Reported: continuation segments, how many
   continued from memory (``Trial.warm_resumes``), and the study's wall time.
2. **What a warm continuation saves, per trainer**: building the trainer and loading its
   checkpoint (what a cold continuation does before training) against continuing the kept
   object (nothing), timed in this process on this device, median of several repetitions.

Wall times of whole studies on a shared 2-core machine are noisy; the per-continuation cost is
the number that carries over, multiplied by the warm fraction.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from hpod.client.local import LocalCluster
from hpod.trainers.base import TrainerContext, get_trainer
from hpod.trainers.device import pick_device
from hpod.trainers.throughput import synthetic_cifar

# Small but real configurations; the CNNs read tiny CIFAR-layout data written here.
CONFIGS: dict[str, dict[str, Any]] = {
    "mlp": {"width": 256},
    "grokking": {"width": 128, "heads": 4, "layers": 2},
    "mup_mlp": {"width": 256, "depth": 3},
    "densenet": {},
    "preact_resnet": {},
}


def study_run(trainer: str, workers: int, keep: int, handoff: float, seed: int,
              step_seconds: float) -> dict:
    server_args = ("--handoff-seconds", str(handoff))
    settings = {"step_seconds": step_seconds} if trainer == "analytic" else {}
    with LocalCluster(workers=workers, trainers=(trainer,), lease_seconds=5.0,
                      server_args=server_args,
                      worker_args=("--keep-models", str(keep))) as cluster:
        with cluster.client() as client:
            started = time.perf_counter()
            study = client.create_study({
                "trainer": trainer, "resource": {"max_resource": 9, "eta": 3},
                "algorithm": {"name": "idhb"}, "seed": seed, "trainer_settings": settings})
            study.wait(timeout=1800)
            study.raise_max_resource()
            study.wait(timeout=1800)
            wall = time.perf_counter() - started
            trials = study.trials()
    continuations = sum(max(t.segments - 1, 0) for t in trials)
    warm = sum(t.warm_resumes for t in trials)
    return {"handoff_seconds": handoff, "trials": len(trials), "continuations": continuations,
            "warm": warm, "warm_fraction": warm / max(continuations, 1), "wall_seconds": wall}


def cold_resume_seconds(name: str, data_dir: str, reps: int = 5) -> float:
    """Median seconds to build the trainer and load a checkpoint of it at resource 1."""
    device = pick_device()
    # The task (x/y mod 97) is a trainer setting, not part of the configuration.
    settings = {"p": 97} if name == "grokking" else {}
    ctx = TrainerContext(seed=1, max_resource=3, data_dir=data_dir, device=str(device),
                         settings=settings)
    cls = get_trainer(name)
    trainer = cls(CONFIGS[name], ctx)
    for _ in trainer.train(0, 1):
        pass
    buf = io.BytesIO()
    torch.save(trainer.state_dict(), buf)
    raw = buf.getvalue()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fresh = cls(CONFIGS[name], ctx)
        fresh.load_state_dict(torch.load(io.BytesIO(raw), map_location=device,
                                         weights_only=False))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trainer", default="analytic", help="trainer of the service study")
    ap.add_argument("--step-seconds", type=float, default=0.05,
                    help="seconds per epoch of the analytic trainer (a stand-in for training)")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--keep-models", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-study", action="store_true", help="only the per-trainer costs")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    out: dict[str, Any] = {"device": str(pick_device()), "cold_resume_seconds": {}}
    with tempfile.TemporaryDirectory() as data_dir:
        synthetic_cifar(Path(data_dir), n=500)  # tiny data in the real layout
        for name in CONFIGS:
            out["cold_resume_seconds"][name] = cold_resume_seconds(name, data_dir)
    if not args.skip_study:
        out["study"] = [study_run(args.trainer, args.workers, args.keep_models, h, args.seed,
                                  args.step_seconds) for h in (1.0, 0.0)]
    if args.json:
        json.dump(out, sys.stdout, indent=1)
        print()
        return 0
    print(f"device {out['device']}: build + load a checkpoint (a cold continuation), median")
    for name, s in out["cold_resume_seconds"].items():
        print(f"  {name:14s} {1000 * s:8.1f} ms")
    for row in out.get("study", []):
        print(f"handoff {row['handoff_seconds']:g} s: {row['warm']} of {row['continuations']} "
              f"continuations warm ({row['warm_fraction']:.0%}), {row['trials']} trials, "
              f"{row['wall_seconds']:.1f} s wall")
    return 0


if __name__ == "__main__":
    sys.exit(main())
