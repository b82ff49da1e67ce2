"""Typed algorithm settings: one dataclass per algorithm, built from what the user sent by one
coercer, so every algorithm validates its options the same way, once, when the study is
created (``StudyConfig.check`` builds the algorithm).

Field types drive the coercion. A protobuf ``Struct`` carries every number as a double, so an
``int`` field accepts 50.0 as 50 (and refuses 50.5), at any depth: a nested dataclass or a
``Mapping[str, int]`` is coerced the same way. ``bool`` is never a number. ``Literal[...]``
fields are choices. Every error is a :class:`SettingsError` naming the full path of the field
(``algorithm.settings.carbs.candidates_per_dim``) and saying what is accepted.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from .base import SERVICE_SETTINGS, SettingsError

T = TypeVar("T")
ROOT = "algorithm.settings"


def parse(cls: type[T], raw: Any, where: str = ROOT, *, passthrough: Sequence[str] = ()) -> T:
    """``cls`` (a dataclass) built from the mapping ``raw``. Keys in ``passthrough`` (and the
    service's own keys at the root) are allowed and ignored: their owner reads them."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise SettingsError(where, f"must be a mapping of settings (got {raw!r})")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    allowed = {*fields, *passthrough, *(SERVICE_SETTINGS if where == ROOT else ())}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise SettingsError(f"{where}.{unknown[0]}",
                            f"unknown setting; known settings: {sorted(allowed)}")
    values = {k: coerce(v, hints[k], f"{where}.{k}") for k, v in raw.items() if k in fields}
    return cls(**values)


def coerce(value: Any, tp: Any, where: str) -> Any:
    """``value`` as type ``tp`` (see the module docstring), or a SettingsError at ``where``."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        return _union(value, args, where)
    if origin is Literal:
        if value not in args or isinstance(value, bool) != isinstance(args[0], bool):
            raise SettingsError(where, f"{value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        return parse(tp, value, where)  # type: ignore[arg-type]
    if origin in (Mapping, dict, typing.Mapping):
        if not isinstance(value, Mapping):
            raise SettingsError(where, f"must be a mapping (got {value!r})")
        return {str(k): coerce(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if origin in (list, tuple, Sequence):
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise SettingsError(where, f"must be a list (got {value!r})")
        return [coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    return _scalar(value, tp, where)


def _union(value: Any, args: tuple[Any, ...], where: str) -> Any:
    if value is None and type(None) in args:
        return None
    options = [a for a in args if a is not type(None)]
    errors = []
    for option in options:
        try:
            return coerce(value, option, where)
        except SettingsError as e:
            errors.append(e.message)
    raise SettingsError(where, " or ".join(errors))


def _scalar(value: Any, tp: Any, where: str) -> Any:
    if tp is bool:
        if not isinstance(value, bool):
            raise SettingsError(where, f"must be true or false (got {value!r})")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise SettingsError(where, f"must be a string (got {value!r})")
        return value
    if tp in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value):
            raise SettingsError(where, f"must be a finite number (got {value!r})")
        if tp is float:
            return float(value)
        if int(value) != value:
            raise SettingsError(where, f"must be a whole number (got {value!r})")
        return int(value)
    raise TypeError(f"settings field {where} has a type the coercer does not know: {tp!r}")
