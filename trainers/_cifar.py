"""The training loop the CIFAR trainers share (DenseNet-BC, pre-activation ResNet).

A trainer subclasses :class:`CifarTrainer` and supplies ``build_model``, its defaults and its
``recipes``; data loading, augmentation, optimiser, schedule, precision, compilation and
checkpointing live here once.

Data: CIFAR-10 or CIFAR-100 in the python pickle layout under ``ctx.data_dir`` (see
``data.py``; nothing is downloaded, no data dir is a clear DataError). The whole training set
sits on the device as uint8; each epoch's order, crop offsets and flips are drawn on one CPU
generator and copied over once, and the crop + flip + normalisation run on the device, so no
per-batch host work.

Options every CIFAR trainer has (``recipe: paper`` sets the paper's values, see each trainer):

* ``schedule``: ``step`` (the papers': the rate divided by 10 at ``milestones``, fractions of
  the study's maximum resource, [0.5, 0.75] by default), ``cosine``, ``onecycle`` or
  ``constant``; ``warmup_steps`` optimisation steps at ``warmup_factor`` times the rate first
  (pre-act ResNet: 400 steps at 0.01);
* ``optimizer`` ``sgd`` with ``momentum`` and ``nesterov``, or ``adamw``; ``weight_decay``;
* ``precision``: ``fp32`` (the papers) or ``bf16`` (autocast, on CUDA only; a CPU runs fp32);
* ``channels_last`` (CUDA only): the memory layout the tensor cores want; the same arithmetic;
* ``compile``: ``false``, ``true`` (inductor) or a torch.compile backend name. Compiled, every
  training batch has the same shape (the last partial batch of an epoch is dropped: the next
  epoch's reshuffle gives its examples their turn) and validation runs in batches of one fixed
  size (the last one padded, BN in eval mode: padding changes no other example's output), so
  the model compiles once for training and once for evaluation, never for a stray shape. A
  trial resumed in a worker process that already compiled this architecture reuses the
  compiled code (dynamo guards on the code and the shapes, not the module instance); a fresh
  process compiles again (inductor's on-disk cache makes that faster the second time);
* ``drop_last``: drop the last partial batch even uncompiled;
* ``deterministic``: bit-exact resume on a GPU, at a speed cost (``_common.set_determinism``).

What resume guarantees: on the CPU, a resumed trial is bit-identical to an uninterrupted one
(tests/test_trainers.py). On a GPU with ``deterministic: true``, the same on the same GPU model,
torch, CUDA and cuDNN. On a GPU without it, the schedule, data order, augmentation and dropout
stream continue exactly, but cuDNN's autotuned kernels and atomics make the numbers differ in
the last bits. Across device kinds (a checkpoint of a GPU worker resumed on a CPU one, or back)
the same holds: checkpoints are device-independent (``_common.TorchState``).

Resource: epochs. Metric: ``val_error`` on a fixed held-out tenth of the training set.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ._common import (
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
from .base import DataError, Trainer, TrainerContext, get_config, resource_steps
from .data import CIFAR_LAYOUT, CIFAR_MEAN, CIFAR_STD, crop_flip, draw_crop_flip, load_cifar
from .data import normalize_images as normalize

COMMON_DEFAULTS: dict[str, Any] = {
    "recipe": "paper",
    "lr": 0.1,
    "weight_decay": 1e-4,
    "optimizer": "sgd",  # sgd or adamw
    "momentum": 0.9,
    "nesterov": False,
    "schedule": "step",  # step, cosine, onecycle or constant over ctx.max_resource epochs
    "milestones": [0.5, 0.75],  # step: fractions of max_resource where the rate drops 10x
    "warmup": 0.0,  # cosine/onecycle/constant: fraction of max_resource warming up linearly
    "warmup_steps": 0,  # steps at warmup_factor x lr before the schedule starts
    "warmup_factor": 0.1,
    "batch_size": 64,
    "dataset": "cifar10",  # cifar10 or cifar100
    "augment": True,
    "precision": "fp32",  # fp32 or bf16 (CUDA autocast)
    "channels_last": True,  # CUDA only
    "compile": False,  # false, true (inductor) or a torch.compile backend name
    "drop_last": False,
    "deterministic": False,
}

MODERN: dict[str, Any] = {"schedule": "cosine", "nesterov": True, "precision": "bf16",
                          "warmup_steps": 0}
"""The modernisations both CIFAR trainers offer as ``recipe: modern``: cosine to zero over the
study's maximum resource, Nesterov momentum, bf16 autocast on CUDA."""

EVAL_BATCH = 1000


