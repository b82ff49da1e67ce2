"""Helpers shared by the torch trainers: device, seeding, resource steps, schedules, dropout.

Kept out of ``base.py`` on purpose: these are conveniences for our own trainers, not part of the
interface a worker relies on. The leading underscore keeps ``load_all`` from importing it as a
trainer module.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from .base import TrainerContext
from .device import pick_device


def resolve_device(ctx: TrainerContext) -> torch.device:
    """The worker may pin a device; otherwise ``device.pick_device`` decides (the one place)."""
    return torch.device(ctx.device) if ctx.device else pick_device()


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block (model construction) under a fixed torch seed without touching the global
    RNG stream of the process: several trainers may live in one worker process."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def lr_factor(schedule: str, progress: float, warmup: float = 0.0,
              milestones: tuple[float, ...] = (0.5, 0.75), gamma: float = 0.1) -> float:
    """Multiplier of the peak learning rate at ``progress`` in [0, 1] of the study's maximum
    resource. Defined on the absolute position, not on the segment, so a trial resumed at a
    higher rung continues exactly the schedule it would have followed uninterrupted.

    ``step``: the papers' schedule, ``gamma`` at each of the ``milestones`` (divided by 10 at 50 %
    and 75 %: DenseNet's Sec. 4.2, pre-act ResNet's 32k and 48k of 64k iterations). ``cosine``:
    optional linear warm-up then cosine to 0. ``onecycle``: Smith's one cycle (linear up for the
    first 30 %, then cosine down, as torch's OneCycleLR with ``anneal='cos'`` minus the momentum
    cycling). ``constant``: warm-up then flat.
    """
    p = min(max(progress, 0.0), 1.0)
    if schedule == "step":
        return gamma ** sum(p >= m for m in milestones)
    if schedule == "onecycle":
        warmup = max(warmup, 0.3)
    if warmup > 0 and p < warmup:
        start = 0.04 if schedule == "onecycle" else 0.0  # OneCycleLR's default div_factor 25
        return start + (1.0 - start) * p / warmup
    if schedule == "constant":
        return 1.0
    if schedule in ("cosine", "onecycle"):
        q = (p - warmup) / (1.0 - warmup) if warmup < 1 else 1.0
        return 0.5 * (1.0 + math.cos(math.pi * q))
    raise ValueError(f"unknown schedule {schedule!r}; use step, cosine, onecycle or constant")


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Scale every group's own base learning rate (groups may differ, as in muP)."""
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor


class StepSeeded:
    """A generator on the training device whose state is a pure function of ``(seed, step)``.

    Dropout masks are drawn on the device where the activations are (a CPU draw copied over
    would cost a host round trip per layer per step), but a device generator's state is
    device-specific (a CUDA generator holds a Philox seed and offset, a CPU one a Mersenne
    Twister state): saved in a checkpoint it could not be loaded by a worker of the other kind.
    So the trainer reseeds this generator before every optimisation step from the trial seed and
    the step counter, and checkpoints hold no device generator state at all: a resumed trial
    draws, from its step on, exactly the masks an uninterrupted run on the same kind of device
    would have drawn; on another kind of device it draws valid masks from that device's RNG.
    """

    def __init__(self, seed: int, device: torch.device | str) -> None:
        self.seed = seed
        self.generator = torch.Generator(device=device)
        self.at(0)

    def at(self, step: int) -> torch.Generator:
        # SplitMix-style mixing: neighbouring (seed, step) pairs give unrelated streams.
        x = (self.seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9 + 1) % 2**64
        x = ((x ^ (x >> 31)) * 0x94D049BB133111EB) % 2**64
        self.generator.manual_seed(x ^ (x >> 29))
        return self.generator


class GenDropout(nn.Module):
    """Dropout drawing its masks from a generator the trainer owns (a :class:`StepSeeded`).

    ``nn.Dropout`` draws from the process-wide RNG, which a resumed trial cannot restore
    without also clobbering other trainers in the same process; with an owned generator, the
    masks after resuming are exactly the masks an uninterrupted run would have drawn.
    """

    def __init__(self, p: float, generator: torch.Generator) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {p}")
        self.p = p
        self.generator = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = torch.empty_like(x).bernoulli_(keep, generator=self.generator)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


