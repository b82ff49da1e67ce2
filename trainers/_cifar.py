"""The training loop the CIFAR trainers share (DenseNet-BC, pre-activation ResNet).

A trainer subclasses :class:`CifarTrainer` and supplies ``build_model`` and its defaults; data
loading, augmentation, optimiser, schedule, mixed precision and checkpointing live here once.

Data: CIFAR-10 or CIFAR-100 in the python pickle layout under ``ctx.data_dir`` (see
``data.py``; nothing is downloaded, no data dir is a clear DataError). The whole training set
sits on the device as uint8; each epoch's order, crop offsets and flips are drawn on one CPU
generator and copied over once, and the crop + flip + normalisation run on the device, so no
per-batch host work. On CUDA: bf16 autocast, channels-last and cuDNN autotuning; ``compile``
turns on ``torch.compile``.

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
from .base import DataError, Trainer, TrainerContext
from .data import CIFAR_LAYOUT, CIFAR_MEAN, CIFAR_STD, crop_flip, draw_crop_flip, load_cifar
from .data import normalize_images as normalize

COMMON_DEFAULTS: dict[str, Any] = {
    "lr": 0.1,
    "weight_decay": 1e-4,
    "optimizer": "sgd",  # sgd (Nesterov momentum) or adamw
    "momentum": 0.9,
    "schedule": "cosine",  # cosine or onecycle (or constant) over ctx.max_resource epochs
    "warmup": 0.0,
    "batch_size": 64,
    "dataset": "cifar10",  # cifar10 or cifar100
    "augment": True,
    "compile": False,
}

EVAL_BATCH = 1000


def kaiming_init(model: nn.Module) -> None:
    """He initialisation for convolutions (as in both papers' Torch code), BN to identity."""
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

    @abc.abstractmethod
    def build_model(self, cfg: Mapping[str, Any], num_classes: int) -> nn.Module: ...

    def __init__(self, config: Mapping[str, Any], ctx: TrainerContext) -> None:
        self.cfg = cfg = get_config(config, self.defaults, ctx.settings)
        self.ctx = ctx
        self.device = resolve_device(ctx)
        self.cuda = self.device.type == "cuda"
        if ctx.data_dir is None:
            raise DataError(
                f"trainer {self.name!r} needs a data directory (worker --data-dir) holding "
                f"{CIFAR_LAYOUT.get(str(cfg['dataset']), CIFAR_LAYOUT['cifar10'])}"
            )
        data = load_cifar(ctx.data_dir, str(cfg["dataset"]))
        self.x_train, self.y_train = data.x_train.to(self.device), data.y_train.to(self.device)
        self.x_val, self.y_val = data.x_val.to(self.device), data.y_val.to(self.device)

        self.data_rng = make_generator(ctx.seed)
        with seeded(ctx.seed):
            self.model = self.build_model(cfg, data.num_classes)
        self.model.to(self.device)
        if self.cuda:
            torch.backends.cudnn.benchmark = True  # fixed input shapes: autotuning pays off
            self.model.to(memory_format=torch.channels_last)
        # The compiled wrapper runs the model; state is always read from the plain module.
        self.forward = torch.compile(self.model) if cfg["compile"] else self.model
        self.optimizer = build_optimizer(
            [{"params": list(self.model.parameters())}], str(cfg["optimizer"]),
            float(cfg["lr"]), float(cfg["weight_decay"]), float(cfg["momentum"]),
        )
        self.batch_size = int(cfg["batch_size"])
        self.steps_per_epoch = self.batches_per_epoch(len(self.x_train))
        self.total_steps = max(1, round(ctx.max_resource * self.steps_per_epoch))
        self.epoch = 0
        self.step = 0
        self.samples_seen = 0
        self.last_train_loss = math.nan
        self.last_val_loss = math.nan

    def batches_per_epoch(self, n: int) -> int:
        # A trailing batch of one sample is dropped: BatchNorm cannot normalise a single value.
        full, rest = divmod(n, self.batch_size)
        return full + (1 if rest > 1 else 0)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = normalize(x, CIFAR_MEAN, CIFAR_STD)
        return x.contiguous(memory_format=torch.channels_last) if self.cuda else x

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cuda)

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
            set_lr(self.optimizer, lr_factor(str(self.cfg["schedule"]),
                                             self.step / self.total_steps,
                                             float(self.cfg["warmup"])))
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
        """Validation (error rate, mean cross-entropy), no augmentation, BN in eval mode."""
        self.model.eval()
        wrong = torch.zeros((), device=self.device)
        loss = torch.zeros((), device=self.device)
        for i in range(0, len(self.x_val), EVAL_BATCH):
            x, y = self.x_val[i:i + EVAL_BATCH], self.y_val[i:i + EVAL_BATCH]
            with self.autocast():
                logits = self.forward(self.prepare(x)).float()
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
