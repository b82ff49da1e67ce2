"""Study specs from Python objects or YAML/JSON files into the wire message.

A spec is a mapping such as::

    name: digits-mlp
    trainer: mlp                     # omit for external (ask/tell) trainers
    objective: {metric: val_error, direction: minimize}
    resource: {name: epoch, max_resource: 27, min_resource: 1, eta: 3}
    algorithm: {name: hyperband, settings: {}}
    seed: 0
    search_space:                    # omit to use the trainer's default space
      lr: {type: float, low: 1.0e-4, high: 1.0, log: true}
      width: {type: int, low: 32, high: 512, log: true}
      act: {type: categorical, choices: [relu, tanh]}
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

from google.protobuf import json_format, struct_pb2
from hpod.v1 import hpod_pb2 as pb


class SpecError(ValueError):
    """The spec is malformed; the message names the field."""


def load_spec_file(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        raise SpecError(f"spec file {p} does not exist")
    text = p.read_text()
    if p.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise SpecError(f"{p}: a spec must be a mapping at the top level")
    return data


def _struct(d: Mapping[str, Any] | None) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(dict(d or {}))
    return s


def parameter(name: str, spec: Mapping[str, Any]) -> pb.Parameter:
    kind = spec.get("type")
    scale = pb.SCALE_LOG if spec.get("log") else pb.SCALE_LINEAR
    if kind == "float":
        return pb.Parameter(name=name, float_range=pb.FloatRange(
            low=float(spec["low"]), high=float(spec["high"]), scale=scale))
    if kind == "int":
        return pb.Parameter(name=name, int_range=pb.IntRange(
            low=int(spec["low"]), high=int(spec["high"]), scale=scale))
    if kind == "categorical":
        cat = pb.Categorical()
        for c in spec.get("choices", []):
            cat.choices.add().CopyFrom(json_format.ParseDict(c, struct_pb2.Value()))
        return pb.Parameter(name=name, categorical=cat)
    raise SpecError(f"search_space.{name}: type must be float, int or categorical, got {kind!r}")


def space_items(space: Any) -> list[tuple[str, Mapping[str, Any]]]:
    """Accept {name: spec}, [{name: ..., ...}] or {name: Optuna distribution}."""
    if isinstance(space, Mapping):
        return [(str(k), _param_dict(str(k), v)) for k, v in space.items()]
    if isinstance(space, list):
        return [(str(item["name"]), item) for item in space]
    raise SpecError("search_space must be a mapping of name to parameter or a list")


def _optuna_kind(v: Any) -> str | None:
    # By class name along the MRO, so optuna is never imported here and its deprecated
    # subclasses (UniformDistribution, IntLogUniformDistribution, ...) convert too.
    names = {c.__name__ for c in type(v).__mro__}
    for kind in ("FloatDistribution", "IntDistribution", "CategoricalDistribution"):
        if kind in names:
            return kind
    return None


def _param_dict(name: str, v: Any) -> Mapping[str, Any]:
    if isinstance(v, Mapping):
        return v
    kind = _optuna_kind(v)
    if kind == "CategoricalDistribution":
        return {"type": "categorical", "choices": list(v.choices)}
    if kind is None:
        raise SpecError(f"search_space.{name}: cannot read parameter {v!r}; give a mapping "
                        "such as {type: float, low: 0, high: 1} or an Optuna distribution")
    is_int = kind == "IntDistribution"
    step = getattr(v, "step", None)
    if step is not None and not (is_int and step == 1):
        # The wire API has no step, and a categorical grid would lose the order that model-
        # based samplers use, so this is the caller's choice to make, not a silent rewrite.
        raise SpecError(f"search_space.{name}: {v!r} has step={step}, which hpod's search "
                        "space cannot express (ranges are continuous floats or all integers "
                        "in [low, high]); drop the step, or pass hpod.client.spec.grid(dist) to "
                        f"search its {len(grid_values(v))} values as an unordered categorical")
    return {"type": "int" if is_int else "float", "low": int(v.low) if is_int else
            float(v.low), "high": int(v.high) if is_int else float(v.high), "log": bool(v.log)}


def grid_values(dist: Any) -> list[int | float]:
    """The values a stepped Optuna distribution can take: low, low + step, ... <= high."""
    if dist.step is None:
        raise SpecError(f"{dist!r} has no step, so it has no finite grid")
    if _optuna_kind(dist) == "IntDistribution":
        return list(range(int(dist.low), int(dist.high) + 1, int(dist.step)))
    low, step = Decimal(repr(dist.low)), Decimal(repr(dist.step))
    n = int((Decimal(repr(dist.high)) - low) / step + Decimal("1e-9"))
    # Decimal arithmetic, so 0.1-steps give 0.3 and not 0.30000000000000004.
    return [float(low + i * step) for i in range(n + 1)]


def grid(dist: Any) -> dict[str, Any]:
    """A stepped Optuna distribution as a categorical parameter over its grid values."""
    return {"type": "categorical", "choices": grid_values(dist)}


def int_params(spec: pb.StudySpec) -> set[str]:
    """Parameters whose values are integers: JSON carries them as doubles, so the SDK turns
    them back into ints (int ranges, and categoricals whose numeric choices are all whole,
    as the server reads them)."""
    out = set()
    for p in spec.search_space:
        kind = p.WhichOneof("domain")
        if kind == "int_range":
            out.add(p.name)
        elif kind == "categorical":
            nums = [c.number_value for c in p.categorical.choices
                    if c.WhichOneof("kind") == "number_value"]
            if nums and all(float(x).is_integer() for x in nums):
                out.add(p.name)
    return out


def build_spec(d: Mapping[str, Any]) -> pb.StudySpec:
    known = {"name", "trainer", "objective", "resource", "algorithm", "seed", "max_trials",
             "search_space", "trainer_settings", "max_retries"}
    unknown = sorted(set(d) - known)
    if unknown:
        raise SpecError(f"unknown spec field(s) {unknown}; known fields: {sorted(known)}")
    space = d.get("search_space")
    if space is None and d.get("trainer"):
        from hpod.trainers.base import get_trainer

        space = get_trainer(str(d["trainer"])).default_space()
    spec = pb.StudySpec(name=str(d.get("name", "")), trainer=str(d.get("trainer", "")),
                        seed=int(d.get("seed", 0)), max_trials=int(d.get("max_trials", 0)))
    spec.search_space.extend(parameter(n, p) for n, p in space_items(space or {}))
    obj = d.get("objective") or {}
    direction = str(obj.get("direction", "minimize")).lower()
    if direction not in ("minimize", "maximize"):
        raise SpecError("objective.direction must be minimize or maximize")
    spec.objective.CopyFrom(pb.Objective(metric=str(obj.get("metric", "")), direction=(
        pb.DIRECTION_MAXIMIZE if direction == "maximize" else pb.DIRECTION_MINIMIZE)))
    res = d.get("resource") or {}
    spec.resource.name = str(res.get("name", ""))
    spec.resource.max_resource = float(res.get("max_resource", 0))
    if "min_resource" in res:
        spec.resource.min_resource = float(res["min_resource"])
    if "eta" in res:
        spec.resource.eta = int(res["eta"])
    algo = d.get("algorithm") or {}
    if isinstance(algo, str):
        algo = {"name": algo}
    spec.algorithm.name = str(algo.get("name", ""))
    spec.algorithm.settings.CopyFrom(_struct(algo.get("settings")))
    spec.trainer_settings.CopyFrom(_struct(d.get("trainer_settings")))
    if "max_retries" in d:
        spec.max_retries = int(d["max_retries"])
    return spec
