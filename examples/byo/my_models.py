"""A trainer class of your own, outside hpod: logistic regression by SGD on a synthetic data
set (numpy only). Run a worker for it with

    PYTHONPATH=examples/byo hpod worker --trainer my_models:LogisticTrainer

and create studies with ``trainer: my_models:LogisticTrainer`` (examples/byo/class.yaml).

The contract (``hpod.trainers.base.Trainer``): build from a configuration, train from ``r0`` to
``r1`` yielding ``(resource, metric)`` after each epoch, and save/load everything needed to
continue exactly (weights, epoch, random state), so a promoted trial resumes where it stopped.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
from hpod.trainers.base import Trainer, TrainerContext, get_config, resource_steps

DEFAULTS = {"lr": 0.1, "l2": 1e-4, "batch": 32, "n": 2000, "dim": 20}


def make_data(seed: int, n: int, dim: int) -> tuple[np.ndarray, ...]:
    """A fixed linearly separable-ish problem (the same for every trial), 80/20 split."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=dim)
    x = rng.normal(size=(n, dim))
    y = (x @ w + rng.normal(scale=2.0, size=n) > 0).astype(float)
    cut = int(0.8 * n)
    return x[:cut], y[:cut], x[cut:], y[cut:]


class LogisticTrainer(Trainer):
    name = "my_models:LogisticTrainer"
    resource_unit = "epoch"
    metric = "val_loss"
    direction = "minimize"

    @classmethod
    def default_space(cls) -> list[dict[str, Any]]:
        return [
            {"name": "lr", "type": "float", "low": 1e-3, "high": 3.0, "log": True},
            {"name": "l2", "type": "float", "low": 1e-6, "high": 1e-1, "log": True},
        ]

    def __init__(self, config: Mapping[str, Any], ctx: TrainerContext) -> None:
        self.cfg = get_config(config, DEFAULTS, ctx.settings)
        self.x, self.y, self.vx, self.vy = make_data(0, int(self.cfg["n"]), int(self.cfg["dim"]))
        self.w = np.zeros(self.x.shape[1])
        self.rng = np.random.default_rng(ctx.seed)
        self.epoch = 0

    def _loss(self, x: np.ndarray, y: np.ndarray) -> float:
        p = 1 / (1 + np.exp(-np.clip(x @ self.w, -30, 30)))
        return float(-np.mean(y * np.log(p + 1e-12) + (1 - y) * np.log(1 - p + 1e-12)))

    def train(self, r0: float, r1: float) -> Iterator[tuple[float, float]]:
        lr, l2, batch = float(self.cfg["lr"]), float(self.cfg["l2"]), int(self.cfg["batch"])
        for epoch in resource_steps(self.epoch, r0, r1):
            order = self.rng.permutation(len(self.x))
            for i in range(0, len(order), batch):
                xb, yb = self.x[order[i:i + batch]], self.y[order[i:i + batch]]
                p = 1 / (1 + np.exp(-np.clip(xb @ self.w, -30, 30)))
                self.w -= lr * (xb.T @ (p - yb) / len(xb) + l2 * self.w)
            self.epoch = epoch  # before the yield: the worker may stop iterating here
            yield float(epoch), self._loss(self.vx, self.vy)

    def state_dict(self) -> dict[str, Any]:
        return {"w": self.w.copy(), "epoch": self.epoch, "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.w = np.array(state["w"])
        self.epoch = int(state["epoch"])
        self.rng.bit_generator.state = state["rng"]
