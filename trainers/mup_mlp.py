"""A muP-parameterised MLP (Yang et al., "Tensor Programs V: Tuning Large Neural Networks via
Zero-Shot Hyperparameter Transfer") whose width is a hyperparameter.

Under muP the best learning rate stays put as the network widens, while the cost grows with
width: the trainer a cost-aware search learns scaling laws on (tune narrow, transfer wide).
``parameterization="sp"`` gives the standard parameterisation for comparison, identical at the
base width.

With ``m = width / base_width``, following the rules of the paper's Table 3 as the ``mup`` package
implements them (MuReadout, MuAdam, MuSGD):

============  ============  ==================  ==================  ====================
layer         init var      forward multiplier  Adam(W) lr          SGD lr
============  ============  ==================  ==================  ====================
input, bias   1 / fan_in    1                   lr                  lr * m
hidden        1 / fan_in    1                   lr / m              lr
readout       0 (zero)      1 / m               lr                  lr * m
============  ============  ==================  ==================  ====================

(in SP every layer has init variance 1 / fan_in, no multiplier, and the learning rate ``lr``.)

Data: MNIST from ``data_dir`` when present, scikit-learn's digits otherwise (as ``mlp``).
Resource: epochs. Metric: ``val_loss`` (validation cross-entropy, minimize): smoother than the
error rate, which matters for fitting scaling laws.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._common import (
    TorchState,
    build_optimizer,
    get_config,
    lr_factor,
    make_generator,
    resolve_device,
    resource_steps,
    seeded,
    set_lr,
)
from .base import Trainer, TrainerContext, register_trainer
from .data import load_mnist_or_digits

DEFAULTS: dict[str, Any] = {
    "lr": 3e-3,
    "width": 256,
    "base_width": 64,  # the width at which muP and SP coincide (where one would tune)
    "depth": 3,  # hidden layers; depth - 1 hidden-to-hidden matrices
    "parameterization": "mup",  # mup or sp
    "optimizer": "adamw",  # adamw or sgd (Nesterov momentum)
    "momentum": 0.9,
    "weight_decay": 0.0,
    "schedule": "cosine",  # over ctx.max_resource epochs
    "batch_size": 64,
    "dataset": "auto",  # auto, mnist or digits: see data.load_mnist_or_digits
}


class MuMLP(nn.Module):
    def __init__(self, d_in: int, width: int, depth: int, n_out: int, mult: float,
                 mup: bool) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.input = nn.Linear(d_in, width)
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(depth - 1))
        self.readout = nn.Linear(width, n_out)
        # muP: logits scaled by 1/m so that their update size does not grow with width.
        self.out_mult = 1.0 / mult if mup else 1.0
        for layer in (self.input, *self.hidden, self.readout):
            nn.init.normal_(layer.weight, std=layer.in_features**-0.5)
            nn.init.zeros_(layer.bias)
        if mup:
            # Zero readout (as mup's MuReadout(readout_zero_init=True)): the output at
            # initialisation is then exactly 0 at every width, not a width-dependent random map.
            nn.init.zeros_(self.readout.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.input(x))
        for layer in self.hidden:
            h = F.relu(layer(h))
        return self.readout(h) * self.out_mult


def param_groups(model: MuMLP, mult: float, mup: bool, optimizer: str) -> list[dict[str, Any]]:
    """Per-layer learning-rate multipliers (the table in the module docstring)."""
    if not mup:
        return [{"params": list(model.parameters()), "lr_mult": 1.0}]
    hidden_w = [layer.weight for layer in model.hidden]
    hidden_b = [layer.bias for layer in model.hidden]
    if optimizer == "adamw":
        return [
            {"params": [model.input.weight, model.input.bias, *hidden_b], "lr_mult": 1.0},
            {"params": hidden_w, "lr_mult": 1.0 / mult},
            {"params": [model.readout.weight, model.readout.bias], "lr_mult": 1.0},
        ]
    return [
        {"params": [model.input.weight, model.input.bias, *hidden_b], "lr_mult": mult},
        {"params": hidden_w, "lr_mult": 1.0},
        {"params": [model.readout.weight], "lr_mult": mult},
        {"params": [model.readout.bias], "lr_mult": 1.0},
    ]


@register_trainer
class MuPMLPTrainer(TorchState, Trainer):
    name = "mup_mlp"
    resource_unit = "epoch"
    metric = "val_loss"
    direction = "minimize"

    @classmethod
    def default_space(cls) -> list[dict[str, Any]]:
        return [
            {"name": "lr", "type": "float", "low": 1e-4, "high": 1e-1, "log": True},
            {"name": "width", "type": "int", "low": 32, "high": 2048, "log": True},
        ]

    def __init__(self, config: Mapping[str, Any], ctx: TrainerContext) -> None:
        self.cfg = cfg = get_config(config, DEFAULTS, ctx.settings)
        if cfg["parameterization"] not in ("mup", "sp"):
            raise ValueError(f"unknown parameterization {cfg['parameterization']!r}; mup or sp")
        self.ctx = ctx
        self.device = resolve_device(ctx)
        data = load_mnist_or_digits(ctx.data_dir, str(cfg["dataset"]))
        self.dataset_name = data.name
        self.x_train, self.y_train = data.x_train.to(self.device), data.y_train.to(self.device)
        self.x_val, self.y_val = data.x_val.to(self.device), data.y_val.to(self.device)

        mup = cfg["parameterization"] == "mup"
        mult = int(cfg["width"]) / int(cfg["base_width"])
        self.data_rng = make_generator(ctx.seed)
        with seeded(ctx.seed):
            self.model = MuMLP(self.x_train.shape[1], int(cfg["width"]), int(cfg["depth"]),
                               data.num_classes, mult, mup)
        self.model.to(self.device)
        self.optimizer = build_optimizer(
            param_groups(self.model, mult, mup, str(cfg["optimizer"])), str(cfg["optimizer"]),
            float(cfg["lr"]), float(cfg["weight_decay"]), float(cfg["momentum"]),
        )
        self.batch_size = int(cfg["batch_size"])
        self.steps_per_epoch = math.ceil(len(self.x_train) / self.batch_size)
        self.total_steps = max(1, round(ctx.max_resource * self.steps_per_epoch))
        self.epoch = 0
        self.step = 0
        self.samples_seen = 0
        self.last_train_loss = math.nan
        self.last_val_error = math.nan

    def train_epoch(self) -> float:
        self.model.train()
        order = torch.randperm(len(self.x_train), generator=self.data_rng).to(self.device)
        total = torch.zeros((), device=self.device)
        for i in range(0, len(order), self.batch_size):
            idx = order[i:i + self.batch_size]
            set_lr(self.optimizer, lr_factor(str(self.cfg["schedule"]),
                                             self.step / self.total_steps))
            loss = F.cross_entropy(self.model(self.x_train[idx]), self.y_train[idx])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.step += 1
            total += loss.detach() * len(idx)
        self.samples_seen += len(order)
        return float(total) / len(order)

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """Validation (cross-entropy, error rate)."""
        self.model.eval()
        logits = self.model(self.x_val)
        loss = F.cross_entropy(logits, self.y_val)
        return float(loss), float((logits.argmax(1) != self.y_val).float().mean())

    def train(self, r0: float, r1: float) -> Iterator[tuple[float, float]]:
        for epoch in resource_steps(self.epoch, r0, r1):
            self.last_train_loss = self.train_epoch()
            val_loss, self.last_val_error = self.evaluate()
            if not math.isfinite(val_loss):
                # A diverged trial is a (bad) result, not a failure: report a large finite loss
                # so the service accepts it (it refuses NaN/inf metrics).
                val_loss = 1e6
            self.epoch = epoch  # before the yield: the worker may stop iterating right here
            yield float(epoch), val_loss
