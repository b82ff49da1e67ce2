"""Trainer throughput: samples per second of each trainer on whatever device is here, and the
two reproductions of the papers' claims that fit on a CPU.

    python bench/trainers.py [--quick] [--json] [--trainers mlp,grokking] [--images N]
                             [--units N] [--no-flops] [--peak-tflops T]
                             [--precision fp32|bf16] [--compile] [--no-channels-last]
                             [--deterministic]
    python bench/trainers.py --reproduce grokking [--max-steps N] [--weight-decay W]
                             [--recipe paper|modern]
    python bench/trainers.py --reproduce mup [--widths 64,256,1024] [--epochs E] [--seeds S]
                             [--recipe paper|modern]
    hpod bench trainers [same options]

For each torch trainer, :func:`hpod.trainers.throughput.measure` builds it at its documented
default size (the paper's model, ``recipe: paper``), trains one warm-up resource unit (cuDNN
autotuning, allocator warm-up, ``torch.compile`` if asked), times ``units`` more with the device
synchronised at both ends, and counts the FLOPs of one further unit. Reported per trainer:
seconds per resource unit, training samples per second, FLOPs per unit, achieved FLOP/s and, on
a GPU whose bf16 peak ``throughput.PEAK_BF16`` knows (or with ``--peak-tflops``), the fraction of
that peak. The time of a unit includes its validation pass, as a worker's job does. Each row
also says what was measured: the device, the arithmetic's dtype (bf16 only where autocast is on:
the CNNs on CUDA with ``--precision bf16``), whether the model was compiled and whether it ran
channels-last, so that outputs of two machines can be compared.

The CNNs read synthetic images written in the real CIFAR-10 pickle layout (throughput does not
depend on pixel values); their "epoch" row is the time of one CIFAR-10 epoch (45,000 training
plus 5,000 validation images), scaled linearly from the ``--images`` actually used when that is
fewer (the default on a CPU, where a full DenseNet-BC epoch takes the better part of an hour).

``--quick`` (CI) runs tiny models on tiny data: it checks that the benchmark works, its numbers
mean nothing. The ``analytic`` trainer is skipped: it sleeps instead of training.

``--reproduce grokking``: the ``grokking`` trainer's paper recipe (x/y mod 97, half the table
for training) until validation accuracy reaches 99 % or ``--max-steps``; prints the steps at
which training and validation accuracy first reach 99 %. ``--reproduce mup``: the ``mup_mlp``
trainer's paper recipe (MuSGD) and the same in SP on the digits, a grid of learning rates at
each width; prints the learning rate with the lowest training loss after ``--epochs`` epochs per
width and parameterisation (refined by a parabola in log2 lr through the best grid point and
its neighbours), and how far it moves from the narrowest to the widest.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hpod.trainers.base import TrainerContext, get_config, get_trainer
from hpod.trainers.device import pick_device
from hpod.trainers.throughput import Throughput, measure

CIFAR10_IMAGES = 50000  # 45,000 training + 5,000 validation (trainers/data.py's split)
CNNS = ("densenet", "preact_resnet")


@dataclass(frozen=True)
class Setup:
    """What to measure for one trainer: fixed settings (the model size) and how long."""

    settings: dict[str, Any] = field(default_factory=dict)
    units: int = 2


# The documented defaults (each trainer's DEFAULTS already is its paper's model); the units
# are chosen so that a timed stretch lasts seconds, not milliseconds, on a CPU.
FULL: dict[str, Setup] = {
    "mlp": Setup({"dataset": "digits"}, units=3),  # Hinton et al.: 2 x 800 hidden, batch 100
    "mup_mlp": Setup({"dataset": "digits"}, units=3),  # width 256, 2 hidden, batch 64
    "grokking": Setup({}, units=2),  # Power et al.: p=97, x/y, 2 layers, width 128, 4 heads
    "densenet": Setup({}, units=1),  # DenseNet-BC L=100, k=12, batch 64
    "preact_resnet": Setup({}, units=1),  # ResNet-164 (bottleneck), batch 128
}

# Tiny sizes for CI: every code path of the benchmark, in seconds.
QUICK: dict[str, Setup] = {
    "mlp": Setup({"width": 32, "dataset": "digits"}, units=1),
    "mup_mlp": Setup({"width": 32, "depth": 2, "dataset": "digits"}, units=1),
    "grokking": Setup({"p": 11, "width": 16, "heads": 2, "layers": 1, "operation": "x+y"},
                      units=1),
    "densenet": Setup({"depth": 10, "growth_rate": 4, "batch_size": 32}, units=1),
    "preact_resnet": Setup({"depth": 8, "block": "basic", "batch_size": 32}, units=1),
}


def default_images(quick: bool, device: torch.device) -> int:
    if quick:
        return 80
    return CIFAR10_IMAGES if device.type == "cuda" else 1000


CNN_OPTIONS = ("precision", "compile", "channels_last", "deterministic")
"""Settings the command line sets for the CNNs (the other trainers run fp32, uncompiled)."""


def effective_config(name: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The options the trainer will run with: its defaults, its recipe, these settings."""
    cls = get_trainer(name)
    module = sys.modules[cls.__module__]
    defaults = getattr(cls, "defaults", None) or module.DEFAULTS
    recipes = getattr(cls, "recipes", None) or getattr(module, "RECIPES", None)
    return get_config({}, defaults, settings, recipes)


