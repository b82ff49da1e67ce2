"""A cheap multi-fidelity test function with a learning-curve shape (no torch in its math).

The loss at resource ``r`` (epochs) of configuration ``(x1, x2, lr)`` is

    value = branin(x1, x2) + a(x2) * r ** -b(lr)

* ``branin`` is the classic Branin-Hoo function on x1 in [-5, 10], x2 in [0, 15]: the loss a
  configuration converges to. Its minimum 0.397887 is reached at three points.
* ``a(x2) = 10 + 20 * x2 / 15`` is how far from converged a configuration starts, and
  ``b(lr) = 0.3 + 1.2 * exp(-(log10(lr) + 1.5) ** 2)`` how fast it gets there: a learning rate
  near 10**-1.5 converges fastest, one far from it slowly.

Because ``a`` and ``b`` differ between configurations, the ranking at a low resource is only a
noisy guide to the ranking at a high one (curves cross), which is what multi-fidelity methods
have to cope with; yet the function is known exactly, so tests and the simulator can tell how
close an algorithm got: ``value(config, r) >= optimum`` for every config and ``r``, and
``value(argmin, r) -> optimum`` as ``r`` grows.

The trainer adds noise that shrinks with the curve term (early epochs are noisier), drawn from a
generator keyed by ``(seed, epoch)``: the same trial seed gives the same curve, with no RNG state
to carry between segments.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from .base import Trainer, TrainerContext, get_config, register_trainer, resource_steps

BRANIN_MIN = 0.39788735772973816
"""The global minimum of the Branin-Hoo function."""

BRANIN_ARGMINS: tuple[tuple[float, float], ...] = (
    (-math.pi, 12.275),
    (math.pi, 2.275),
    (9.42477796076938, 2.475),
)

optimum: float = BRANIN_MIN
"""The infimum of :func:`value` over configurations and resources (approached as r grows)."""

argmin: dict[str, float] = {"x1": math.pi, "x2": 2.275, "lr": 10**-1.5}
"""A configuration whose value tends to :data:`optimum`, and fastest among the minimisers."""

DEFAULTS: dict[str, Any] = {
    "x1": 2.5,
    "x2": 7.5,
    "lr": 0.01,
    "noise": 0.1,  # noise std as a fraction of the curve term
    # Wall-clock seconds each step pretends to take, like real training (fault-injection tests,
    # demos of a slow trainer); usually a trainer_setting. It changes no value.
    "step_seconds": 0.0,
}


def branin(x1: float, x2: float) -> float:
    b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
    return (x2 - b * x1**2 + c * x1 - 6) ** 2 + 10 * (1 - t) * math.cos(x1) + 10


def curve_params(config: Mapping[str, Any]) -> tuple[float, float]:
    """``(a, b)`` of the curve term ``a * r ** -b``."""
    a = 10.0 + 20.0 * float(config["x2"]) / 15.0
    b = 0.3 + 1.2 * math.exp(-((math.log10(float(config["lr"])) + 1.5) ** 2))
    return a, b


def value(config: Mapping[str, Any], resource: float) -> float:
    """The noise-free loss of ``config`` after ``resource`` epochs (resource >= 1)."""
    if resource < 1:
        raise ValueError(f"resource must be >= 1, got {resource}")
    a, b = curve_params(config)
    return branin(float(config["x1"]), float(config["x2"])) + a * resource**-b


@register_trainer
class AnalyticTrainer(Trainer):
    """Branin plus a power-law learning curve; trains instantly, for tests and the simulator."""

    name = "analytic"
    resource_unit = "epoch"
    metric = "loss"
    direction = "minimize"

    @classmethod
    def default_space(cls) -> list[dict[str, Any]]:
        return [
            {"name": "x1", "type": "float", "low": -5.0, "high": 10.0, "log": False},
            {"name": "x2", "type": "float", "low": 0.0, "high": 15.0, "log": False},
            {"name": "lr", "type": "float", "low": 1e-4, "high": 1.0, "log": True},
        ]

    def __init__(self, config: Mapping[str, Any], ctx: TrainerContext) -> None:
        self.config = get_config(config, DEFAULTS, ctx.settings)
        self.ctx = ctx
        self.epoch = 0

    def _noise(self, epoch: int, curve: float) -> float:
        # Keyed by (seed, epoch), not drawn from a running stream: resuming needs no RNG state.
        rng = np.random.default_rng([self.ctx.seed & 0xFFFFFFFF, epoch])
        return float(rng.normal()) * float(self.config["noise"]) * curve

    def train(self, r0: float, r1: float) -> Iterator[tuple[float, float]]:
        a, b = curve_params(self.config)
        pause = float(self.config["step_seconds"])
        for epoch in resource_steps(self.epoch, r0, r1):
            if pause > 0:
                time.sleep(pause)
            curve = a * epoch**-b
            loss = value(self.config, epoch) + self._noise(epoch, curve)
            self.epoch = epoch  # before the yield: the worker may stop iterating right here
            yield float(epoch), loss

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.epoch = int(state["epoch"])
