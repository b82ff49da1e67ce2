"""The trainer interface: what a worker needs from a model to train one job segment.

A trainer names its model, its default search space and its resource unit; it is built from
one configuration; it trains from ``r0`` to ``r1`` yielding the metric at each resource step;
and it saves and loads its full state (model, optimizer, schedule, random generators) so that a
promoted or retried trial continues exactly where it stopped. The worker owns everything
around it: the queue, heartbeats, checkpoint files and cost measurement.

Finding a trainer by name (:func:`get_trainer`) imports only what that name needs, so a worker
of the analytic trainer never loads torch. A name is one of

* a built-in trainer (``analytic``, ``mlp``, ... : :data:`BUILTIN`);
* an entry point of the ``hpod.trainers`` group, for an installed package
  (``[project.entry-points."hpod.trainers"] mymodel = "my_pkg.models:MyTrainer"``);
* ``module:attribute`` for anything importable (``my_pkg.models:MyTrainer``).

The attribute is either a :class:`Trainer` subclass, or a plain function
``fn(config, ctx)`` that runs its own training loop (``trainers/function.py``). A study names
its trainer with exactly the string the worker was given: jobs go to one stream per name.
"""

from __future__ import annotations

import abc
import importlib
import importlib.metadata
import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar


class DataError(RuntimeError):
    """Data is missing or malformed; the message names the path and the expected layout."""


class UnknownTrainer(KeyError):
    """A trainer name that resolves to nothing; the message says what names are valid."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


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


# ---------------------------------------------------------------- helpers for trainers
# Torch-free, so that trainers without torch (analytic, scaling, a user's) can use them.

SHARED_SETTINGS = frozenset({"data_dir"})
"""``trainer_settings`` keys that are the worker's business, not a trainer option."""


def whole(r: float, what: str) -> int:
    """Resources are counted in whole units (epochs, blocks of steps)."""
    n = round(r)
    if abs(r - n) > 1e-9:
        raise ValueError(f"{what}={r} is not a whole number of resource units")
    return int(n)


def resource_steps(done: int, r0: float, r1: float) -> range:
    """The unit indices (1-based, the resource reached after each) to train for ``[r0, r1]``.

    ``done`` is how far this trainer already is; starting anywhere else would silently train a
    different trial, so a mismatch is an error (the worker must load the checkpoint first).
    """
    start, stop = whole(r0, "r0"), whole(r1, "r1")
    if start != done:
        raise ValueError(
            f"asked to train from r0={r0} but this trainer is at resource {done}; "
            "load the trial's checkpoint (or start from 0)"
        )
    if stop < start:
        raise ValueError(f"r1={r1} is below r0={r0}")
    return range(start + 1, stop + 1)


