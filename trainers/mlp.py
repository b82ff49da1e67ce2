"""The dropout MLP of Hinton et al. 2012 ("Improving neural networks by preventing co-adaptation
of feature detectors") on MNIST, or on scikit-learn's bundled digits when MNIST is not present.

The network of the paper: input dropout (0.2), fully connected ReLU layers each followed by
dropout (0.5 in the paper, tuned here), a max-norm constraint on each hidden unit's incoming
weight vector (15 in the paper) applied after every update, SGD with momentum. We use Nesterov
momentum and a cosine (or one-cycle) schedule over the study's maximum resource, and offer AdamW.

Resource: epochs. Metric: ``val_error``, the fraction of misclassified validation examples
(minimize). The validation split is fixed per data set (see ``data.py``), so every trial is
measured on the same examples; the trial seed decides initialisation, data order and dropout.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._common import (
    GenDropout,
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
from .data import Dataset, load_mnist_or_digits

DEFAULTS: dict[str, Any] = {
    "lr": 0.05,
    "weight_decay": 1e-5,
    "dropout": 0.5,
    "width": 256,
    "optimizer": "sgd",  # sgd (Nesterov momentum) or adamw
    "momentum": 0.9,
    "schedule": "cosine",  # cosine, onecycle or constant, over ctx.max_resource epochs
    "warmup": 0.0,  # fraction of max_resource spent warming up linearly
    "depth": 2,  # hidden layers
    "input_dropout": 0.2,
    "max_norm": 15.0,  # 0 turns the constraint off
    "batch_size": 64,
    "dataset": "auto",  # auto (MNIST if data_dir has it, else digits), mnist or digits
}


class DropoutMLP(nn.Module):
    def __init__(
        self, d_in: int, width: int, depth: int, n_out: int, p_in: float, p_hidden: float,
        generator: torch.Generator,
    ) -> None:
        super().__init__()
        self.input_dropout = GenDropout(p_in, generator)
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Linear(d_in if i == 0 else width, width), nn.ReLU(),
                       GenDropout(p_hidden, generator)]
        self.hidden = nn.Sequential(*layers)
        self.out = nn.Linear(width if depth else d_in, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.hidden(self.input_dropout(x)))

    @torch.no_grad()
    def apply_max_norm(self, max_norm: float) -> None:
        """Hinton et al.'s constraint: rescale any hidden unit whose incoming weight vector has
        L2 norm above ``max_norm`` back onto the ball (rows of ``weight`` are units)."""
        for m in self.hidden:
            if isinstance(m, nn.Linear):
                m.weight.renorm_(2, 0, max_norm)


@register_trainer
class MLPTrainer(TorchState, Trainer):
    name = "mlp"
    GENERATORS = ("data_rng", "dropout_rng")
    resource_unit = "epoch"
    metric = "val_error"
    direction = "minimize"

    @classmethod
    def default_space(cls) -> list[dict[str, Any]]:
        return [
            {"name": "lr", "type": "float", "low": 1e-4, "high": 1.0, "log": True},
            {"name": "weight_decay", "type": "float", "low": 1e-7, "high": 1e-2, "log": True},
            {"name": "dropout", "type": "float", "low": 0.0, "high": 0.8, "log": False},
            {"name": "width", "type": "int", "low": 32, "high": 1024, "log": True},
            {"name": "optimizer", "type": "categorical", "choices": ["sgd", "adamw"]},
        ]

    def __init__(self, config: Mapping[str, Any], ctx: TrainerContext) -> None:
        self.cfg = get_config(config, DEFAULTS, ctx.settings)
        self.ctx = ctx
        self.device = resolve_device(ctx)
        data: Dataset = load_mnist_or_digits(ctx.data_dir, str(self.cfg["dataset"]))
        self.dataset_name = data.name
        # Data lives on the device for the whole trial: no per-batch host work.
        self.x_train, self.y_train = data.x_train.to(self.device), data.y_train.to(self.device)
        self.x_val, self.y_val = data.x_val.to(self.device), data.y_val.to(self.device)

        # Three independent streams, all derived from the trial seed: initialisation (global
        # seed inside a fork, so the process RNG is untouched), data order (CPU generator: the
        # same order on any device), dropout masks (a generator on the device).
        self.data_rng = make_generator(ctx.seed)
        self.dropout_rng = make_generator(ctx.seed + 1, self.device)
        with seeded(ctx.seed):
            self.model = DropoutMLP(
                self.x_train.shape[1], int(self.cfg["width"]), int(self.cfg["depth"]),
                data.num_classes, float(self.cfg["input_dropout"]), float(self.cfg["dropout"]),
                self.dropout_rng,
            )
        self.model.to(self.device)
        self.optimizer = build_optimizer(
            [{"params": list(self.model.parameters())}], str(self.cfg["optimizer"]),
            float(self.cfg["lr"]), float(self.cfg["weight_decay"]), float(self.cfg["momentum"]),
        )
        self.batch_size = int(self.cfg["batch_size"])
        self.steps_per_epoch = math.ceil(len(self.x_train) / self.batch_size)
        self.total_steps = max(1, round(ctx.max_resource * self.steps_per_epoch))
        self.epoch = 0
        self.step = 0
        self.samples_seen = 0  # for the worker's samples-per-second report
        self.last_train_loss = math.nan
        self.last_val_loss = math.nan

    def train_epoch(self) -> float:
        """One pass over the training data in a seeded order; returns the mean training loss."""
        self.model.train()
        order = torch.randperm(len(self.x_train), generator=self.data_rng).to(self.device)
        total = torch.zeros((), device=self.device)
        for i in range(0, len(order), self.batch_size):
            idx = order[i:i + self.batch_size]
            # The schedule is a function of the absolute step: resuming continues it exactly.
            set_lr(self.optimizer, lr_factor(str(self.cfg["schedule"]),
                                             self.step / self.total_steps,
                                             float(self.cfg["warmup"])))
            loss = F.cross_entropy(self.model(self.x_train[idx]), self.y_train[idx])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if self.cfg["max_norm"]:
                self.model.apply_max_norm(float(self.cfg["max_norm"]))
            self.step += 1
            total += loss.detach() * len(idx)
        self.samples_seen += len(order)
        return float(total) / len(order)  # one device sync per epoch, not per batch

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """Validation (error rate, mean cross-entropy), dropout off."""
        self.model.eval()
        logits = self.model(self.x_val)
        err = (logits.argmax(1) != self.y_val).float().mean()
        return float(err), float(F.cross_entropy(logits, self.y_val))

    def train(self, r0: float, r1: float) -> Iterator[tuple[float, float]]:
        for epoch in resource_steps(self.epoch, r0, r1):
            self.last_train_loss = self.train_epoch()
            val_error, self.last_val_loss = self.evaluate()
            self.epoch = epoch  # before the yield: the worker may stop iterating right here
            yield float(epoch), val_error
