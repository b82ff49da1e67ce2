"""Trainer throughput (issue 6): samples per second of each trainer on whatever device is here.

    python bench/trainers.py [--quick] [--json] [--trainers mlp,grokking] [--images N]
                             [--units N] [--no-flops] [--peak-tflops T]
    hpod bench trainers [same options]

For each torch trainer, :func:`hpod.trainers.throughput.measure` builds it at its documented
default size (the paper's model), trains one warm-up resource unit (cuDNN autotuning, allocator
warm-up, ``torch.compile`` if asked), times ``units`` more with the device synchronised at both
ends, and counts the FLOPs of one further unit. Reported per trainer: seconds per resource unit,
training samples per second, FLOPs per unit, achieved FLOP/s and, on a GPU whose bf16 peak
``throughput.PEAK_BF16`` knows (or with ``--peak-tflops``), the fraction of that peak. The time
of a unit includes its validation pass, as a worker's job does.

The CNNs read synthetic images written in the real CIFAR-10 pickle layout (throughput does not
depend on pixel values); their "epoch" row is the time of one CIFAR-10 epoch (45,000 training
plus 5,000 validation images), scaled linearly from the ``--images`` actually used when that is
fewer (the default on a CPU, where a full DenseNet-BC epoch takes the better part of an hour).

``--quick`` (CI) runs tiny models on tiny data: it checks that the benchmark works, its numbers
mean nothing. The ``analytic`` trainer is skipped: it sleeps instead of training.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
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
    "mlp": Setup({}, units=3),  # Hinton et al.: 2 x 256 hidden (digits when MNIST is absent)
    "mup_mlp": Setup({}, units=3),  # width 256, depth 3
    "grokking": Setup({}, units=2),  # Power et al.: p=97, x/y, 2 layers, width 128, 4 heads
    "densenet": Setup({}, units=1),  # DenseNet-BC L=100, k=12, batch 64
    "preact_resnet": Setup({}, units=1),  # ResNet-164 (bottleneck), batch 128
}

# Tiny sizes for CI: every code path of the benchmark, in seconds.
QUICK: dict[str, Setup] = {
    "mlp": Setup({"width": 32}, units=1),
    "mup_mlp": Setup({"width": 32, "depth": 2}, units=1),
    "grokking": Setup({"p": 11, "width": 16, "heads": 2, "layers": 1, "operation": "x+y"},
                      units=1),
    "densenet": Setup({"depth": 10, "growth_rate": 4, "batch_size": 32}, units=1),
    "preact_resnet": Setup({"depth": 8, "block": "basic", "batch_size": 32}, units=1),
}


def default_images(quick: bool, device: torch.device) -> int:
    if quick:
        return 80
    return CIFAR10_IMAGES if device.type == "cuda" else 1000


def run(names: list[str], quick: bool, images: int, units: int | None, count_flops: bool,
        peak_tflops: float | None) -> list[dict[str, Any]]:
    table = QUICK if quick else FULL
    rows = []
    for name in names:
        setup = table[name]
        cnn = name in CNNS
        t0 = time.perf_counter()
        tp: Throughput = measure(name, settings=setup.settings, units=units or setup.units,
                                 count_flops=count_flops,
                                 synthetic_images=images)
        row = tp.as_dict()
        row["settings"] = setup.settings
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
             "| trainer | unit | s / unit | samples / s | CIFAR-10 epoch | FLOP / unit "
             "| achieved FLOP/s | of peak |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        epoch = r.get("cifar10_epoch_seconds")
        epoch_s = "-" if epoch is None else f"{epoch:,.0f} s" + (
            f" (from {r['images']:,} images)" if r["images"] < CIFAR10_IMAGES else "")
        frac = "-" if r["peak_fraction"] is None else f"{r['peak_fraction']:.1%}"
        lines.append(
            f"| {r['trainer']} | {r['resource_unit']} | {r['seconds_per_unit']:.3g} "
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
    args = ap.parse_args(argv)

    names = [n.strip() for n in args.trainers.split(",") if n.strip()]
    unknown = [n for n in names if n not in FULL]
    if unknown:
        ap.error(f"unknown trainer(s) {unknown}; known: {','.join(FULL)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    images = args.images or default_images(args.quick, pick_device())
    machine = machine_info(args.quick)
    rows = run(names, args.quick, images, args.units, not args.no_flops, args.peak_tflops)
    if args.json:
        print(json.dumps({"machine": machine, "trainers": rows}, indent=1))
    else:
        print(render(rows, machine))
    return 0


if __name__ == "__main__":
    sys.exit(main())
