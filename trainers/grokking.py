"""The grokking transformer of Power et al. 2022 ("Grokking: Generalization Beyond Overfitting on
Small Algorithmic Datasets"; the authors' code is openai/grok, ``grok/transformer.py``,
``grok/data.py`` and ``grok/training.py``): a small decoder-only transformer trained on a table
of ``x ∘ y mod p``, which fits its training pairs quickly and generalises to the held-out pairs
only much later, if weight decay and the training fraction allow it.

The task (trainer settings, never search dimensions: a search that could move them would change
the problem it is scored on, e.g. raise ``train_fraction`` to lower the error): ``operation``,
``p``, ``train_fraction`` and ``data_seed``. Every pair ``(x, y)`` (``y != 0`` for the
divisions) becomes the sequence ``<eos> x ∘ y = z <eos>`` as in ``grok/data.py``; the pairs are
put in one fixed order (``data_seed``, not the trial seed) and the first ``train_fraction`` of
them are the training set, so trials with different fractions see nested splits and every trial
is validated on pairs it never trains on. As in ``grok/training.py`` the model reads the first
six tokens and is trained on the tokens after ``=`` (the answer and the closing ``<eos>``); an
equation counts as right when both are (``val_error`` = 1 - that accuracy). The vocabulary holds
the tokens the task uses (the numbers, ``∘``, ``=``, ``<eos>``), where the authors' holds every
operator and the S5 permutations too: the unused classes only add softmax outputs that are never
targets.

``recipe: paper`` (the default) is the authors' model and training (paper Sec. 2 and App. A.1):
2 layers, width 128, 4 heads, post-LN blocks (``x = LN(x + attn(x)); x = LN(x + ffn(x))``),
ReLU feed-forward of width 512, sinusoidal positions, no biases in any linear layer (layer
norms keep theirs), no final layer norm, an untied linear readout; AdamW (beta2 0.98) at 1e-3
with weight decay 1, the rate rising linearly from 0 over the first 10 steps, then constant;
batches of ``min(512, ceil(n_train / 2))`` taken in order from a fresh shuffle of the training
set every epoch (the last one smaller). Dropout, 0 by default, follows the feed-forward block
only, as in the authors' code.

``recipe: modern``: pre-LN blocks with a final layer norm, GELU, learned positions and biases.
Each is also an option of its own (``norm``: post or pre, ``activation``: relu or gelu,
``positions``: sinusoidal or learned, ``bias``), as is ``sampling: step`` (each batch drawn
independently, without replacement within the batch) and ``schedule`` (cosine or onecycle over
the study's maximum resource, after the warm-up).

Resource: blocks of 100 optimisation steps (``resource_unit = "100 steps"``: grokking takes
thousands of steps, and a metric report per step would drown the service). Metric:
``val_error`` (minimize). Resume is bit-identical on the CPU (the epoch's order and position
are in the checkpoint); on a GPU see ``_cifar.py`` and ``deterministic``.
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

STEPS_PER_UNIT = 100
WARMUP_STEPS = 10
SEQ_LEN = 6  # <eos> x op y = z (the model's input; the targets are shifted by one)
ANSWER = slice(4, 6)  # positions whose targets are z and the closing <eos>


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

TASK = ("operation", "p", "train_fraction", "data_seed")
"""Settings that define the task: trainer settings only, refused in a searched configuration."""

DEFAULTS: dict[str, Any] = {
    "recipe": "paper",  # paper (openai/grok) or modern
    "operation": "x/y",
    "p": 97,
    "train_fraction": 0.5,
    "data_seed": 0,
    "lr": 1e-3,
    "weight_decay": 1.0,
    "dropout": 0.0,
    "optimizer": "adamw",
    "momentum": 0.9,  # only for sgd
    "schedule": "constant",  # after warm-up; cosine or onecycle over ctx.max_resource
    "width": 128,
    "layers": 2,
    "heads": 4,
    "batch_size": 512,  # capped at ceil(n_train / 2), as in the authors' code
    "norm": "post",  # post (the authors') or pre (with a final layer norm)
    "activation": "relu",  # relu or gelu
    "positions": "sinusoidal",  # sinusoidal or learned
    "bias": False,  # biases in the linear layers
    "sampling": "epoch",  # epoch (reshuffle per pass, in order) or step (independent batches)
    "deterministic": False,
}

RECIPES: dict[str, dict[str, Any]] = {
    "paper": {},
    "modern": {"norm": "pre", "activation": "gelu", "positions": "learned", "bias": True},
}

CHOICES = {"norm": ("post", "pre"), "activation": ("relu", "gelu"),
           "positions": ("sinusoidal", "learned"), "sampling": ("epoch", "step")}


def is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, math.isqrt(n) + 1))


def make_table(operation: str, p: int, data_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All equations of the operation as model inputs ``[<eos>, x, ∘, y, =, z]`` and targets
    ``[x, ∘, y, =, z, <eos>]``, in a fixed shuffled order. Tokens: 0..p-1 are numbers, p is
    ``∘``, p+1 is ``=``, p+2 is ``<eos>``."""
    if operation not in OPERATIONS:
        raise ValueError(f"unknown operation {operation!r}; use one of {sorted(OPERATIONS)}")
    if not is_prime(p):
        raise ValueError(f"p={p} must be prime (division needs inverses)")
    f, nonzero = OPERATIONS[operation]
    op, eq, eos = p, p + 1, p + 2
    rows = [[eos, x, op, y, eq, f(x, y, p), eos]
            for x in range(p) for y in range(1 if nonzero else 0, p)]
    table = torch.tensor(rows, dtype=torch.long)
    table = table[torch.randperm(len(rows), generator=make_generator(data_seed))]
    return table[:, :-1], table[:, 1:]


