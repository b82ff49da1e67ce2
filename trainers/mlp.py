"""The dropout MLP of Hinton et al. 2012 ("Improving neural networks by preventing co-adaptation
of feature detectors", arXiv:1207.0580) on MNIST, or on scikit-learn's bundled 8x8 digits.

Data: MNIST (IDX files) from the worker's data directory. Without one, or when it holds no
MNIST, ``dataset: auto`` trains on scikit-learn's 8x8 digits (1,437 training and 360 validation
images, 64 inputs) and says so: a warning in the worker's log, and ``dataset_name`` is
``digits``. ``dataset: mnist`` refuses to run without MNIST; ``dataset: digits`` asks for the
digits explicitly (no warning).

``recipe: paper`` (the default) is the paper's Appendix A.1 for MNIST:

* 784-800-800-10 (``width`` 800, ``depth`` 2), rectified linear hidden units (``activation:
  logistic`` is offered too), softmax output, cross-entropy;
* dropout 20 % on the inputs and 50 % on the hidden units;
* weights drawn from N(0, 0.01²), biases 0;
* minibatches of 100; the update ``Δw ← p Δw − (1 − p) ε ⟨∂L/∂w⟩, w ← w + Δw`` (``optimizer:
  hinton``) with ε = 10 decayed by 0.998 after each epoch and the momentum p rising linearly
  from 0.5 to 0.99 over the first 500 epochs; no weight decay;
* each hidden unit's incoming weight vector renormalised after every update to L2 norm at most
  15 (``max_norm``). With ε = 10 it binds from the first epochs on (``max_norm_hits`` counts
  the updates after which it rescaled some unit): it is what lets so large a rate be used.

The recipe is MNIST's: 600 minibatches per epoch for 3,000 epochs. On the digits (15 minibatches
per epoch) ε = 10 does not learn in tens of epochs; rates of 0.3 to 1 do (3-5 % validation
error after 27 epochs), and there the constraint rarely binds. The default search space spans
both.

``recipe: modern``: PyTorch's default initialisation, SGD with Nesterov momentum
0.9 at 0.05, weight decay 1e-5, cosine schedule over the study's maximum resource, batch 64,
2 x 256; max-norm 15 is kept but rarely binds at these learning rates. Every option can also be
set on its own over either recipe (``activation``, ``init_std``, ``optimizer``: hinton, sgd or
adamw, ``nesterov``, ``schedule``: exp, step, cosine, onecycle or constant, ``lr_decay``,
``momentum_start`` / ``momentum`` / ``momentum_epochs``, ``max_norm`` 0 = off, ...).

Resource: epochs. Metric: ``val_error``, the fraction of misclassified validation examples
(minimize). The validation split is fixed per data set (see ``data.py``), so every trial is
measured on the same examples; the trial seed decides initialisation, data order and dropout.
Resume: bit-identical on the CPU; on a GPU see ``_cifar.py``'s ``deterministic`` (the same
switch, ``deterministic: true``, is honoured here).
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
    GenDropout,
    StepSeeded,
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
from .data import Dataset, load_mnist_or_digits

log = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {
    "recipe": "paper",  # paper (Hinton et al. 2012, A.1) or modern; see the module docstring
    "lr": 10.0,
    "weight_decay": 0.0,
    "dropout": 0.5,
    "input_dropout": 0.2,
    "width": 800,
    "depth": 2,  # hidden layers
    "activation": "relu",  # relu or logistic
    "init_std": 0.01,  # N(0, init_std²) weights; 0: PyTorch's default initialisation
    "optimizer": "hinton",  # hinton (the paper's momentum form), sgd or adamw
    "nesterov": False,  # sgd only
    "momentum": 0.99,  # hinton: final momentum; sgd: the momentum
    "momentum_start": 0.5,  # hinton: momentum at epoch 0, rising linearly ...
    "momentum_epochs": 500,  # ... to ``momentum`` over this many epochs
    "schedule": "exp",  # exp (lr * lr_decay^epoch), step, cosine, onecycle or constant
    "lr_decay": 0.998,
    "warmup": 0.0,  # cosine/onecycle/constant: fraction of max_resource warming up
    "max_norm": 15.0,  # 0 turns the constraint off
    "batch_size": 100,
    "dataset": "auto",  # auto (MNIST if data_dir has it, else digits + a warning), mnist, digits
    "deterministic": False,  # bit-exact resume on a GPU (see _common.set_determinism)
}

RECIPES: dict[str, dict[str, Any]] = {
    "paper": {},
    "modern": {
        "lr": 0.05, "weight_decay": 1e-5, "width": 256, "init_std": 0.0,
        "optimizer": "sgd", "nesterov": True, "momentum": 0.9, "schedule": "cosine",
        "batch_size": 64,
    },
}

ACTIVATIONS = {"logistic": nn.Sigmoid, "relu": nn.ReLU}


class DropoutMLP(nn.Module):
    def __init__(
        self, d_in: int, width: int, depth: int, n_out: int, p_in: float, p_hidden: float,
        generator: torch.Generator, activation: str = "relu", init_std: float = 0.0,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; use {sorted(ACTIVATIONS)}")
        self.input_dropout = GenDropout(p_in, generator)
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Linear(d_in if i == 0 else width, width), ACTIVATIONS[activation](),
                       GenDropout(p_hidden, generator)]
        self.hidden = nn.Sequential(*layers)
        self.out = nn.Linear(width if depth else d_in, n_out)
        if init_std > 0:
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=init_std)
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.hidden(self.input_dropout(x)))

    def hidden_linears(self) -> list[nn.Linear]:
        return [m for m in self.hidden if isinstance(m, nn.Linear)]

    @torch.no_grad()
    def apply_max_norm(self, max_norm: float) -> None:
        """Hinton et al.'s constraint: rescale any hidden unit whose incoming weight vector has
        L2 norm above ``max_norm`` back onto the ball (rows of ``weight`` are units)."""
        for m in self.hidden_linears():
            m.weight.renorm_(2, 0, max_norm)


class HintonMomentum(torch.optim.Optimizer):
    """The update of Hinton et al. 2012, Appendix A.1: ``Δw ← p Δw − (1 − p) ε g``, ``w ← w +
    Δw``. Unlike torch's SGD, the velocity accumulates ``(1 − p) ε g`` with the ε and p of the
    step the gradient was taken at, so changing ε or p acts on new gradients only."""

    def __init__(self, params: Any, lr: float, momentum: float) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum})

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            p, lr = group["momentum"], group["lr"]
            for w in group["params"]:
                if w.grad is None:
                    continue
                state = self.state[w]
                if "velocity" not in state:
                    state["velocity"] = torch.zeros_like(w)
                v = state["velocity"]
                v.mul_(p).add_(w.grad, alpha=-(1.0 - p) * lr)
                w.add_(v)


@register_trainer
class MLPTrainer(TorchState, Trainer):
    name = "mlp"
    resource_unit = "epoch"
    metric = "val_error"
    direction = "minimize"

    @classmethod
    def default_space(cls) -> list[dict[str, Any]]:
        # The paper recipe's knobs: ε, the dropout rate, the max-norm radius and the width.
        return [
            {"name": "lr", "type": "float", "low": 0.03, "high": 30.0, "log": True},
            {"name": "dropout", "type": "float", "low": 0.0, "high": 0.8, "log": False},
            {"name": "max_norm", "type": "float", "low": 1.0, "high": 50.0, "log": True},
            {"name": "width", "type": "int", "low": 64, "high": 2048, "log": True},
        ]

    def __init__(self, config: Mapping[str, Any], ctx: TrainerContext) -> None:
        self.cfg = cfg = get_config(config, DEFAULTS, ctx.settings, RECIPES)
        self.ctx = ctx
        self.device = resolve_device(ctx)
        set_determinism(self.device, bool(cfg["deterministic"]))
        data: Dataset = load_mnist_or_digits(ctx.data_dir, str(cfg["dataset"]))
        self.dataset_name = data.name
        if data.name == "digits" and cfg["dataset"] == "auto":
            log.warning(
                "mlp: no MNIST in data_dir=%s; training on scikit-learn's 8x8 digits (%d "
                "training, %d validation images), not MNIST. Give the worker --data-dir with "
                "MNIST's IDX files, or set dataset: digits to ask for the digits.",
                ctx.data_dir, len(data.x_train), len(data.x_val))
        # Data lives on the device for the whole trial: no per-batch host work.
        self.x_train, self.y_train = data.x_train.to(self.device), data.y_train.to(self.device)
        self.x_val, self.y_val = data.x_val.to(self.device), data.y_val.to(self.device)

        # Three independent streams, all derived from the trial seed: initialisation (global
        # seed inside a fork, so the process RNG is untouched), data order (CPU generator: the
        # same order on any device) and dropout masks (device generator reseeded every step).
        self.data_rng = make_generator(ctx.seed)
        self.dropout_rng = StepSeeded(ctx.seed + 1, self.device)
        with seeded(ctx.seed):
            self.model = DropoutMLP(
                self.x_train.shape[1], int(cfg["width"]), int(cfg["depth"]),
                data.num_classes, float(cfg["input_dropout"]), float(cfg["dropout"]),
                self.dropout_rng.generator, str(cfg["activation"]), float(cfg["init_std"]),
            )
        self.model.to(self.device)
        self.optimizer = self.make_optimizer()
        self.batch_size = int(cfg["batch_size"])
        self.steps_per_epoch = math.ceil(len(self.x_train) / self.batch_size)
        self.total_steps = max(1, round(ctx.max_resource * self.steps_per_epoch))
        self.epoch = 0
        self.step = 0
        self.samples_seen = 0  # for the worker's samples-per-second report
        self.last_train_loss = math.nan
        self.last_val_loss = math.nan
        self.max_norm_hits = 0  # updates after which the constraint rescaled some unit

    def make_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.cfg
        params = list(self.model.parameters())
        if cfg["optimizer"] == "hinton":
            if float(cfg["weight_decay"]):
                raise ValueError("optimizer hinton has no weight decay (the paper uses none); "
                                 "set weight_decay: 0 or use optimizer sgd or adamw")
            opt = HintonMomentum(params, float(cfg["lr"]), float(cfg["momentum_start"]))
            for g in opt.param_groups:
                g["base_lr"] = g["lr"]
            return opt
        return build_optimizer([{"params": params}], str(cfg["optimizer"]), float(cfg["lr"]),
                               float(cfg["weight_decay"]), float(cfg["momentum"]),
                               bool(cfg["nesterov"]))

    def lr_factor_at(self, step: int) -> float:
        """The schedule is a function of the absolute step: resuming continues it exactly.
        ``exp`` is the paper's ε·0.998^epoch, the epoch being that of the step."""
        if self.cfg["schedule"] == "exp":
            return float(self.cfg["lr_decay"]) ** (step // self.steps_per_epoch)
        return lr_factor(str(self.cfg["schedule"]), step / self.total_steps,
                         float(self.cfg["warmup"]))

    def momentum_at(self, epoch: int) -> float:
        start, end = float(self.cfg["momentum_start"]), float(self.cfg["momentum"])
        ramp = max(int(self.cfg["momentum_epochs"]), 1)
        return start + (end - start) * min(epoch / ramp, 1.0)

    def train_epoch(self) -> float:
        """One pass over the training data in a seeded order; returns the mean training loss."""
        self.model.train()
        if isinstance(self.optimizer, HintonMomentum):
            for g in self.optimizer.param_groups:
                g["momentum"] = self.momentum_at(self.epoch)
        order = torch.randperm(len(self.x_train), generator=self.data_rng).to(self.device)
        total = torch.zeros((), device=self.device)
        hits = torch.zeros((), device=self.device, dtype=torch.long)
        max_norm = float(self.cfg["max_norm"])
        for i in range(0, len(order), self.batch_size):
            idx = order[i:i + self.batch_size]
            set_lr(self.optimizer, self.lr_factor_at(self.step))
            self.dropout_rng.at(self.step)
            loss = F.cross_entropy(self.model(self.x_train[idx]), self.y_train[idx])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if max_norm:
                hits += self.max_norm_binds(max_norm)
                self.model.apply_max_norm(max_norm)
            self.step += 1
            total += loss.detach() * len(idx)
        self.samples_seen += len(order)
        self.max_norm_hits += int(hits)
        return float(total) / len(order)  # one device sync per epoch, not per batch

    @torch.no_grad()
    def max_norm_binds(self, max_norm: float) -> torch.Tensor:
        """1 when some hidden unit's incoming norm exceeds the bound (it is about to be
        rescaled), else 0; a device tensor, so no sync per step."""
        over = [m.weight.norm(dim=1).max() > max_norm for m in self.model.hidden_linears()]
        return torch.stack(over).any().long() if over else torch.zeros((), dtype=torch.long)

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
