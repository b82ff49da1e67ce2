"""A muP-parameterised MLP (Yang et al., "Tensor Programs V: Tuning Large Neural Networks via
Zero-Shot Hyperparameter Transfer", 2022; the authors' code is microsoft/mup: ``mup/layer.py``,
``mup/optim.py`` and the paper's MLP experiment ``examples/MLP/main.py``) whose width is a
hyperparameter.

Under muP the best learning rate stays put as the network widens, while the cost grows with
width: the trainer a cost-aware search learns scaling laws on (tune narrow, transfer wide).
``parameterization: sp`` gives the standard parameterisation for comparison.

With ``m = width / base_width``, the rules of the paper's Table 3 as the ``mup`` package applies
them (``MuReadout``, ``MuAdam(W)`` with its default, non-decoupled weight decay, ``MuSGD``):

=============  ===========  ==================  ===================  ===================
parameter      init var     forward multiplier  Adam(W) lr, decay    SGD lr, decay
=============  ===========  ==================  ===================  ===================
input W, b     1 / fan_in   1                   lr, wd               lr * m, wd / m
hidden W       1 / fan_in   1                   lr / m, wd * m       lr, wd
hidden b       0            1                   lr, wd               lr * m, wd / m
readout W      0 (zero)     1 / m on its input  lr, wd               lr * m, wd / m
readout b      0            1 (not scaled)      lr, wd               lr, wd
=============  ===========  ==================  ===================  ===================

``MuReadout`` multiplies the readout's *input* by ``output_mult / m`` and then applies weight
and bias, so the bias is not scaled; the decay is scaled with the rate so that their product,
which is what torch's AdamW and SGD apply, keeps the same width dependence as the update.
In SP every layer has init variance 1 / fan_in (the readout too, ``readout_init: fan_in``), no
multiplier, and the plain ``lr`` and ``weight_decay``. At the base width (m = 1) the two
parameterisations therefore differ only in the readout's initialisation: zero under muP (the
paper's recommendation, Sec. D.2; ``MuReadout(readout_zero_init=True)``), random under SP. With
``readout_init`` set to the same value for both they are the same network, bit for bit.

``recipe: paper`` (the default) is ``examples/MLP/main.py``: two hidden ReLU layers without
biases, zero-initialised readout without bias, base width 64, ``MuSGD`` with plain momentum 0.9
at 0.1, constant rate, batch 64, ``input_mult`` = ``output_mult`` = 1 (``input_mult`` scales the
first layer's output by sqrt(input_mult) and its initial weights by 1/sqrt(input_mult), as
there). The data differ: CIFAR-10 there, MNIST or the digits here. ``recipe: modern``: three
hidden layers with biases, AdamW (``MuAdamW``) at 3e-3, cosine schedule.

Data: MNIST from ``data_dir`` when present, scikit-learn's digits otherwise (as ``mlp``, with the
same warning). Resource: epochs. Metric: ``val_loss`` (validation cross-entropy, minimize):
smoother than the error rate, which matters for fitting scaling laws. Resume: bit-identical on
the CPU; on a GPU as ``_cifar.py`` describes (``deterministic: true`` for bit-exact).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._common import (
    TorchState,
    build_optimizer,
    lr_factor,
    make_generator,
    resolve_device,
    seeded,
    set_determinism,
    set_lr,
)
from .base import Trainer, TrainerContext, get_config, register_trainer, resource_steps
from .data import load_mnist_or_digits

log = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {
    "recipe": "paper",  # paper (microsoft/mup examples/MLP/main.py) or modern
    "lr": 0.1,
    "width": 256,
    "base_width": 64,  # the width where one would tune: m = width / base_width
    "depth": 2,  # hidden layers; depth - 1 hidden-to-hidden matrices
    "bias": False,
    "parameterization": "mup",  # mup or sp
    "readout_init": "auto",  # auto (zero under mup, fan_in under sp), zero or fan_in
    "input_mult": 1.0,
    "output_mult": 1.0,
    "optimizer": "sgd",  # sgd (MuSGD) or adamw (MuAdamW)
    "momentum": 0.9,
    "nesterov": False,
    "weight_decay": 0.0,
    "schedule": "constant",  # constant, step, cosine or onecycle over ctx.max_resource epochs
    "batch_size": 64,
    "dataset": "auto",  # auto, mnist or digits: see data.load_mnist_or_digits
    "deterministic": False,
}

RECIPES: dict[str, dict[str, Any]] = {
    "paper": {},
    "modern": {"depth": 3, "bias": True, "optimizer": "adamw", "lr": 3e-3,
               "schedule": "cosine"},
}


class MuMLP(nn.Module):
    def __init__(self, d_in: int, width: int, depth: int, n_out: int, mult: float,
                 mup: bool, bias: bool = True, readout_zero: bool | None = None,
                 input_mult: float = 1.0, output_mult: float = 1.0) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.input = nn.Linear(d_in, width, bias=bias)
        self.hidden = nn.ModuleList(nn.Linear(width, width, bias=bias) for _ in range(depth - 1))
        self.readout = nn.Linear(width, n_out, bias=bias)
        self.input_scale = input_mult**0.5
        # muP: the readout's input scaled by output_mult / m (MuReadout), so that the logits'
        # update size does not grow with width; its bias is added unscaled.
        self.readout_scale = output_mult / mult if mup else output_mult
        for layer in (self.input, *self.hidden, self.readout):
            nn.init.normal_(layer.weight, std=layer.in_features**-0.5)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        self.input.weight.data /= self.input_scale
        if mup if readout_zero is None else readout_zero:
            # Zero readout: the output at initialisation is exactly 0 at every width, not a
            # width-dependent random map (Tensor Programs V, Sec. D.2).
            nn.init.zeros_(self.readout.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.input(x) * self.input_scale)
        for layer in self.hidden:
            h = F.relu(layer(h))
        return self.readout(h * self.readout_scale)


def param_groups(model: MuMLP, mult: float, mup: bool, optimizer: str) -> list[dict[str, Any]]:
    """Per-parameter learning-rate and weight-decay multipliers (the module docstring's table:
    ``mup.optim``'s rules for vector-like, matrix-like and fixed-size parameters)."""
    if not mup:
        return [{"params": list(model.parameters())}]
    readout_b = [model.readout.bias] if model.readout.bias is not None else []
    hidden_w = [layer.weight for layer in model.hidden]
    vector_like = [model.input.weight, model.readout.weight] + [
        layer.bias for layer in (model.input, *model.hidden) if layer.bias is not None]
    if optimizer == "adamw":
        groups = [{"params": hidden_w, "lr_mult": 1.0 / mult, "wd_mult": mult},
                  {"params": vector_like + readout_b}]
    else:
        groups = [{"params": vector_like, "lr_mult": mult, "wd_mult": 1.0 / mult},
                  {"params": hidden_w}, {"params": readout_b}]
    return [g for g in groups if g["params"]]


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
        self.cfg = cfg = get_config(config, DEFAULTS, ctx.settings, RECIPES)
        if cfg["parameterization"] not in ("mup", "sp"):
            raise ValueError(f"unknown parameterization {cfg['parameterization']!r}; mup or sp")
        if cfg["readout_init"] not in ("auto", "zero", "fan_in"):
            raise ValueError(f"unknown readout_init {cfg['readout_init']!r}; auto, zero or fan_in")
        self.ctx = ctx
        self.device = resolve_device(ctx)
        set_determinism(self.device, bool(cfg["deterministic"]))
        data = load_mnist_or_digits(ctx.data_dir, str(cfg["dataset"]))
        self.dataset_name = data.name
        if data.name == "digits" and cfg["dataset"] == "auto":
            log.warning("mup_mlp: no MNIST in data_dir=%s; training on scikit-learn's 8x8 digits "
                        "(%d training images), not MNIST; set dataset: digits to ask for them",
                        ctx.data_dir, len(data.x_train))
        self.x_train, self.y_train = data.x_train.to(self.device), data.y_train.to(self.device)
        self.x_val, self.y_val = data.x_val.to(self.device), data.y_val.to(self.device)

        mup = cfg["parameterization"] == "mup"
        mult = int(cfg["width"]) / int(cfg["base_width"])
        readout_zero = None if cfg["readout_init"] == "auto" else cfg["readout_init"] == "zero"
        self.data_rng = make_generator(ctx.seed)
        with seeded(ctx.seed):
            self.model = MuMLP(self.x_train.shape[1], int(cfg["width"]), int(cfg["depth"]),
                               data.num_classes, mult, mup, bool(cfg["bias"]), readout_zero,
                               float(cfg["input_mult"]), float(cfg["output_mult"]))
        self.model.to(self.device)
        self.optimizer = build_optimizer(
            param_groups(self.model, mult, mup, str(cfg["optimizer"])), str(cfg["optimizer"]),
            float(cfg["lr"]), float(cfg["weight_decay"]), float(cfg["momentum"]),
            bool(cfg["nesterov"]),
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
