"""The grokking transformer of Power et al. 2022 ("Grokking: Generalization Beyond Overfitting on
Small Algorithmic Datasets"): a small decoder-only transformer trained on a table of
``x ∘ y mod p``, which fits its training pairs quickly and generalises to the held-out pairs
only much later, if weight decay and the training fraction allow it.

Data is generated here: every pair ``(x, y)`` (``y != 0`` for the division operations), as the
sequence ``x ∘ y =`` whose answer the model predicts at the last position. The pairs are put in
one fixed order (``data_seed``, not the trial seed) and the first ``train_fraction`` of them are
the training set, so trials with different training fractions see nested splits and every trial
is validated on pairs it never trains on.

The paper's setup is the default: 2 layers, width 128, 4 heads, AdamW (beta2 0.98) at 1e-3 with
weight decay 1, 10 steps of linear warm-up, batch 512 (or half the training set if smaller).

Resource: blocks of 100 optimisation steps (``resource_unit = "100 steps"``: grokking takes
thousands of steps, and a metric report per step would drown the service). Metric:
``val_error`` = 1 - validation accuracy (minimize).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
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

STEPS_PER_UNIT = 100
WARMUP_STEPS = 10


def _inv(y: int, p: int) -> int:
    return pow(y, p - 2, p)  # Fermat: p is prime


# The paper's modular operations. Division is multiplication by the modular inverse.
OPERATIONS: dict[str, tuple[Callable[[int, int, int], int], bool]] = {
    # name: (f(x, y, p), needs y != 0)
    "x+y": (lambda x, y, p: (x + y) % p, False),
    "x-y": (lambda x, y, p: (x - y) % p, False),
    "x/y": (lambda x, y, p: (x * _inv(y, p)) % p, True),
    "x/y if y odd else x-y": (lambda x, y, p: (x * _inv(y, p)) % p if y % 2 else (x - y) % p,
                              True),
    "x^2+y^2": (lambda x, y, p: (x * x + y * y) % p, False),
    "x^2+xy+y^2": (lambda x, y, p: (x * x + x * y + y * y) % p, False),
    "x^2+xy+y^2+x": (lambda x, y, p: (x * x + x * y + y * y + x) % p, False),
    "x^3+xy": (lambda x, y, p: (x**3 + x * y) % p, False),
    "x^3+xy^2+y": (lambda x, y, p: (x**3 + x * y * y + y) % p, False),
}

DEFAULTS: dict[str, Any] = {
    "operation": "x/y",
    "p": 97,
    "train_fraction": 0.5,
    "lr": 1e-3,
    "weight_decay": 1.0,
    "dropout": 0.0,
    "optimizer": "adamw",
    "momentum": 0.9,  # only for sgd
    "schedule": "constant",  # after warm-up; cosine or onecycle over ctx.max_resource
    "width": 128,
    "layers": 2,
    "heads": 4,
    "batch_size": 512,
    "data_seed": 0,
}


def is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, math.isqrt(n) + 1))


def make_table(operation: str, p: int, data_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All equations of the operation as token sequences ``[x, op, y, eq]`` and answers, in a
    fixed shuffled order. Tokens: 0..p-1 are numbers, p is ``∘``, p+1 is ``=``."""
    if operation not in OPERATIONS:
        raise ValueError(f"unknown operation {operation!r}; use one of {sorted(OPERATIONS)}")
    if not is_prime(p):
        raise ValueError(f"p={p} must be prime (division needs inverses)")
    f, nonzero = OPERATIONS[operation]
    pairs = [(x, y) for x in range(p) for y in range(1 if nonzero else 0, p)]
    seqs = torch.tensor([[x, p, y, p + 1] for x, y in pairs], dtype=torch.long)
    answers = torch.tensor([f(x, y, p) for x, y in pairs], dtype=torch.long)
    order = torch.randperm(len(pairs), generator=make_generator(data_seed))
    return seqs[order], answers[order]


