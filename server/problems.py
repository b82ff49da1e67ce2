"""Benchmark problems for the simulator and ``hpod bench compare``: known multi-fidelity
functions with a learning-curve shape and a cost model, so hours of cluster time run in seconds.

The protocol (:class:`Problem`) is small on purpose, so a user can pass their own with
``--problem module:attribute``:

* ``name``: a short identifier;
* ``space``: the search space as :meth:`SearchSpace.to_dict` gives it (a list of dicts);
* ``min_resource``, ``max_resource``: the resource range (epochs); ``eta`` a default;
* ``evaluate(config, resource) -> float``: the metric after training ``config`` to
  ``resource`` (lower is better), noise-free so that a simulation is deterministic;
* ``cost(config, resource) -> float``: seconds to train ``config`` from 0 to ``resource``
  (cumulative: a segment r0 -> r1 takes ``cost(c, r1) - cost(c, r0)``, the resume model);
* ``evaluate_steps(config, resources) -> list[float]`` (optional): ``evaluate`` at each
  resource in one call, for the simulator's speed;
* ``optimum``: the infimum of ``evaluate`` over configurations and resources, or ``None``.

``attribute`` may be such an object or a callable that returns one (e.g. a class).

The BoTorch multi-fidelity functions are computed here in plain Python (the same formulas as
``botorch.test_functions.multi_fidelity``, checked against it in the tests): a call per
learning-curve point through torch costs ~50x more and the simulator makes millions of them.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Problem(Protocol):
    name: str
    space: list[dict[str, Any]]
    min_resource: float
    max_resource: float
    eta: int
    optimum: float | None

    def evaluate(self, config: Mapping[str, Any], resource: float) -> float: ...

    def cost(self, config: Mapping[str, Any], resource: float) -> float: ...


def _float(name: str, low: float, high: float, log: bool = False) -> dict[str, Any]:
    return {"name": name, "type": "float", "low": low, "high": high, "log": log}


def curve_gap(resource: float, r_min: float, r_max: float, speed: float) -> float:
    """A power-law learning-curve term: 1 at ``r_min``, 0 at ``r_max``, convex in between.
    ``speed`` (> 0) is the power-law exponent: larger converges faster."""
    if r_max <= r_min:
        return 0.0
    top = (r_max / r_min) ** speed - 1.0
    return ((r_max / resource) ** speed - 1.0) / top


# --- the analytic Branin-curve trainer, as a problem --------------------------------------


@dataclass
class BraninCurve:
    """``trainers/analytic.py``'s noise-free ``value()``: Branin plus a power-law curve whose
    amplitude and speed depend on the configuration (curves cross). An epoch costs 30 s to
    90 s, growing with ``x2`` (think of it as the width of the model)."""

    name: str = "branin-curve"
    min_resource: float = 1.0
    max_resource: float = 81.0
    eta: int = 3
    space: list[dict[str, Any]] = field(default_factory=lambda: [
        _float("x1", -5.0, 10.0), _float("x2", 0.0, 15.0), _float("lr", 1e-4, 1.0, True)])

    def __post_init__(self) -> None:
        # Imported here: trainers/ pulls in torch, which only this problem needs.
        from hpod.trainers import analytic

        self._value: Callable[[Mapping[str, Any], float], float] = analytic.value
        self._analytic = analytic
        self.optimum: float | None = analytic.optimum

    def evaluate(self, config: Mapping[str, Any], resource: float) -> float:
        return self._value(config, max(resource, 1.0))

    def evaluate_steps(self, config: Mapping[str, Any], resources: list[float]) -> list[float]:
        """``evaluate`` at each resource, with the configuration's terms computed once (the
        same arithmetic as ``analytic.value``, so the same floats)."""
        analytic = self._analytic
        a, b = analytic.curve_params(config)
        base = analytic.branin(float(config["x1"]), float(config["x2"]))
        return [base + a * max(r, 1.0) ** -b for r in resources]

    def cost(self, config: Mapping[str, Any], resource: float) -> float:
        return resource * (30.0 + 4.0 * float(config["x2"]))


# --- BoTorch's augmented Branin and Hartmann-6 --------------------------------------------

_B, _C, _T = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)


def augmented_branin(x1: float, x2: float, s: float) -> float:
    """BoTorch's AugmentedBranin at fidelity ``s`` in [0, 1]; min 0.397887 at every s."""
    t1 = x2 - (_B - 0.1 * (1 - s)) * x1 * x1 + _C * x1 - 6
    return t1 * t1 + 10 * (1 - _T) * math.cos(x1) + 10


_ALPHA = (1.0, 1.2, 3.0, 3.2)
_A = ((10, 3, 17, 3.5, 1.7, 8), (0.05, 10, 17, 0.1, 8, 14),
      (3, 3.5, 1.7, 10, 17, 8), (17, 8, 0.05, 10, 0.1, 14))
