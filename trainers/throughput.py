"""Throughput of a trainer on whatever device is present: what ``bench/trainers.py`` reports.

:func:`measure` builds a trainer, trains one warm-up unit (cuDNN autotuning, ``torch.compile``,
allocator warm-up), then times ``units`` resource units with the device synchronised at both
ends, and counts the floating-point operations of one more unit with torch's FlopCounterMode
to give the achieved FLOP/s and, on a GPU whose peak it knows, the fraction of that peak.

Without a data directory the CIFAR trainers get synthetic images written in the real pickle
layout (:func:`synthetic_cifar`): throughput does not depend on pixel values.
"""

from __future__ import annotations

import pickle
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from .base import TrainerContext, get_trainer
from .device import pick_device, synchronize

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets, matched by name.
PEAK_BF16: dict[str, float] = {
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "A10G": 70e12,
    "A10": 125e12,
    "L40S": 362e12,
    "L4": 121e12,
    "RTX 4090": 165e12,
    "RTX 3090": 71e12,
    "V100": 125e12,  # fp16: V100 has no bf16; autocast falls back to slower paths
    "T4": 65e12,
}


@dataclass
class Throughput:
    trainer: str
    device: str
    resource_unit: str
    seconds_per_unit: float
    samples_per_second: float
    flops_per_unit: float | None
    achieved_flops: float | None
    peak_flops: float | None
    peak_fraction: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def device_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None  # a CPU's peak depends on SIMD width, clocks and cores: not guessed
    name = torch.cuda.get_device_name(device)
    for key, peak in PEAK_BF16.items():
        if key in name:
            return peak
    return None


def synthetic_cifar(root: Path, n: int = 50000, which: str = "cifar10") -> Path:
    """Random images in the real CIFAR python layout under ``root`` (for benchmarks)."""
    rng = np.random.default_rng(0)
    if which == "cifar10":
        d = root / "cifar-10-batches-py"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(1, 6):
            m = n // 5
            batch = {b"data": rng.integers(0, 256, (m, 3072), dtype=np.uint8),
                     b"labels": rng.integers(0, 10, m).tolist()}
            (d / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
    else:
        d = root / "cifar-100-python"
        d.mkdir(parents=True, exist_ok=True)
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"fine_labels": rng.integers(0, 100, n).tolist()}
        (d / "train").write_bytes(pickle.dumps(batch))
    return root


def measure(
    name: str,
    config: Mapping[str, Any] | None = None,
    settings: Mapping[str, Any] | None = None,
    units: int = 2,
    data_dir: str | None = None,
    count_flops: bool = True,
    synthetic_images: int = 50000,
) -> Throughput:
    """Time ``units`` resource units of trainer ``name`` after one warm-up unit."""
    cls = get_trainer(name)
    device = pick_device()
    settings = dict(settings or {})
    with tempfile.TemporaryDirectory() as tmp:
        if data_dir is None and name in ("densenet", "preact_resnet"):
            data_dir = str(synthetic_cifar(Path(tmp), synthetic_images,
                                           str(settings.get("dataset", "cifar10"))))
        ctx = TrainerContext(seed=0, max_resource=units + 2, data_dir=data_dir,
                             device=str(device), settings=settings)
        trainer = cls(dict(config or {}), ctx)
        for _ in trainer.train(0, 1):  # warm-up
            pass
        seen0 = getattr(trainer, "samples_seen", 0)
        synchronize(device)
        start = time.perf_counter()
        for _ in trainer.train(1, 1 + units):
            pass
        synchronize(device)
        seconds = (time.perf_counter() - start) / units
        samples = (getattr(trainer, "samples_seen", 0) - seen0) / units
        flops = None
        if count_flops:
            counter = FlopCounterMode(display=False)
            with counter:
                for _ in trainer.train(1 + units, 2 + units):
                    pass
            flops = float(counter.get_total_flops()) or None
    peak = device_peak(device)
    achieved = flops / seconds if flops else None
    return Throughput(
        trainer=name, device=str(device) if device.type != "cuda"
        else torch.cuda.get_device_name(device),
        resource_unit=cls.resource_unit, seconds_per_unit=seconds,
        samples_per_second=samples / seconds if seconds > 0 else 0.0,
        flops_per_unit=flops, achieved_flops=achieved, peak_flops=peak,
        peak_fraction=achieved / peak if achieved and peak else None,
    )
