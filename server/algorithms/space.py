"""Search spaces: the parameters a study tunes, how to sample them and how to check them.

Pure Python and NumPy: no wire types, no I/O. The service converts the wire message into a
:class:`SearchSpace` once; algorithms only ever see this module's types.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class SpaceError(ValueError):
    """A search space or configuration is invalid. ``field`` names the offending part."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Float:
    name: str
    low: float
    high: float
    log: bool = False

    def check(self) -> None:
        where = f"search_space.{self.name}"
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise SpaceError(where, "low and high must be finite numbers")
        if self.low > self.high:
            raise SpaceError(
                where, f"low ({self.low}) is greater than high ({self.high}); swap them"
            )
        if self.log and self.low <= 0:
            raise SpaceError(
                where, f"log scale needs low > 0 (got low={self.low}); use a linear scale "
                "or a positive lower bound"
            )

    def sample(self, rng: np.random.Generator) -> float:
        if self.log:
            return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
        return float(rng.uniform(self.low, self.high))

    def to_unit(self, value: float) -> float:
        """Map a value into [0, 1] on the parameter's own scale (for models and kernels)."""
        if self.high == self.low:
            return 0.5
        if self.log:
            lo, hi = math.log(self.low), math.log(self.high)
            return (math.log(value) - lo) / (hi - lo)
        return (value - self.low) / (self.high - self.low)

    def from_unit(self, u: float) -> float:
        u = min(max(u, 0.0), 1.0)
        if self.log:
            lo, hi = math.log(self.low), math.log(self.high)
            v = math.exp(lo + u * (hi - lo))
        else:
            v = self.low + u * (self.high - self.low)
        return float(min(max(v, self.low), self.high))  # exp(log(x)) may round past a bound

    def contains(self, value: Any) -> bool:
        return isinstance(value, (int, float)) and self.low <= value <= self.high


@dataclass(frozen=True)
class Int:
    name: str
    low: int
    high: int
    log: bool = False

    def check(self) -> None:
        where = f"search_space.{self.name}"
        if self.low > self.high:
            raise SpaceError(
                where, f"low ({self.low}) is greater than high ({self.high}); swap them"
            )
        if self.log and self.low <= 0:
            raise SpaceError(
                where, f"log scale needs low > 0 (got low={self.low}); use a linear scale "
                "or a positive lower bound"
            )

    def sample(self, rng: np.random.Generator) -> int:
        if self.log:
            # Sample on the log scale over [low - 0.5, high + 0.5) so that every integer has a
            # cell of its own and the end points are not under-weighted.
            lo, hi = math.log(self.low - 0.5 + 1e-9), math.log(self.high + 0.5)
            return int(min(max(round(math.exp(rng.uniform(lo, hi))), self.low), self.high))
        return int(rng.integers(self.low, self.high + 1))

    def to_unit(self, value: float) -> float:
        if self.high == self.low:
            return 0.5
        if self.log:
            lo, hi = math.log(self.low), math.log(self.high)
            return (math.log(value) - lo) / (hi - lo)
        return (value - self.low) / (self.high - self.low)

    def from_unit(self, u: float) -> int:
        u = min(max(u, 0.0), 1.0)
        if self.log:
            lo, hi = math.log(self.low), math.log(self.high)
            v = math.exp(lo + u * (hi - lo))
        else:
            v = self.low + u * (self.high - self.low)
        return int(min(max(round(v), self.low), self.high))

    def contains(self, value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and (
            self.low <= value <= self.high
        )


Choice = str | int | float | bool


@dataclass(frozen=True)
class Categorical:
    name: str
    choices: tuple[Choice, ...] = field(default_factory=tuple)

    def check(self) -> None:
        where = f"search_space.{self.name}"
        if not self.choices:
            raise SpaceError(where, "a categorical parameter needs at least one choice")
        if len(set(map(repr, self.choices))) != len(self.choices):
            raise SpaceError(where, "choices must be distinct")

    def sample(self, rng: np.random.Generator) -> Choice:
        return self.choices[int(rng.integers(len(self.choices)))]

    def index(self, value: Choice) -> int:
        return self.choices.index(value)

    def contains(self, value: Any) -> bool:
        return value in self.choices


Param = Float | Int | Categorical


@dataclass(frozen=True)
class SearchSpace:
    """An ordered set of named parameters. Order is part of determinism: never reorder."""

    params: tuple[Param, ...]

    def __post_init__(self) -> None:
        if not self.params:
            raise SpaceError(
                "search_space", "the search space is empty; add at least one parameter"
            )
        names = [p.name for p in self.params]
        for name in names:
            if not name:
                raise SpaceError("search_space", "every parameter needs a non-empty name")
        # Counted in one pass: a quadratic scan froze the server on a 50,000-name space.
        dupes = sorted(n for n, k in Counter(names).items() if k > 1)
        if dupes:
            shown = ", ".join(repr(n[:64]) for n in dupes[:10])
            more = f" and {len(dupes) - 10} more" if len(dupes) > 10 else ""
            raise SpaceError("search_space", f"parameter names must be unique: {shown}{more}")
        for p in self.params:
            p.check()

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def __getitem__(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    def __len__(self) -> int:
        return len(self.params)

    def sample(self, rng: np.random.Generator) -> dict[str, Choice]:
        return {p.name: p.sample(rng) for p in self.params}

    def validate_config(self, config: Mapping[str, Any]) -> None:
        missing = [n for n in self.names if n not in config]
        if missing:
            raise SpaceError("config", f"missing parameters {missing}")
        extra = sorted(set(config) - set(self.names))
        if extra:
            raise SpaceError("config", f"unknown parameters {extra}")
        for p in self.params:
            if not p.contains(config[p.name]):
                raise SpaceError(f"config.{p.name}", f"{config[p.name]!r} is outside {p}")

    # --- JSON form (used by the algorithms' saved state and by the store) ---

    def to_dict(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for p in self.params:
            if isinstance(p, Categorical):
                out.append({"name": p.name, "type": "categorical", "choices": list(p.choices)})
            else:
                kind = "float" if isinstance(p, Float) else "int"
                out.append({"name": p.name, "type": kind, "low": p.low, "high": p.high,
                            "log": p.log})
        return out

    @classmethod
    def from_dict(cls, items: Sequence[Mapping[str, Any]]) -> SearchSpace:
        params: list[Param] = []
        for i, item in enumerate(items):
            name = str(item.get("name", ""))
            kind = item.get("type")
            where = f"search_space.{name or i}"
            if kind == "float":
                params.append(Float(name, float(item["low"]), float(item["high"]),
                                    bool(item.get("log", False))))
            elif kind == "int":
                low, high = item["low"], item["high"]
                if int(low) != low or int(high) != high:
                    raise SpaceError(where, "int bounds must be whole numbers")
                params.append(Int(name, int(low), int(high), bool(item.get("log", False))))
            elif kind == "categorical":
                params.append(Categorical(name, tuple(item.get("choices", ()))))
            else:
                raise SpaceError(
                    where, f"unknown parameter type {kind!r}; use float, int or categorical"
                )
        return cls(tuple(params))
