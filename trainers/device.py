"""The one place that decides where tensors live: CUDA when there is one, else the CPU."""

from __future__ import annotations

import os

import torch


def pick_device() -> torch.device:
    """``HPOD_DEVICE`` overrides (``cpu``, ``cuda``, ``cuda:1``); otherwise the first GPU."""
    wanted = os.environ.get("HPOD_DEVICE")
    if wanted:
        return torch.device(wanted)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so that a measured time is the device's, not the launch's."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