def kaiming_init(model: nn.Module) -> None:
    """He initialisation for convolutions (both papers' Torch code: N(0, 2 / (k² · c_out))),
    BN to identity, linear biases to zero (linear weights keep PyTorch's default, which is
    Torch7's U(±1/sqrt(fan_in)))."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)


class CifarTrainer(TorchState, Trainer):
    resource_unit = "epoch"
    metric = "val_error"
    direction = "minimize"
    defaults: ClassVar[dict[str, Any]] = COMMON_DEFAULTS
    recipes: ClassVar[dict[str, dict[str, Any]]] = {"paper": {}, "modern": MODERN}

    @abc.abstractmethod
    def build_model(self, cfg: Mapping[str, Any], num_classes: int,
                    dropout: torch.Generator) -> nn.Module:
        """The network; ``dropout`` is the generator any dropout layer must draw from."""

    def __init__(self, config: Mapping[str, Any], ctx: TrainerContext) -> None:
        self.cfg = cfg = get_config(config, self.defaults, ctx.settings, self.recipes)
        self.ctx = ctx
        self.device = resolve_device(ctx)
        self.cuda = self.device.type == "cuda"
        if cfg["precision"] not in ("fp32", "bf16"):
            raise ValueError(f"unknown precision {cfg['precision']!r}; use fp32 or bf16")
        if ctx.data_dir is None:
            raise DataError(
                f"trainer {self.name!r} needs a data directory (worker --data-dir) holding "
                f"{CIFAR_LAYOUT.get(str(cfg['dataset']), CIFAR_LAYOUT['cifar10'])}"
            )
        data = load_cifar(ctx.data_dir, str(cfg["dataset"]))
        self.x_train, self.y_train = data.x_train.to(self.device), data.y_train.to(self.device)
        self.x_val, self.y_val = data.x_val.to(self.device), data.y_val.to(self.device)

        self.data_rng = make_generator(ctx.seed)
        self.dropout_rng = StepSeeded(ctx.seed + 1, self.device)
        with seeded(ctx.seed):
            self.model = self.build_model(cfg, data.num_classes, self.dropout_rng.generator)
        self.model.to(self.device)
        set_determinism(self.device, bool(cfg["deterministic"]), benchmark=True)
        self.channels_last = self.cuda and bool(cfg["channels_last"])
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        # The compiled wrapper runs the model; state is always read from the plain module.
        self.compiled = bool(cfg["compile"])
        self.forward = self.model
        if self.compiled:
            backend = "inductor" if cfg["compile"] is True else str(cfg["compile"])
            self.forward = torch.compile(self.model, backend=backend, dynamic=False)
        self.optimizer = build_optimizer(
            [{"params": list(self.model.parameters())}], str(cfg["optimizer"]),
            float(cfg["lr"]), float(cfg["weight_decay"]), float(cfg["momentum"]),
            bool(cfg["nesterov"]),
        )
        self.batch_size = int(cfg["batch_size"])
        self.drop_last = self.compiled or bool(cfg["drop_last"])
        self.steps_per_epoch = self.batches_per_epoch(len(self.x_train))
        if self.steps_per_epoch < 1:
            raise ValueError(f"batch_size {self.batch_size} exceeds the {len(self.x_train)} "
                             "training images with drop_last (or compile) on")
        self.total_steps = max(1, round(ctx.max_resource * self.steps_per_epoch))
        self.epoch = 0
        self.step = 0
        self.samples_seen = 0
        self.last_train_loss = math.nan
        self.last_val_loss = math.nan

    def batches_per_epoch(self, n: int) -> int:
        full, rest = divmod(n, self.batch_size)
        if self.drop_last:
            return full
        # A trailing batch of one sample is dropped: BatchNorm cannot normalise a single value.
        return full + (1 if rest > 1 else 0)

    def lr_factor_at(self, step: int) -> float:
        """The rate at an absolute step: warm-up steps first, then the schedule over the
        study's maximum resource (milestones at 50 % / 75 % of it for ``step``)."""
        cfg = self.cfg
        if step < int(cfg["warmup_steps"]):
            return float(cfg["warmup_factor"])
        return lr_factor(str(cfg["schedule"]), step / self.total_steps, float(cfg["warmup"]),
                         tuple(float(m) for m in cfg["milestones"]))

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = normalize(x, CIFAR_MEAN, CIFAR_STD)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def autocast(self) -> torch.autocast:
        on = self.cuda and self.cfg["precision"] == "bf16"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=on)

    def train_epoch(self) -> float:
        self.model.train()
        n = len(self.x_train)
        order = torch.randperm(n, generator=self.data_rng)
        offsets, flips = draw_crop_flip(n, self.data_rng)
        order, offsets, flips = (t.to(self.device) for t in (order, offsets, flips))
        total = torch.zeros((), device=self.device)
        seen = 0
        for b in range(self.steps_per_epoch):
            sl = slice(b * self.batch_size, (b + 1) * self.batch_size)
            idx = order[sl]
            x = self.x_train[idx]
            if self.cfg["augment"]:
                x = crop_flip(x, offsets[sl], flips[sl])
            set_lr(self.optimizer, self.lr_factor_at(self.step))
            self.dropout_rng.at(self.step)
            with self.autocast():
                loss = F.cross_entropy(self.forward(self.prepare(x)), self.y_train[idx])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.step += 1
            total += loss.detach().float() * len(idx)
            seen += len(idx)
        self.samples_seen += seen
        return float(total) / max(seen, 1)

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """Validation (error rate, mean cross-entropy), no augmentation, BN in eval mode.
        Compiled, every batch has ``EVAL_BATCH`` rows (the last padded with copies of its
        first image and the padding's outputs discarded): one shape, one compiled graph."""
        self.model.eval()
        wrong = torch.zeros((), device=self.device)
        loss = torch.zeros((), device=self.device)
        size = min(EVAL_BATCH, len(self.x_val))
        for i in range(0, len(self.x_val), size):
            x, y = self.x_val[i:i + size], self.y_val[i:i + size]
            k = len(x)
            if self.compiled and k < size:
                x = torch.cat([x, x[:1].expand(size - k, *x.shape[1:])])
            with self.autocast():
                logits = self.forward(self.prepare(x)).float()[:k]
            wrong += (logits.argmax(1) != y).sum()
            loss += F.cross_entropy(logits, y, reduction="sum")
        n = len(self.x_val)
        return float(wrong) / n, float(loss) / n

    def train(self, r0: float, r1: float) -> Iterator[tuple[float, float]]:
        for epoch in resource_steps(self.epoch, r0, r1):
            self.last_train_loss = self.train_epoch()
            val_error, self.last_val_loss = self.evaluate()
            self.epoch = epoch  # before the yield: the worker may stop iterating right here
            yield float(epoch), val_error
