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
    """The spec is malformed; the message names the file, line and field when it knows them."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class SpecFile(dict):
    """A spec read from a file: the mapping, plus where it came from and the line of each
    field (dotted path -> 1-based line), so an error can say ``spec.yaml:7: resource...``."""

    def __init__(self, data: Mapping[str, Any], path: Path, lines: dict[str, int]) -> None:
        super().__init__(data)
        self.path = path
        self.lines = lines

    def where(self, field: str) -> str:
        """``path:line`` of ``field`` or of its nearest parent that has a line."""
        parts = field.split(".") if field else []
        while parts:
            line = self.lines.get(".".join(parts))
            if line:
                return f"{self.path}:{line}"
            parts.pop()
        return str(self.path)


def load_spec_file(path: str | Path) -> SpecFile:
    p = Path(path)
    if not p.exists():
        raise SpecError(f"spec file {p} does not exist")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"{p}: cannot read the spec: {e}") from None
    if p.suffix in (".yaml", ".yml"):
        data, lines = _load_yaml(p, text)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise SpecError(f"{p}:{e.lineno}:{e.colno}: not valid JSON: {e.msg}") from None
        lines = {}
    if not isinstance(data, dict):
        raise SpecError(f"{p}: a spec must be a mapping at the top level "
                        f"(got {type(data).__name__})")
    return SpecFile(data, p, lines)


def _load_yaml(p: Path, text: str) -> tuple[Any, dict[str, int]]:
    import yaml

    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{p}:{mark.line + 1}:{mark.column + 1}" if mark else str(p)
        what = e.problem or e.context or "malformed YAML"
        raise SpecError(f"{where}: not valid YAML: {what} (check the indentation and the "
                        "colons above this line)") from None
    except yaml.YAMLError as e:
        raise SpecError(f"{p}: not valid YAML: {e}") from None
    lines: dict[str, int] = {}
    _node_lines(node, "", lines)
    return data, lines


def _node_lines(node: Any, prefix: str, out: dict[str, int]) -> None:
    import yaml

    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            path = f"{prefix}.{key.value}" if prefix else str(key.value)
            out[path] = key.start_mark.line + 1
            _node_lines(value, path, out)


def _get(d: Mapping[str, Any], key: str, field: str, conv: Any, kind: str,
         default: Any = None) -> Any:
    """``conv(d[key])`` or ``default``; a value that does not convert is a SpecError naming
    ``field`` and what was expected."""
    if key not in d or d[key] is None:
        return default
    raw = d[key]
    try:
        if isinstance(raw, bool) or (kind == "a whole number" and isinstance(raw, float)
                                     and not raw.is_integer()):
            raise ValueError
        return conv(raw)
    except (TypeError, ValueError):
        raise SpecError(f"{field} must be {kind}, got {raw!r}", field) from None


def _mapping(d: Mapping[str, Any], key: str, field: str = "") -> Mapping[str, Any]:
    field = field or key
    v = d.get(key) or {}
    if not isinstance(v, Mapping):
        raise SpecError(f"{field} must be a mapping (e.g. {key}: {{...}}), got {v!r}", field)
    return v


def _struct(d: Mapping[str, Any] | None, field: str = "") -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    try:
        s.update(dict(d or {}))
    except (TypeError, ValueError) as e:
        raise SpecError(f"{field}: only JSON values (numbers, strings, booleans, lists and "
                        f"mappings) are allowed: {e}", field) from None
    return s


def parameter(name: str, spec: Mapping[str, Any]) -> pb.Parameter:
    field = f"search_space.{name}"
    if not isinstance(spec, Mapping):
        raise SpecError(f"{field} must be a mapping such as {{type: float, low: 0, high: 1}}, "
                        f"got {spec!r}", field)
    kind = spec.get("type")
    scale = pb.SCALE_LOG if spec.get("log") else pb.SCALE_LINEAR
    if kind in ("float", "int"):
        conv, what = (float, "a number") if kind == "float" else (int, "a whole number")
        for bound in ("low", "high"):
            if bound not in spec:
                raise SpecError(f"{field}.{bound} is missing: a {kind} parameter needs low and "
                                "high", f"{field}.{bound}")
        low = _get(spec, "low", f"{field}.low", conv, what)
        high = _get(spec, "high", f"{field}.high", conv, what)
        if kind == "float":
            return pb.Parameter(name=name, float_range=pb.FloatRange(low=low, high=high,
                                                                     scale=scale))
        return pb.Parameter(name=name, int_range=pb.IntRange(low=low, high=high, scale=scale))
    if kind == "categorical":
        cat = pb.Categorical()
        for c in spec.get("choices", []):
            cat.choices.add().CopyFrom(json_format.ParseDict(c, struct_pb2.Value()))
        return pb.Parameter(name=name, categorical=cat)
    raise SpecError(f"{field}.type must be float, int or categorical, got {kind!r}",
                    f"{field}.type")


def space_items(space: Any) -> list[tuple[str, Mapping[str, Any]]]:
    """Accept {name: spec}, [{name: ..., ...}] or {name: Optuna distribution}."""
    if isinstance(space, Mapping):
        return [(str(k), _param_dict(str(k), v)) for k, v in space.items()]
    if isinstance(space, list):
        if not all(isinstance(item, Mapping) and "name" in item for item in space):
            raise SpecError("search_space: each item of a list needs a name", "search_space")
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


KNOWN_FIELDS = ("name", "trainer", "objective", "resource", "algorithm", "seed", "max_trials",
                "search_space", "trainer_settings", "max_retries")
NESTED_FIELDS = {"objective": ("metric", "direction"),
                 "resource": ("name", "max_resource", "min_resource", "eta"),
                 "algorithm": ("name", "settings")}


def build_spec(d: Mapping[str, Any]) -> pb.StudySpec:
    """The wire spec of ``d``; a mistake is a SpecError whose message starts with the file
    and line when ``d`` came from :func:`load_spec_file`."""
    try:
        return _build_spec(d)
    except SpecError as e:
        if isinstance(d, SpecFile) and not str(e).startswith(str(d.path)):
            raise SpecError(f"{d.where(e.field)}: {e}", e.field) from None
        raise


def _check_fields(d: Mapping[str, Any]) -> None:
    for key in d:
        if key not in KNOWN_FIELDS:
            raise SpecError(f"unknown field {key!r}; known fields: {', '.join(KNOWN_FIELDS)}",
                            str(key))
    for parent, known in NESTED_FIELDS.items():
        sub = d.get(parent)
        for key in sub if isinstance(sub, Mapping) else ():
            if key not in known:
                raise SpecError(f"unknown field {parent}.{key}; {parent} takes "
                                f"{', '.join(known)}", f"{parent}.{key}")


def _default_space(trainer: str) -> Any:
    try:
        from hpod.trainers.base import get_trainer

        return get_trainer(trainer).default_space()
    except KeyError as e:
        raise SpecError(f"trainer: {e.args[0]}; or give search_space explicitly",
                        "trainer") from None
    except ImportError as e:
        raise SpecError(f"trainer: the default search space of {trainer!r} needs the trainer "
                        f"installed here ({e}); give search_space explicitly or install "
                        "hpod[worker]", "trainer") from None


def _build_spec(d: Mapping[str, Any]) -> pb.StudySpec:
    _check_fields(d)
    space = d.get("search_space")
    if space is None and d.get("trainer"):
        space = _default_space(str(d["trainer"]))
    spec = pb.StudySpec(name=str(d.get("name", "")), trainer=str(d.get("trainer", "")),
                        seed=_get(d, "seed", "seed", int, "a whole number", 0),
                        max_trials=_get(d, "max_trials", "max_trials", int, "a whole number",
                                        0))
    spec.search_space.extend(parameter(n, p) for n, p in space_items(space or {}))
    obj = _mapping(d, "objective")
    direction = str(obj.get("direction", "minimize")).lower()
    if direction not in ("minimize", "maximize"):
        raise SpecError(f"objective.direction must be minimize or maximize, got "
                        f"{obj.get('direction')!r}", "objective.direction")
    spec.objective.CopyFrom(pb.Objective(metric=str(obj.get("metric", "")), direction=(
        pb.DIRECTION_MAXIMIZE if direction == "maximize" else pb.DIRECTION_MINIMIZE)))
    res = _mapping(d, "resource")
    spec.resource.name = str(res.get("name", ""))
    spec.resource.max_resource = _get(res, "max_resource", "resource.max_resource", float,
                                      "a number", 0.0)
    if res.get("min_resource") is not None:
        spec.resource.min_resource = _get(res, "min_resource", "resource.min_resource", float,
                                          "a number")
    if res.get("eta") is not None:
        spec.resource.eta = _get(res, "eta", "resource.eta", int, "a whole number")
    algo = d.get("algorithm") or {}
    if isinstance(algo, str):
        algo = {"name": algo}
    if not isinstance(algo, Mapping):
        raise SpecError(f"algorithm must be a name or a mapping, got {algo!r}", "algorithm")
    spec.algorithm.name = str(algo.get("name", ""))
    spec.algorithm.settings.CopyFrom(_struct(_mapping(algo, "settings", "algorithm.settings"),
                                              "algorithm.settings"))
    spec.trainer_settings.CopyFrom(_struct(_mapping(d, "trainer_settings"), "trainer_settings"))
    if d.get("max_retries") is not None:
        spec.max_retries = _get(d, "max_retries", "max_retries", int, "a whole number")
    return spec
