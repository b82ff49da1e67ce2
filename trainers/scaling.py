"""A cost/performance test function with a known Pareto front and a known scaling law (no torch
in its math): CARBS's acceptance tests run it on real workers, which measure its cost.

The loss of learning rate ``lr`` after ``e`` epochs is

    value = (penalty * (log10 lr - log10 lr_opt(e)) ** 2 + floor) / e
    lr_opt(e) = lr_opt * e ** exponent

plus noise drawn uniformly from ``[0, noise]``. With the defaults (``floor`` 0, ``exponent`` 0)
it is the function of imbue's CARBS demo notebook, ``(log10 lr + 3)² · 512 / epochs + U(0, 0.1)``.
Everything about it is known:

* the Pareto front: at ``e`` epochs the best loss is ``floor / e`` (plus the noise), reached at
  ``lr = lr_opt(e)``; a ``floor`` > 0 makes the front fall with cost instead of lying flat;
* the scaling law: the optimal ``lr`` scales as ``e ** exponent``, so as ``cost ** exponent``
  when every epoch costs the same;
* the cost: each epoch sleeps ``step_seconds``, so the device seconds a worker measures grow in
  proportion to the epochs trained, as on a real device.

``momentum`` is accepted and ignored (the demo's irrelevant parameter), and so is ``epoch``: a
study may search the resource, as in the paper, and the job's segment says how far to train.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from .base import Trainer, TrainerContext, get_config, register_trainer, resource_steps

DEFAULTS: dict[str, Any] = {
    "lr": 1e-3,
    "momentum": 0.9,  # ignored, as in the demo
    "epoch": None,  # ignored: a searched resource arrives as the job's segment
    "penalty": 512.0,
    "floor": 0.0,
    "lr_opt": 1e-3,
    "exponent": 0.0,
    "noise": 0.1,
    "step_seconds": 0.0,
}


def best_lr(epochs: float, settings: Mapping[str, Any] | None = None) -> float:
    """The learning rate that minimises the loss after ``epochs`` epochs."""
    s = {**DEFAULTS, **(settings or {})}
    return float(s["lr_opt"]) * float(epochs) ** float(s["exponent"])


def value(lr: float, epochs: float, settings: Mapping[str, Any] | None = None) -> float:
    """The noise-free loss of ``lr`` after ``epochs`` epochs (epochs >= 1)."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    s = {**DEFAULTS, **(settings or {})}
    shift = math.log10(float(lr)) - math.log10(best_lr(epochs, s))
    return (float(s["penalty"]) * shift**2 + float(s["floor"])) / float(epochs)


def front(epochs: float, settings: Mapping[str, Any] | None = None) -> float:
    """The analytic Pareto front: the best noise-free loss after ``epochs`` epochs."""
    return value(best_lr(epochs, settings), epochs, settings)


@register_trainer
class ScalingTrainer(Trainer):
    """A known cost/performance front and lr scaling law; sleeps ``step_seconds`` per epoch."""

    name = "scaling"
    resource_unit = "epoch"
    metric = "loss"
    direction = "minimize"

    @classmethod
    def default_space(cls) -> list[dict[str, Any]]:
        return [
            {"name": "lr", "type": "float", "low": 1e-5, "high": 1e-1, "log": True},
            {"name": "momentum", "type": "float", "low": 0.5, "high": 0.99, "log": False},
        ]

    def __init__(self, config: Mapping[str, Any], ctx: TrainerContext) -> None:
        self.config = get_config(config, DEFAULTS, ctx.settings)
        self.ctx = ctx
        self.epoch = 0

    def _noise(self, epoch: int) -> float:
        # Keyed by (seed, epoch), not drawn from a running stream: resuming needs no RNG state.
        rng = np.random.default_rng([self.ctx.seed & 0xFFFFFFFF, epoch])
        return float(rng.uniform()) * float(self.config["noise"])

    def train(self, r0: float, r1: float) -> Iterator[tuple[float, float]]:
        pause = float(self.config["step_seconds"])
        for epoch in resource_steps(self.epoch, r0, r1):
            if pause > 0:
                time.sleep(pause)
            loss = value(self.config["lr"], epoch, self.config) + self._noise(epoch)
            self.epoch = epoch  # before the yield: the worker may stop iterating right here
            yield float(epoch), loss

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.epoch = int(state["epoch"])