def checked(name: str, settings: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """What a row measured, as the trainer will actually run it on this device."""
    cfg = effective_config(name, settings)
    cuda = device.type == "cuda"
    cnn = name in CNNS
    return {
        "recipe": cfg.get("recipe", "-"),
        "dtype": "bf16 autocast" if cnn and cuda and cfg["precision"] == "bf16" else "fp32",
        "compiled": bool(cnn and cfg["compile"]),
        "channels_last": bool(cnn and cuda and cfg["channels_last"]),
        "deterministic": bool(cfg.get("deterministic", False)),
    }


def run(names: list[str], quick: bool, images: int, units: int | None, count_flops: bool,
        peak_tflops: float | None, cnn_options: dict[str, Any] | None = None,
        ) -> list[dict[str, Any]]:
    table = QUICK if quick else FULL
    device = pick_device()
    rows = []
    for name in names:
        setup = table[name]
        cnn = name in CNNS
        settings = {**setup.settings, **(cnn_options or {})} if cnn else dict(setup.settings)
        t0 = time.perf_counter()
        tp: Throughput = measure(name, settings=settings, units=units or setup.units,
                                 count_flops=count_flops,
                                 synthetic_images=images)
        row = tp.as_dict()
        row["settings"] = settings
        row.update(checked(name, settings, device))
        row["wall_seconds"] = time.perf_counter() - t0
        if peak_tflops and row["achieved_flops"]:
            row["peak_flops"] = peak_tflops * 1e12
            row["peak_fraction"] = row["achieved_flops"] / row["peak_flops"]
        if cnn:
            row["images"] = images
            # Training and validation both scale linearly with the number of images.
            row["cifar10_epoch_seconds"] = tp.seconds_per_unit * CIFAR10_IMAGES / images
        rows.append(row)
        # Progress on stderr, with the headline figures: a long CPU run cut short keeps them.
        print(f"  measured {name} in {row['wall_seconds']:.1f} s: {tp.seconds_per_unit:.3g} s "
              f"per {tp.resource_unit}, {tp.samples_per_second:,.0f} samples/s",
              file=sys.stderr, flush=True)
    return rows


def _si(x: float | None, unit: str = "") -> str:
    if x is None:
        return "-"
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}".rstrip()


def render(rows: list[dict[str, Any]], machine: dict[str, Any]) -> str:
    lines = [f"device {machine['device']} ({machine['device_name']}), torch "
             f"{machine['torch']}, {machine['threads']} CPU threads"
             + (" (quick: tiny models, numbers meaningless)" if machine["quick"] else ""),
             "",
             "| trainer | recipe | dtype | compiled | channels-last | deterministic | unit "
             "| s / unit | samples / s | CIFAR-10 epoch | FLOP / unit | achieved FLOP/s "
             "| of peak |",
             "| --- | --- | --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: "
             "| ---: |"]
    for r in rows:
        epoch = r.get("cifar10_epoch_seconds")
        epoch_s = "-" if epoch is None else f"{epoch:,.0f} s" + (
            f" (from {r['images']:,} images)" if r["images"] < CIFAR10_IMAGES else "")
        frac = "-" if r["peak_fraction"] is None else f"{r['peak_fraction']:.1%}"
        yes = {True: "yes", False: "no"}
        lines.append(
            f"| {r['trainer']} | {r['recipe']} | {r['dtype']} | {yes[r['compiled']]} "
            f"| {yes[r['channels_last']]} | {yes[r['deterministic']]} "
            f"| {r['resource_unit']} | {r['seconds_per_unit']:.3g} "
            f"| {r['samples_per_second']:,.0f} | {epoch_s} | {_si(r['flops_per_unit'])} "
            f"| {_si(r['achieved_flops'])} | {frac} |")
    if all(r["peak_fraction"] is None for r in rows):
        lines.append("")
        lines.append("Fraction of peak: not known for this device (a CPU's peak depends on its "
                     "SIMD width, clocks and cores); give it with --peak-tflops.")
    return "\n".join(lines)


