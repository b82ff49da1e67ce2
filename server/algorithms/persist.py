"""Derived state saving: an algorithm names the attributes that make up its state, and
:class:`Persistent` writes ``state()`` and ``restore()`` from them, instead of 30-45 hand-written
lines per algorithm that must be kept in step with every new attribute.

The encoding is JSON-safe and exact: dict keys keep their type (a trial id stays an int),
tuples and sets stay tuples and sets, ``Fraction`` and non-finite floats are written as text,
dataclasses registered with :func:`record` are written field by field (fields marked
``DERIVED`` are skipped and rebuilt), and a numpy ``Generator`` or a sampler is restored in
place from its own state. After ``restore`` the algorithm's ``_derive()`` rebuilds its indexes,
so snapshot + replay of the inputs since gives exactly the live state.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from fractions import Fraction
from typing import Any, ClassVar, TypeVar

import numpy as np

from .base import Job, Sampler

DERIVED = {"derived": True}  # dataclass field metadata: rebuilt after a restore, not saved
_TAG = "~"
_RECORDS: dict[str, type] = {}
_OWN: list[type] = []  # classes that save themselves (state()/restore()), samplers included
T = TypeVar("T", bound=type)


def record(cls: T) -> T:
    """Register a dataclass that may appear in saved state (by its class name)."""
    _RECORDS[cls.__name__] = cls
    return cls


record(Job)


def own_state(cls: T) -> T:
    """Register a class whose objects save themselves with ``state()`` and ``restore()``
    (a model core an algorithm owns); they are restored in place, like a sampler."""
    _OWN.append(cls)
    return cls


def encode(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {_TAG: "float", "v": repr(value)}
    if isinstance(value, Fraction):
        return {_TAG: "fraction", "v": str(value)}
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, tuple):
        return {_TAG: "tuple", "v": [encode(v) for v in value]}
    if isinstance(value, (set, frozenset)):
        return {_TAG: "set", "v": [encode(v) for v in sorted(value)]}
    if isinstance(value, Mapping):
        return {_TAG: "map", "v": [[encode(k), encode(v)] for k, v in value.items()]}
    if isinstance(value, np.random.Generator):
        return {_TAG: "rng", "v": value.bit_generator.state}
    if dataclasses.is_dataclass(value) and type(value).__name__ in _RECORDS:
        return {_TAG: "record", "type": type(value).__name__, "v": {
            f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)
            if not f.metadata.get("derived")}}
    if isinstance(value, (Sampler, *_OWN)):  # it saves itself, in its own format
        return {_TAG: "own", "v": value.state()}
    raise TypeError(f"cannot save a {type(value).__name__} in an algorithm's state")


def decode(data: Any, current: Any = None) -> Any:
    """The value ``encode`` wrote. ``current`` is the attribute's value in the fresh object,
    restored in place where the value is an object with state (a generator, a sampler)."""
    if isinstance(data, list):
        return [decode(v) for v in data]
    if not isinstance(data, dict):
        return data
    tag, v = data[_TAG], data.get("v")
    if tag == "float":
        return float(v)
    if tag == "fraction":
        return Fraction(v)
    if tag == "tuple":
        return tuple(decode(x) for x in v)
    if tag == "set":
        return {decode(x) for x in v}
    if tag == "map":
        return {decode(k): decode(x) for k, x in v}
    if tag == "rng":
        current.bit_generator.state = dict(v)
        return current
    if tag == "record":
        cls = _RECORDS[data["type"]]
        return cls(**{k: decode(x) for k, x in v.items()})
    if tag == "own":
        current.restore(v)
        return current
    raise ValueError(f"unknown saved value tag {tag!r}")


class Persistent:
    """``state()`` and ``restore()`` from the attribute names in ``saved``; ``state_version``
    changes whenever their meaning does. ``_derive()`` rebuilds what is not saved."""

    name: str = ""
    saved: ClassVar[tuple[str, ...]] = ()
    state_version: ClassVar[int] = 1

    def state(self) -> dict[str, Any]:
        return {"version": self.state_version,
                **{attr: encode(getattr(self, attr)) for attr in self.saved}}

    def restore(self, state: Mapping[str, Any]) -> None:
        if state.get("version") != self.state_version:
            raise ValueError(f"{self.name} state version {state.get('version')!r} is not "
                             f"{self.state_version}: saved by another release of hpod")
        for attr in self.saved:
            setattr(self, attr, decode(state[attr], getattr(self, attr, None)))
        self._derive()

    def _derive(self) -> None:
        """Rebuild indexes kept beside the saved attributes (none by default)."""