class Block(nn.Module):
    """Pre-LN decoder block. Attention is written out (4 tokens: the cost is nothing) so that
    its dropout draws from the trainer's generator like every other dropout."""

    def __init__(self, width: int, heads: int, dropout: float, g: torch.Generator) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(),
                                 nn.Linear(4 * width, width))
        self.attn_drop, self.resid_drop = GenDropout(dropout, g), GenDropout(dropout, g)
        self.mlp_drop = GenDropout(dropout, g)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).unbind(2)
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))  # (b, heads, t, d_head)
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        weights = self.attn_drop(scores.masked_fill(causal, float("-inf")).softmax(-1))
        return self.proj((weights @ v).transpose(1, 2).reshape(b, t, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.resid_drop(self.attention(self.ln1(x)))
        return x + self.mlp_drop(self.mlp(self.ln2(x)))


class GrokTransformer(nn.Module):
    def __init__(self, p: int, width: int, layers: int, heads: int, dropout: float,
                 g: torch.Generator, seq_len: int = 4) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.tok = nn.Embedding(p + 2, width)
        self.pos = nn.Embedding(seq_len, width)
        self.blocks = nn.Sequential(*(Block(width, heads, dropout, g) for _ in range(layers)))
        self.ln = nn.LayerNorm(width)
        self.head = nn.Linear(width, p)  # answers are numbers only

    def forward(self, seqs: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(seqs.shape[1], device=seqs.device)
        h = self.blocks(self.tok(seqs) + self.pos(pos))
        return self.head(self.ln(h[:, -1]))  # the answer is predicted after "="


@register_trainer
class GrokkingTrainer(TorchState, Trainer):
    name = "grokking"
    COUNTERS = ("units", "step", "samples_seen")
    GENERATORS = ("data_rng", "dropout_rng")
    resource_unit = "100 steps"
    metric = "val_error"
    direction = "minimize"

    @classmethod
    def default_space(cls) -> list[dict[str, Any]]:
        return [
            {"name": "train_fraction", "type": "float", "low": 0.2, "high": 0.8, "log": False},
            {"name": "weight_decay", "type": "float", "low": 1e-3, "high": 10.0, "log": True},
            {"name": "lr", "type": "float", "low": 1e-4, "high": 1e-2, "log": True},
            {"name": "dropout", "type": "float", "low": 0.0, "high": 0.5, "log": False},
        ]

    def __init__(self, config: Mapping[str, Any], ctx: TrainerContext) -> None:
        self.cfg = cfg = get_config(config, DEFAULTS, ctx.settings)
        self.ctx = ctx
        self.device = resolve_device(ctx)
        p = int(cfg["p"])
        seqs, answers = make_table(str(cfg["operation"]), p, int(cfg["data_seed"]))
        n_train = int(round(len(seqs) * float(cfg["train_fraction"])))
        if not 0 < n_train < len(seqs):
            raise ValueError(f"train_fraction {cfg['train_fraction']} leaves an empty split")
        seqs, answers = seqs.to(self.device), answers.to(self.device)
        self.x_train, self.y_train = seqs[:n_train], answers[:n_train]
        self.x_val, self.y_val = seqs[n_train:], answers[n_train:]
        self.batch_size = min(int(cfg["batch_size"]), max(1, n_train // 2))  # as in the paper

        self.data_rng = make_generator(ctx.seed)
        self.dropout_rng = make_generator(ctx.seed + 1, self.device)
        with seeded(ctx.seed):
            self.model = GrokTransformer(p, int(cfg["width"]), int(cfg["layers"]),
                                         int(cfg["heads"]), float(cfg["dropout"]),
                                         self.dropout_rng)
        self.model.to(self.device)
        self.optimizer = build_optimizer(
            [{"params": list(self.model.parameters())}], str(cfg["optimizer"]), float(cfg["lr"]),
            float(cfg["weight_decay"]), float(cfg["momentum"]),
        )
        if isinstance(self.optimizer, torch.optim.AdamW):
            for group in self.optimizer.param_groups:
                group["betas"] = (0.9, 0.98)  # the paper's beta2
        self.total_steps = max(1, round(ctx.max_resource * STEPS_PER_UNIT))
        self.warmup = min(1.0, WARMUP_STEPS / self.total_steps)
        self.units = 0
        self.step = 0
        self.samples_seen = 0
        self.last_train_loss = math.nan
        self.last_train_error = math.nan

    def train_unit(self) -> float:
        """``STEPS_PER_UNIT`` optimisation steps on random minibatches; returns the mean loss."""
        self.model.train()
        n = len(self.x_train)
        # All the batches of the unit drawn at once on the CPU generator (same on any device,
        # one host-to-device copy per unit): each batch is a sample without replacement.
        keys = torch.rand(STEPS_PER_UNIT, n, generator=self.data_rng)
        batches = keys.argsort(dim=1)[:, :self.batch_size].to(self.device)
        total = torch.zeros((), device=self.device)
        for idx in batches:
            set_lr(self.optimizer, lr_factor(str(self.cfg["schedule"]),
                                             self.step / self.total_steps, self.warmup))
            loss = F.cross_entropy(self.model(self.x_train[idx]), self.y_train[idx])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.step += 1
            total += loss.detach()
        self.samples_seen += STEPS_PER_UNIT * self.batch_size
        return float(total) / STEPS_PER_UNIT

    @torch.no_grad()
    def error(self, x: torch.Tensor, y: torch.Tensor) -> float:
        self.model.eval()
        return float((self.model(x).argmax(1) != y).float().mean())

    def train(self, r0: float, r1: float) -> Iterator[tuple[float, float]]:
        for unit in resource_steps(self.units, r0, r1):
            self.last_train_loss = self.train_unit()
            self.last_train_error = self.error(self.x_train, self.y_train)
            val_error = self.error(self.x_val, self.y_val)
            self.units = unit  # before the yield: the worker may stop iterating right here
            yield float(unit), val_error