def cpu_name() -> str:
    try:  # Linux names the model here; platform.processor() often says only "x86_64"
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(quick: bool) -> dict[str, Any]:
    device = pick_device()
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
        else cpu_name(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "quick": quick,
    }


# ---------------------------------------------------------------- reproductions


def reproduce_grokking(max_steps: int, weight_decay: float | None, seed: int = 0,
                       settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train the paper recipe until validation accuracy reaches 99 % (or ``max_steps``); the
    steps at which training and validation accuracy first reach 99 %, every 100 steps."""
    settings = dict(settings or {})
    if weight_decay is not None:
        settings["weight_decay"] = weight_decay
    units = -(-max_steps // 100)
    t = get_trainer("grokking")({}, TrainerContext(seed=seed, max_resource=units,
                                                   device=str(pick_device()), settings=settings))
    first: dict[str, int | None] = {"train": None, "val": None}
    curve = []
    t0 = time.perf_counter()
    for unit, val_error in t.train(0, units):
        step = int(unit) * 100
        acc = {"train": 1.0 - t.last_train_error, "val": 1.0 - val_error}
        curve.append({"step": step, "train_accuracy": acc["train"], "val_accuracy": acc["val"]})
        for k in first:
            if first[k] is None and acc[k] >= 0.99:
                first[k] = step
        print(f"  step {step:>6}: train {acc['train']:.3f}, validation {acc['val']:.3f} "
              f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
        if first["val"] is not None:
            break
    return {"what": "grokking", "config": {k: t.cfg[k] for k in sorted(t.cfg)},
            "steps_to_train_99": first["train"], "steps_to_val_99": first["val"],
            "seconds": time.perf_counter() - t0, "curve": curve}


def final_train_loss(width: int, parameterization: str, lr: float, epochs: int,
                     settings: dict[str, Any], seed: int) -> float:
    t = get_trainer("mup_mlp")(
        {"lr": lr, "width": width, "parameterization": parameterization},
        TrainerContext(seed=seed, max_resource=epochs, device=str(pick_device()),
                       settings=settings))
    for _ in t.train(0, epochs):
        pass
    return t.last_train_loss if math.isfinite(t.last_train_loss) else math.inf


def best_lr(width: int, parameterization: str, lrs: list[float], epochs: int,
            settings: dict[str, Any], seeds: int = 1) -> tuple[float, list[float]]:
    """The learning rate with the lowest training loss after ``epochs`` epochs (the mean over
    ``seeds`` trial seeds), refined by a parabola in log2(lr) through the best grid point and
    its neighbours."""
    losses = [float(np.mean([final_train_loss(width, parameterization, lr, epochs, settings, s)
                             for s in range(seeds)])) for lr in lrs]
    b = int(np.argmin(losses))
    if 0 < b < len(lrs) - 1 and all(math.isfinite(v) for v in losses[b - 1:b + 2]):
        y0, y1, y2 = losses[b - 1:b + 2]
        step = math.log2(lrs[b + 1] / lrs[b])
        curvature = y0 - 2 * y1 + y2
        if curvature > 0:
            return lrs[b] * 2 ** (step * 0.5 * (y0 - y2) / curvature), losses
    return lrs[b], losses


def reproduce_mup(widths: list[int], epochs: int, settings: dict[str, Any] | None = None,
                  lrs: list[float] | None = None, seeds: int = 1) -> dict[str, Any]:
    settings = {"dataset": "digits", **(settings or {})}
    # Rates a factor sqrt(2) apart: 0.01 .. 0.64 for SGD, 0.001 .. 0.128 for AdamW.
    adamw = effective_config("mup_mlp", settings)["optimizer"] == "adamw"
    lrs = lrs or [(1e-3 if adamw else 1e-2) * 2 ** (k / 2) for k in range(15 if adamw else 13)]
    out: dict[str, Any] = {"what": "mup", "epochs": epochs, "seeds": seeds, "lrs": lrs,
                           "settings": settings, "best_lr": {}, "losses": {}}
    t0 = time.perf_counter()
    for param in ("mup", "sp"):
        for w in widths:
            best, losses = best_lr(w, param, lrs, epochs, settings, seeds)
            out["best_lr"].setdefault(param, {})[w] = best
            out["losses"].setdefault(param, {})[w] = losses
            print(f"  {param} width {w}: best lr {best:.3g} ({time.perf_counter() - t0:.0f} s)",
                  file=sys.stderr, flush=True)
        b = out["best_lr"][param]
        out.setdefault("shift", {})[param] = b[widths[-1]] / b[widths[0]]
    out["seconds"] = time.perf_counter() - t0
    return out


def render_reproduction(doc: dict[str, Any]) -> str:
    if doc["what"] == "grokking":
        c = doc["config"]
        return (f"grokking ({c['operation']} mod {c['p']}, train fraction {c['train_fraction']}, "
                f"recipe {c['recipe']}, weight decay {c['weight_decay']}): train accuracy >= 99 % "
                f"at step {doc['steps_to_train_99']}, validation >= 99 % at step "
                f"{doc['steps_to_val_99']} ({doc['seconds']:.0f} s)")
    widths = list(next(iter(doc["best_lr"].values())))
    lines = [f"mup_mlp best learning rate after {doc['epochs']} epochs, mean of "
             f"{doc['seeds']} seed(s) (settings {doc['settings']}):", "",
             "| parameterization | " + " | ".join(f"width {w}" for w in widths)
             + " | widest / narrowest |",
             "| --- | " + " | ".join("---:" for _ in widths) + " | ---: |"]
    for param, best in doc["best_lr"].items():
        lines.append(f"| {param} | " + " | ".join(f"{best[w]:.3g}" for w in widths)
                     + f" | {doc['shift'][param]:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny models and data (CI smoke run)")
    ap.add_argument("--json", action="store_true", help="print one JSON document")
    ap.add_argument("--trainers", default=",".join(FULL),
                    help=f"comma-separated subset of {','.join(FULL)}")
    ap.add_argument("--images", type=int, default=None,
                    help="synthetic CIFAR images for the CNNs (default: 50,000 on a GPU, "
                         "1,000 on a CPU, 80 with --quick)")
    ap.add_argument("--units", type=int, default=None,
                    help="resource units timed per trainer (default: per trainer)")
    ap.add_argument("--no-flops", action="store_true", help="skip counting FLOPs")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="the device's peak in TFLOP/s, for a device the table does not know")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default=None,
                    help="CNNs: arithmetic (bf16 = autocast on CUDA; default: the recipe's fp32)")
    ap.add_argument("--compile", action="store_true", help="CNNs: torch.compile the model")
    ap.add_argument("--no-channels-last", action="store_true",
                    help="CNNs on CUDA: keep the NCHW layout")
    ap.add_argument("--deterministic", action="store_true",
                    help="CNNs: deterministic kernels (bit-exact resume; slower on a GPU)")
    ap.add_argument("--reproduce", choices=["grokking", "mup"], default=None,
                    help="run a paper reproduction instead of the throughput table")
    ap.add_argument("--max-steps", type=int, default=5000, help="grokking: at most these steps")
    ap.add_argument("--weight-decay", type=float, default=None,
                    help="grokking: weight decay (default: the paper's 1)")
    ap.add_argument("--widths", default="64,256,1024", help="mup: widths to compare")
    ap.add_argument("--epochs", type=int, default=4, help="mup: epochs per run")
    ap.add_argument("--seeds", type=int, default=1, help="mup: trial seeds averaged per point")
    ap.add_argument("--recipe", default="paper", help="the trainer recipe to reproduce with")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.reproduce:
        if args.reproduce == "grokking":
            doc = reproduce_grokking(args.max_steps, args.weight_decay,
                                     settings={"recipe": args.recipe})
        else:
            doc = reproduce_mup([int(w) for w in args.widths.split(",")], args.epochs,
                                settings={"recipe": args.recipe}, seeds=args.seeds)
        doc["machine"] = machine_info(quick=False)
        print(json.dumps(doc, indent=1, default=str) if args.json else render_reproduction(doc))
        return 0

    names = [n.strip() for n in args.trainers.split(",") if n.strip()]
    unknown = [n for n in names if n not in FULL]
    if unknown:
        ap.error(f"unknown trainer(s) {unknown}; known: {','.join(FULL)}")
    images = args.images or default_images(args.quick, pick_device())
    machine = machine_info(args.quick)
    cnn_options: dict[str, Any] = {}
    if args.precision:
        cnn_options["precision"] = args.precision
    if args.compile:
        cnn_options["compile"] = True
    if args.no_channels_last:
        cnn_options["channels_last"] = False
    if args.deterministic:
        cnn_options["deterministic"] = True
    rows = run(names, args.quick, images, args.units, not args.no_flops, args.peak_tflops,
               cnn_options)
    if args.json:
        print(json.dumps({"machine": machine, "trainers": rows}, indent=1))
    else:
        print(render(rows, machine))
    return 0


if __name__ == "__main__":
    sys.exit(main())
