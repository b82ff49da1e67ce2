"""The trainer interface: what a worker needs from a model to train one job segment.

A trainer names its model, its default search space and its resource unit; it is built from
one configuration; it trains from ``r0`` to ``r1`` yielding the metric at each resource step;
and it saves and loads its full state (model, optimizer, schedule, random generators) so that a
promoted or retried trial continues exactly where it stopped. The worker owns everything
around it: the queue, heartbeats, checkpoint files and cost measurement.
"""

from __future__ import annotations

import abc
import importlib
import pkgutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar


class DataError(RuntimeError):
    """Data is missing or malformed; the message names the path and the expected layout."""


@dataclass(frozen=True)
class TrainerContext:
    """What the worker passes to a trainer besides the configuration.

    ``max_resource`` is the study's maximum resource: schedules are defined against it, so a
    trial resumed at a higher rung follows the schedule it would have followed uninterrupted.
    ``seed`` is derived from the study seed and the trial id. ``data_dir`` is where the user keeps
    real data sets (None: use data the trainer generates or a package ships). ``settings`` are
    the study's ``trainer_settings`` (trainer options that are not searched, e.g. a data set
    name or, for the analytic trainer, seconds to sleep per step to act like real training).
    """

    seed: int
    max_resource: float
    data_dir: str | None = None
    device: str | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)


class Trainer(abc.ABC):
    name: ClassVar[str]
    resource_unit: ClassVar[str] = "epoch"
    metric: ClassVar[str] = "val_loss"
    direction: ClassVar[str] = "minimize"

    @classmethod
    @abc.abstractmethod
    def default_space(cls) -> list[dict[str, Any]]:
        """The default search space in ``SearchSpace.to_dict()`` form."""

    @abc.abstractmethod
    def __init__(self, config: Mapping[str, Any], ctx: TrainerContext) -> None: ...

    @abc.abstractmethod
    def train(self, r0: float, r1: float) -> Iterator[tuple[float, float]]:
        """Train from resource ``r0`` to ``r1``; yield ``(resource, metric)`` after each step.
        The worker may stop iterating early (a STOP decision): the state must then be valid at
        the last yielded step."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-for-bit: weights, optimizer, schedule, RNGs."""

    @abc.abstractmethod
    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


TRAINERS: dict[str, type[Trainer]] = {}


def register_trainer(cls: type[Trainer]) -> type[Trainer]:
    TRAINERS[cls.name] = cls
    return cls


def get_trainer(name: str) -> type[Trainer]:
    load_all()
    if name not in TRAINERS:
        raise KeyError(f"unknown trainer {name!r}; known trainers: {sorted(TRAINERS)}")
    return TRAINERS[name]


def load_all() -> dict[str, type[Trainer]]:
    """Import every module of this package so that each trainer registers itself."""
    from hpod import trainers

    skip = {"base", "worker", "device"}
    for mod in pkgutil.iter_modules(trainers.__path__):
        if mod.name not in skip and not mod.name.startswith("_"):
            importlib.import_module(f"hpod.trainers.{mod.name}")
    return TRAINERS


TrainerFactory = Callable[[Mapping[str, Any], TrainerContext], Trainer]