def sinusoidal(length: int, width: int) -> torch.Tensor:
    """``grok/transformer.py``'s encoding: sin(pos / 10000^(i/d)) at even i, cos(pos /
    10000^((i-1)/d)) at odd i."""
    pos = torch.arange(length, dtype=torch.float64)[:, None]
    i = torch.arange(width)
    angle = pos / 10000 ** ((i - i % 2) / width)
    return torch.where(i % 2 == 0, angle.sin(), angle.cos()).float()


class Block(nn.Module):
    """A decoder block, post-LN (the authors') or pre-LN. Attention is written out (6 tokens:
    the cost is nothing) so that any dropout draws from the trainer's generator."""

    def __init__(self, width: int, heads: int, dropout: float, g: torch.Generator,
                 norm: str, activation: str, bias: bool) -> None:
        super().__init__()
        self.heads, self.pre = heads, norm == "pre"
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width, bias=bias)
        self.proj = nn.Linear(width, width, bias=bias)
        act = nn.ReLU() if activation == "relu" else nn.GELU()
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width, bias=bias), act,
                                 nn.Linear(4 * width, width, bias=bias))
        self.mlp_drop = GenDropout(dropout, g)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).unbind(2)
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))  # (b, heads, t, d_head)
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        weights = scores.masked_fill(causal, float("-inf")).softmax(-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(b, t, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre:
            x = x + self.attention(self.ln1(x))
            return x + self.mlp_drop(self.mlp(self.ln2(x)))
        x = self.ln1(x + self.attention(x))
        return self.ln2(x + self.mlp_drop(self.mlp(x)))


class GrokTransformer(nn.Module):
    def __init__(self, p: int, width: int, layers: int, heads: int, dropout: float,
                 g: torch.Generator, norm: str = "post", activation: str = "relu",
                 positions: str = "sinusoidal", bias: bool = False) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        vocab = p + 3
        self.tok = nn.Embedding(vocab, width)
        self.pos: nn.Embedding | None = None
        if positions == "learned":
            self.pos = nn.Embedding(SEQ_LEN, width)
        else:
            self.register_buffer("pe", sinusoidal(SEQ_LEN, width), persistent=False)
        self.blocks = nn.Sequential(*(Block(width, heads, dropout, g, norm, activation, bias)
                                      for _ in range(layers)))
        self.ln = nn.LayerNorm(width) if norm == "pre" else nn.Identity()
        self.head = nn.Linear(width, vocab, bias=bias)

    def forward(self, seqs: torch.Tensor) -> torch.Tensor:
        """Logits at the answer positions, shape (batch, vocab, 2)."""
        t = seqs.shape[1]
        pos = self.pos.weight[:t] if self.pos is not None else self.pe[:t]
        h = self.ln(self.blocks(self.tok(seqs) + pos))
        return self.head(h[:, ANSWER]).transpose(1, 2)


def check_choices(cfg: Mapping[str, Any]) -> None:
    for key, allowed in CHOICES.items():
        if cfg[key] not in allowed:
            raise ValueError(f"unknown {key} {cfg[key]!r}; use one of {list(allowed)}")


@register_trainer
class GrokkingTrainer(TorchState, Trainer):
    name = "grokking"
    COUNTERS = ("units", "step", "samples_seen", "cursor")
    resource_unit = "100 steps"
    metric = "val_error"
    direction = "minimize"

    @classmethod
    def default_space(cls) -> list[dict[str, Any]]:
        return [
            {"name": "weight_decay", "type": "float", "low": 1e-3, "high": 10.0, "log": True},
            {"name": "lr", "type": "float", "low": 1e-4, "high": 1e-2, "log": True},
            {"name": "dropout", "type": "float", "low": 0.0, "high": 0.5, "log": False},
        ]

    def __init__(self, config: Mapping[str, Any], ctx: TrainerContext) -> None:
        searched = sorted(set(config) & set(TASK))
        if searched:
            raise ValueError(f"{searched} define the task: set them in trainer_settings, not in "
                             "the search space (a search would change the problem it is scored on)")
        self.cfg = cfg = get_config(config, DEFAULTS, ctx.settings, RECIPES)
        check_choices(cfg)
        self.ctx = ctx
        self.device = resolve_device(ctx)
        set_determinism(self.device, bool(cfg["deterministic"]))
        p = int(cfg["p"])
        inputs, targets = make_table(str(cfg["operation"]), p, int(cfg["data_seed"]))
        n_train = int(round(len(inputs) * float(cfg["train_fraction"])))
        if not 0 < n_train < len(inputs):
            raise ValueError(f"train_fraction {cfg['train_fraction']} leaves an empty split")
        inputs, targets = inputs.to(self.device), targets.to(self.device)
        self.x_train, self.y_train = inputs[:n_train], targets[:n_train]
        self.x_val, self.y_val = inputs[n_train:], targets[n_train:]
        self.batch_size = min(int(cfg["batch_size"]), math.ceil(n_train / 2))  # as the authors

        self.data_rng = make_generator(ctx.seed)
        self.dropout_rng = StepSeeded(ctx.seed + 1, self.device)
        with seeded(ctx.seed):
            self.model = GrokTransformer(p, int(cfg["width"]), int(cfg["layers"]),
                                         int(cfg["heads"]), float(cfg["dropout"]),
                                         self.dropout_rng.generator, str(cfg["norm"]),
                                         str(cfg["activation"]), str(cfg["positions"]),
                                         bool(cfg["bias"]))
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
        self.order = torch.arange(n_train)  # this epoch's shuffle (sampling: epoch) ...
        self.cursor = n_train  # ... and the position in it: at the end, so the first step shuffles
        self.last_train_loss = math.nan
        self.last_train_error = math.nan

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "order": self.order.clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.order = state["order"].cpu()

    def next_batches(self) -> torch.Tensor:
        """The unit's batches, as indices on the CPU generator (the same on any device).
        ``epoch``: consecutive slices of a per-epoch shuffle, as ``grok/data.py``'s iterator
        (a batch never spans two epochs, so the epoch's last batch may be smaller). ``step``:
        every batch an independent sample without replacement."""
        n = len(self.x_train)
        if self.cfg["sampling"] == "step":
            keys = torch.rand(STEPS_PER_UNIT, n, generator=self.data_rng)
            return list(keys.argsort(dim=1)[:, :self.batch_size])
        batches = []
        for _ in range(STEPS_PER_UNIT):
            if self.cursor >= n:
                self.order = torch.randperm(n, generator=self.data_rng)
                self.cursor = 0
            batches.append(self.order[self.cursor:self.cursor + self.batch_size])
            self.cursor += self.batch_size
        return batches

    def loss_and_logits(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits = self.model(x)
        return F.cross_entropy(logits, y[:, ANSWER]), logits

    def train_unit(self) -> float:
        """``STEPS_PER_UNIT`` optimisation steps; returns the mean training loss."""
        self.model.train()
        total = torch.zeros((), device=self.device)
        samples = 0
        for idx in self.next_batches():
            idx = idx.to(self.device)
            set_lr(self.optimizer, lr_factor(str(self.cfg["schedule"]),
                                             self.step / self.total_steps, self.warmup))
            self.dropout_rng.at(self.step)
            loss, _ = self.loss_and_logits(self.x_train[idx], self.y_train[idx])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.step += 1
            total += loss.detach()
            samples += len(idx)
        self.samples_seen += samples
        return float(total) / STEPS_PER_UNIT

    @torch.no_grad()
    def error(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """The fraction of equations with some answer token wrong."""
        self.model.eval()
        right = (self.model(x).argmax(1) == y[:, ANSWER]).all(1)
        return 1.0 - float(right.float().mean())

    def train(self, r0: float, r1: float) -> Iterator[tuple[float, float]]:
        for unit in resource_steps(self.units, r0, r1):
            self.last_train_loss = self.train_unit()
            self.last_train_error = self.error(self.x_train, self.y_train)
            val_error = self.error(self.x_val, self.y_val)
            self.units = unit  # before the yield: the worker may stop iterating right here
            yield float(unit), val_error