def build_optimizer(
    params: list[dict[str, Any]], name: str, lr: float, weight_decay: float, momentum: float,
    nesterov: bool = True,
) -> torch.optim.Optimizer:
    """SGD with (Nesterov or plain) momentum, or AdamW. Each group may carry an ``lr_mult`` and
    a ``wd_mult``; its peak rate is stored as ``base_lr`` so that schedules scale it without
    losing it."""
    groups = []
    for g in params:
        g = dict(g)
        g["lr"] = g["base_lr"] = lr * g.pop("lr_mult", 1.0)
        g["weight_decay"] = weight_decay * g.pop("wd_mult", 1.0)
        groups.append(g)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0,
                               weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; use sgd or adamw")


def set_determinism(device: torch.device, deterministic: bool, benchmark: bool = False) -> None:
    """``deterministic``: the same kernels in the same order on every run, so that a trial
    resumed on the same kind of GPU (same torch, CUDA and cuDNN) continues bit for bit. It
    turns off cuDNN autotuning, selects deterministic cuDNN algorithms, makes torch raise on any
    op that has no deterministic implementation, and sets cuBLAS's fixed workspace (which
    cuBLAS reads when a handle is first made: give ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` in the
    worker's environment to be sure). It costs speed, mostly on convolutions (no autotuning)
    and scatter-style backward passes; how much depends on model and GPU: ``python
    bench/trainers.py --deterministic`` against a run without. These switches are process-wide:
    every trainer in a worker process then runs deterministically. On the CPU there is nothing to do
    (its kernels are deterministic for a fixed thread count), so the flag changes nothing there.
    """
    if device.type != "cuda":
        return
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    elif benchmark:
        torch.backends.cudnn.benchmark = True  # fixed input shapes: autotuning pays off


CPU_GENERATOR_STATE = torch.Generator().get_state().numel()


class TorchState:
    """``state_dict``/``load_state_dict`` for a trainer with ``model`` and ``optimizer``: the
    integer counters named in ``COUNTERS`` and the CPU generators named in ``GENERATORS`` are
    saved beside them, so a resumed segment continues bit for bit. Mixed in before ``Trainer``
    so that it provides the two abstract methods.

    The checkpoint is device-independent: generator states are CPU tensors (every generator
    named here lives on the CPU; device-side randomness is :class:`StepSeeded`, a function of
    the seed and step counter, so it has no state to save), and tensors of the model and the
    optimizer are moved by the worker's ``torch.load(map_location=...)`` onto whatever device
    the resuming worker has. Checkpoints from earlier versions that also hold a device
    generator's state (``dropout_rng``) load: that entry is ignored.
    """

    COUNTERS: tuple[str, ...] = ("epoch", "step", "samples_seen")
    GENERATORS: tuple[str, ...] = ("data_rng",)
    model: nn.Module
    optimizer: torch.optim.Optimizer

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"model": self.model.state_dict(),
                                 "optimizer": self.optimizer.state_dict()}
        state.update({name: getattr(self, name) for name in self.COUNTERS})
        for name in self.GENERATORS:
            g: torch.Generator = getattr(self, name)
            if g.device.type != "cpu":  # a device state could not be resumed elsewhere
                raise TypeError(f"generator {name!r} is on {g.device}; checkpointed "
                                "generators must live on the CPU (see StepSeeded)")
            state[name] = g.get_state()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for name in self.COUNTERS:
            setattr(self, name, int(state[name]))
        for name in self.GENERATORS:
            # map_location may have put the bytes on a GPU: generator states are set from CPU.
            saved = state[name].cpu()
            if saved.numel() != CPU_GENERATOR_STATE:
                raise ValueError(
                    f"checkpoint entry {name!r} holds a {saved.numel()}-byte generator state, "
                    f"not a CPU generator's ({CPU_GENERATOR_STATE} bytes): it was written by a "
                    "trainer whose generator lived on a GPU; retrain the trial from 0"
                )
            getattr(self, name).set_state(saved)
