"""Checks on a request before the server does any work that grows with it.

Everything here costs time linear in the request's size and nothing more: sizes are compared
with the server's limits first, so a huge or absurd request is refused before it is converted,
built into an algorithm or planned. A refusal is an :class:`EngineError` with the field named:
``invalid`` (INVALID_ARGUMENT) for a value that is wrong whatever the server, ``exhausted``
(RESOURCE_EXHAUSTED) for one above a limit this server sets (``server/options.py``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from google.protobuf import struct_pb2
from hpod.v1 import hpod_pb2 as pb

from ..engine import EngineError
from ..options import Limits

# A plan has at most this many rungs (brackets of Hyperband): log_eta(max/min resource) + 1.
# Beyond it the plan's trial counts have hundreds of digits and no study could run them; the
# bound is checked on the numbers alone, before any algorithm is built.
MAX_RUNGS = 40
# Resources travel as doubles and workers step through them one unit at a time.
MAX_RESOURCE = 1e15
# Int bounds go through JSON (google.protobuf.Struct holds doubles): beyond 2**53 a sampled
# integer would come back as a different one.
MAX_INT = 2**53
# Built-in trainers the server accepts without a registered worker, with the numeric settings
# whose range it checks. The server never imports them (trainers/ pulls in torch); a test
# keeps this list equal to the trainer registry. ``step_seconds`` is how long each step of the
# analytic trainers sleeps (demos, fault tests): an hour per step is already no demo.
BUILTIN_TRAINERS: dict[str, dict[str, tuple[float, float]]] = {
    "analytic": {"step_seconds": (0.0, 3600.0)},
    "scaling": {"step_seconds": (0.0, 3600.0)},
    "mlp": {}, "grokking": {}, "densenet": {}, "preact_resnet": {}, "mup_mlp": {},
}
# Trainer settings every trainer takes (trainers/_common.py SHARED_SETTINGS), whatever a
# worker declares.
SHARED_TRAINER_SETTINGS = frozenset({"data_dir"})
MAX_STRUCT_DEPTH = 32
MAX_REASON_CHARS = 64 * 1024  # FailJob.reason: room for a traceback
# Retries of a job lost with its worker: each costs a lease; beyond this a trial is broken.
MAX_RETRIES = 100


def invalid(field: str, what: str) -> EngineError:
    return EngineError("invalid", f"{field}: {what}")


def exhausted(field: str, what: str) -> EngineError:
    return EngineError("exhausted", f"{field}: {what}")


def short(text: str, n: int = 64) -> str:
    """``text`` for an error message: at most ``n`` characters, never the whole of a huge one."""
    return repr(text) if len(text) <= n else f"{text[:n]!r}... ({len(text)} characters)"


def clip(text: str, n: int = 64) -> str:
    """``text`` as it is, cut to ``n`` characters: for a name inside a field path or command."""
    return text if len(text) <= n else f"{text[:n]}..."


def name(value: str, field: str, limits: Limits, required: bool = False) -> None:
    """A name or id: bounded, so that it is never stored or echoed at any length."""
    if required and not value:
        raise invalid(field, "is required")
    if len(value) > limits.max_name_length:
        raise exhausted(field, f"is {len(value)} characters long; this server allows at most "
                        f"{limits.max_name_length}")


def finite(value: float, field: str, positive: bool = False) -> None:
    if not math.isfinite(value):
        raise invalid(field, f"must be a finite number, got {value}")
    if positive and value <= 0:
        raise invalid(field, f"must be > 0, got {value:g}")
    if value < 0:
        raise invalid(field, f"must be >= 0, got {value:g}")


# ---------------------------------------------------------------- structs


def _values(v: struct_pb2.Value, path: str, depth: int, limits: Limits
            ) -> Iterator[tuple[str, float]]:
    kind = v.WhichOneof("kind")
    if depth > MAX_STRUCT_DEPTH:
        raise invalid(path, f"is nested deeper than {MAX_STRUCT_DEPTH} levels")
    if kind == "number_value":
        yield path, v.number_value
    elif kind == "struct_value":
        yield from _struct_values(v.struct_value, path, depth + 1, limits)
    elif kind == "list_value":
        for i, item in enumerate(v.list_value.values):
            yield from _values(item, f"{path}[{i}]", depth + 1, limits)


def _struct_values(s: struct_pb2.Struct, path: str, depth: int, limits: Limits
                   ) -> Iterator[tuple[str, float]]:
    for key, v in s.fields.items():
        if len(key) > limits.max_name_length:
            raise exhausted(f"{path}.{clip(key)}", f"a key of {len(key)} characters; at most "
                            f"{limits.max_name_length}")
        yield from _values(v, f"{path}.{key}", depth, limits)


def struct_ok(s: struct_pb2.Struct, field: str, limits: Limits) -> None:
    """Keys bounded; no NaN or infinity (they have no JSON form), naming where they are."""
    for path, x in _struct_values(s, field, 0, limits):
        if not math.isfinite(x):
            raise invalid(path, f"must be a finite number, got {x}")


# ---------------------------------------------------------------- study specs


def spec(s: pb.StudySpec, limits: Limits) -> None:
    """Everything about a StudySpec that costs no more than reading it (CreateStudy and
    PlanStudy alike)."""
    size = s.ByteSize()
    if size > limits.max_spec_bytes:
        raise exhausted("spec", f"is {size} bytes; this server allows at most "
                        f"{limits.max_spec_bytes}: a smaller search space or fewer settings")
    for value, field in ((s.name, "spec.name"), (s.trainer, "spec.trainer"),
                         (s.objective.metric, "spec.objective.metric"),
                         (s.resource.name, "spec.resource.name"),
                         (s.algorithm.name, "spec.algorithm.name")):
        name(value, field, limits)
    _enum(s.objective.direction, pb.Direction, "spec.objective.direction")
    if s.HasField("max_retries") and not 0 <= s.max_retries <= MAX_RETRIES:
        raise invalid("spec.max_retries", f"must be from 0 to {MAX_RETRIES}, got "
                      f"{s.max_retries}")
    _space(s, limits)
    _resource(s.resource)
    struct_ok(s.algorithm.settings, "spec.algorithm.settings", limits)
    struct_ok(s.trainer_settings, "spec.trainer_settings", limits)
    _builtin_settings(s)


def _space(s: pb.StudySpec, limits: Limits) -> None:
    # Too many parameters is INVALID_ARGUMENT, as --max-parameters has always answered
    # (deploy/README.md); counted before any parameter is converted.
    if len(s.search_space) > limits.max_parameters:
        raise EngineError("invalid", f"search_space has {len(s.search_space)} parameters; "
                          f"this server allows at most {limits.max_parameters}")
    choices = 0
    for i, p in enumerate(s.search_space):
        name(p.name, f"spec.search_space[{i}].name", limits)
        where = f"search_space.{p.name or i}"
        kind = p.WhichOneof("domain")
        if kind in ("float_range", "int_range"):
            _enum(getattr(p, kind).scale, pb.Scale, f"{where}.scale")
        if kind == "float_range":
            lo, hi = p.float_range.low, p.float_range.high
            if not (math.isfinite(lo) and math.isfinite(hi) and math.isfinite(hi - lo)):
                raise invalid(where, f"low and high must be finite numbers whose difference "
                              f"is finite too (got low={lo}, high={hi})")
        elif kind == "int_range":
            lo, hi = p.int_range.low, p.int_range.high
            if abs(lo) > MAX_INT or abs(hi) > MAX_INT:
                raise invalid(where, f"int bounds must lie within +-2**53 (exact in JSON); got "
                              f"low={lo}, high={hi}")
        elif kind == "categorical":
            choices += len(p.categorical.choices)
            for j, c in enumerate(p.categorical.choices):
                if c.WhichOneof("kind") == "number_value" and not math.isfinite(c.number_value):
                    raise invalid(f"{where}.choices[{j}]",
                                  f"must be a finite number, got {c.number_value}")
                if c.WhichOneof("kind") in ("struct_value", "list_value"):
                    raise invalid(f"{where}.choices[{j}]",
                                  "a choice is a string, number or boolean")
                if len(c.string_value) > limits.max_name_length:
                    raise exhausted(f"{where}.choices[{j}]", f"is {len(c.string_value)} "
                                    f"characters; at most {limits.max_name_length}")
    if choices > limits.max_choices:
        raise exhausted("spec.search_space", f"has {choices} categorical choices in all; this "
                        f"server allows at most {limits.max_choices}")


def _enum(value: int, enum: Any, field: str) -> None:
    """Proto3 enums are open: a number the .proto does not define arrives as it is."""
    if value not in enum.values():
        raise invalid(field, f"{value} is not one of {', '.join(enum.keys())}")


def _resource(r: pb.ResourceSpec) -> None:
    for field, value in (("max_resource", r.max_resource), ("min_resource", r.min_resource)):
        if not math.isfinite(value) or value > MAX_RESOURCE:
            raise invalid(f"resource.{field}", f"must be a finite number <= {MAX_RESOURCE:g}, "
                          f"got {value}")
    top = r.max_resource
    low = r.min_resource if r.HasField("min_resource") else 1.0
    eta = r.eta if r.HasField("eta") else 3
    if top <= 0 or low <= 0 or eta < 2 or low > top:
        return  # the algorithm's own checks say what is wrong, with the field
    rungs = math.log(top / low) / math.log(eta) + 1 if top / low < math.inf else math.inf
    if rungs > MAX_RUNGS + 1e-9:
        raise invalid("resource.min_resource", f"max_resource / min_resource = "
                      f"{top / low:.3g} gives {rungs:.0f} rungs at eta {eta}; at most "
                      f"{MAX_RUNGS} rungs: raise min_resource or eta, or lower max_resource")


def _builtin_settings(s: pb.StudySpec) -> None:
    for key, (lo, hi) in BUILTIN_TRAINERS.get(s.trainer, {}).items():
        v = s.trainer_settings.fields.get(key)
        if v is None:
            continue
        if v.WhichOneof("kind") != "number_value" or not lo <= v.number_value <= hi:
            raise invalid(f"spec.trainer_settings.{key}", f"must be a number from {lo:g} to "
                          f"{hi:g} for trainer {s.trainer!r}")


def trainer(s: pb.StudySpec, declared: dict[str, list[str] | None]) -> None:
    """The trainer is built in or declared by a registered worker; its settings are ones that
    worker declared. ``declared``: trainer name -> the settings its workers accept, or None
    when no live worker published them (older workers)."""
    if not s.trainer:
        return
    if s.trainer not in declared and s.trainer not in BUILTIN_TRAINERS:
        raise invalid("spec.trainer", f"no registered worker has trainer {short(s.trainer)} "
                      f"and it is not built in ({', '.join(sorted(BUILTIN_TRAINERS))}); start "
                      f"a worker for it first: `hpod worker --trainer {clip(s.trainer)}`")
    accepted = declared.get(s.trainer)
    if accepted is None:
        return
    for key in s.trainer_settings.fields:
        if key not in accepted and key not in SHARED_TRAINER_SETTINGS:
            raise invalid(f"spec.trainer_settings.{clip(key)}", f"trainer "
                          f"{short(s.trainer)} does not take this setting; it takes "
                          f"{sorted(accepted)}")


# ---------------------------------------------------------------- job calls


def job_call(study_id: str, job_id: str, limits: Limits) -> None:
    name(study_id, "study_id", limits, required=True)
    name(job_id, "job_id", limits, required=True)


def reason(text: str) -> None:
    if len(text) > MAX_REASON_CHARS:
        raise exhausted("reason", f"is {len(text)} characters; at most {MAX_REASON_CHARS}: "
                        "send the end of the traceback")