_P = tuple(tuple(1e-4 * p for p in row) for row in (
    (1312, 1696, 5569, 124, 8283, 5886), (2329, 4135, 8307, 3736, 1004, 9991),
    (2348, 1451, 3522, 2883, 3047, 6650), (4047, 8828, 8732, 5743, 1091, 381)))
HARTMANN6_MIN = -3.3223680114155147


def augmented_hartmann6(x: tuple[float, ...], s: float) -> float:
    """BoTorch's AugmentedHartmann (6 parameters + fidelity ``s``): a lower fidelity only
    shrinks the first well's weight, so every s >= its minimum -3.32237 (at s = 1)."""
    total = 0.0
    for i in range(4):
        inner = sum(a * (xj - p) ** 2 for a, xj, p in zip(_A[i], x, _P[i], strict=True))
        alpha = _ALPHA[0] - 0.1 * (1 - s) if i == 0 else _ALPHA[i]
        total -= alpha * math.exp(-inner)
    return total


@dataclass
class _Augmented:
    """Shared shape: metric = f(x, s) + amplitude · curve_gap(r), fidelity s = r / R. The gap
    (a power-law learning curve, zero at R) gives the function a training-curve shape; its
    speed depends on one parameter so that curves cross and early rankings mislead a little."""

    name: str
    space: list[dict[str, Any]]
    amplitude: float
    optimum: float | None
    min_resource: float = 1.0
    max_resource: float = 81.0
    eta: int = 3

    def _f(self, config: Mapping[str, Any], s: float) -> float:
        raise NotImplementedError

    def _speed(self, config: Mapping[str, Any]) -> float:
        raise NotImplementedError

    def _unit_cost(self, config: Mapping[str, Any]) -> float:
        raise NotImplementedError

    def evaluate(self, config: Mapping[str, Any], resource: float) -> float:
        r = min(max(resource, self.min_resource), self.max_resource)
        gap = curve_gap(r, self.min_resource, self.max_resource, self._speed(config))
        return self._f(config, r / self.max_resource) + self.amplitude * gap

    def cost(self, config: Mapping[str, Any], resource: float) -> float:
        return resource * self._unit_cost(config)


@dataclass
class BraninMF(_Augmented):
    """AugmentedBranin; the curve speed follows x2, an epoch costs 20 s to 80 s with x1."""

    name: str = "branin-mf"
    space: list[dict[str, Any]] = field(default_factory=lambda: [
        _float("x1", -5.0, 10.0), _float("x2", 0.0, 15.0)])
    amplitude: float = 20.0
    optimum: float | None = 0.397887357729738

    def _f(self, config: Mapping[str, Any], s: float) -> float:
        return augmented_branin(float(config["x1"]), float(config["x2"]), s)

    def _speed(self, config: Mapping[str, Any]) -> float:
        return 0.3 + 0.6 * float(config["x2"]) / 15.0

    def _unit_cost(self, config: Mapping[str, Any]) -> float:
        return 20.0 + 4.0 * (float(config["x1"]) + 5.0)


HARTMANN_NAMES = tuple(f"x{i}" for i in range(1, 7))


@dataclass
class Hartmann6MF(_Augmented):
    """AugmentedHartmann on [0, 1]^6; the curve speed follows x6, an epoch costs 10 s to 70 s
    growing with x1 + x2 (a bigger model)."""

    name: str = "hartmann6-mf"
    space: list[dict[str, Any]] = field(default_factory=lambda: [
        _float(n, 0.0, 1.0) for n in HARTMANN_NAMES])
    amplitude: float = 1.0
    optimum: float | None = HARTMANN6_MIN

    def _f(self, config: Mapping[str, Any], s: float) -> float:
        return augmented_hartmann6(tuple(float(config[n]) for n in HARTMANN_NAMES), s)

    def _speed(self, config: Mapping[str, Any]) -> float:
        return 0.3 + 0.6 * float(config["x6"])

    def _unit_cost(self, config: Mapping[str, Any]) -> float:
        return 10.0 + 30.0 * (float(config["x1"]) + float(config["x2"]))


PROBLEMS: dict[str, Callable[[], Problem]] = {
    "branin-curve": BraninCurve,
    "branin-mf": BraninMF,
    "hartmann6-mf": Hartmann6MF,
}


def get_problem(name: str) -> Problem:
    """A built-in problem by name, or ``module:attribute`` for a user's own."""
    if ":" in name:
        module, _, attr = name.partition(":")
        obj = getattr(importlib.import_module(module), attr)
        # A class or factory is called; an object that already evaluates is the problem.
        problem = obj() if isinstance(obj, type) or not hasattr(obj, "evaluate") else obj
    elif name in PROBLEMS:
        problem = PROBLEMS[name]()
    else:
        raise ValueError(f"unknown problem {name!r}; choose one of {sorted(PROBLEMS)} or "
                         "give module:attribute")
    missing = [a for a in ("name", "space", "max_resource", "evaluate", "cost")
               if not hasattr(problem, a)]
    if missing:
        raise ValueError(f"problem {name!r} lacks {missing}; see hpod.server.problems.Problem")
    return problem