def get_config(
    config: Mapping[str, Any], defaults: Mapping[str, Any],
    settings: Mapping[str, Any] | None = None,
    recipes: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The trainer's options: its defaults, overlaid by its ``recipe`` (a named bundle of
    options, ``paper`` by default, from ``recipes``), overlaid by the study's
    ``trainer_settings`` (fixed, not searched: a data set, a model size), overlaid by the trial's
    configuration (searched). So ``recipe: paper`` with ``schedule: cosine`` is the paper's
    recipe with one named modernisation.

    Unknown keys are an error, not a silent no-op: a typo in a fixed setting would otherwise
    tune the wrong model. Numbers may arrive as floats (protobuf Struct has no integers);
    trainers cast where they use them.
    """
    settings = {k: v for k, v in (settings or {}).items() if k not in SHARED_SETTINGS}
    for what, given in (("trainer_settings", settings), ("configuration", config)):
        unknown = sorted(set(given) - set(defaults))
        if unknown:
            raise ValueError(f"unknown {what} keys {unknown}; known: {sorted(defaults)}")
    preset: Mapping[str, Any] = {}
    if recipes is not None:
        name = str({**defaults, **settings, **config}.get("recipe", "paper"))
        if name not in recipes:
            raise ValueError(f"unknown recipe {name!r}; use one of {sorted(recipes)}")
        preset = recipes[name]
    return {**defaults, **preset, **settings, **config}



# ---------------------------------------------------------------- finding trainers by name

BUILTIN: dict[str, str] = {
    "analytic": "analytic",
    "scaling": "scaling",
    "mlp": "mlp",
    "grokking": "grokking",
    "densenet": "densenet",
    "preact_resnet": "preact_resnet",
    "mup_mlp": "mup_mlp",
}
"""Built-in trainer name -> module of ``hpod.trainers`` that registers it (imported on use)."""

ENTRY_POINT_GROUP = "hpod.trainers"

TRAINERS: dict[str, type[Trainer]] = {}
"""Built-in trainers registered so far (a module registers its trainer when imported)."""

_RESOLVED: dict[str, type] = {}  # other names (entry points, module:attr) resolved so far


def register_trainer(cls: type[Trainer]) -> type[Trainer]:
    TRAINERS[cls.name] = cls
    return cls


def get_trainer(name: str) -> type:
    """The trainer class a name stands for, importing only what it needs.

    A function trainer comes back wrapped in a ``FunctionTrainer`` subclass (its ``fn`` is the
    function). Raises :class:`UnknownTrainer` (a ``KeyError``) with the valid forms.
    """
    if name in TRAINERS:
        return TRAINERS[name]
    if name in BUILTIN:
        importlib.import_module(f"hpod.trainers.{BUILTIN[name]}")
        return TRAINERS[name]
    if name in _RESOLVED:
        return _RESOLVED[name]
    target = _entry_point(name)
    if target is None and ":" in name:
        target = _import_attr(name)
    if target is None:
        raise UnknownTrainer(
            f"unknown trainer {name!r}; built-in trainers: {sorted(BUILTIN)}; installed "
            f"({ENTRY_POINT_GROUP} entry points): {sorted(entry_point_names()) or 'none'}; "
            "or name your own as 'module:attribute' (a Trainer subclass or a function "
            "fn(config, ctx)) importable on the worker's PYTHONPATH")
    _RESOLVED[name] = as_trainer(target, name)
    return _RESOLVED[name]


def as_trainer(target: Any, name: str) -> type:
    """A Trainer subclass as is; a plain function wrapped for the function API."""
    if inspect.isclass(target):
        missing = [m for m in ("train", "state_dict", "load_state_dict")
                   if not callable(getattr(target, m, None))]
        if missing:
            raise TypeError(f"trainer {name!r} is a class without {missing}: subclass "
                            "hpod.trainers.base.Trainer, or give a function fn(config, ctx)")
        return target
    if callable(target):
        from .function import function_trainer

        return function_trainer(target, name)
    raise TypeError(f"trainer {name!r} is a {type(target).__name__}, not a Trainer subclass "
                    "or a function fn(config, ctx)")


def _import_attr(name: str) -> Any:
    module_name, _, attr = name.partition(":")
    if not module_name or not attr:
        raise UnknownTrainer(f"trainer {name!r}: write 'module:attribute', e.g. "
                             "'my_pkg.models:MyTrainer'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):  # the module itself, not its import
            raise UnknownTrainer(
                f"trainer {name!r}: no module {module_name!r} on the worker's Python path; "
                "install the package or add its folder to PYTHONPATH") from e
        raise
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise UnknownTrainer(f"trainer {name!r}: module {module_name!r} has no "
                                 f"attribute {attr!r}") from None
    return target


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


def entry_point_names() -> list[str]:
    return [ep.name for ep in _entry_points()]


def _entry_point(name: str) -> Any:
    for ep in _entry_points():
        if ep.name == name:
            return ep.load()
    return None


def available() -> list[str]:
    """Every trainer name known without importing one: built-ins and installed entry points.
    (``module:attribute`` names are not listed: any importable one works.)"""
    return sorted({*BUILTIN, *entry_point_names()})


def load_all() -> dict[str, type[Trainer]]:
    """Import every built-in trainer (each registers itself). Loads torch: for listings and
    tests, never on a worker's path."""
    for module in BUILTIN.values():
        importlib.import_module(f"hpod.trainers.{module}")
    return TRAINERS


TrainerFactory = Callable[[Mapping[str, Any], TrainerContext], Trainer]
