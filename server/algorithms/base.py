"""The algorithm interface: what every scheduler, sampler and search policy implements.

Contract (see DESIGN.md, "Algorithm interface"):

* plain Python, no I/O, no clock, no threads, no global RNG: every random draw goes through a
  ``numpy.random.Generator`` derived from the study seed;
* deterministic: the same constructor arguments and the same sequence of calls give the same
  answers, so the service can persist a study as a snapshot plus the log of calls since;
* metrics arrive already normalised to *lower is better* (the service flips a maximised metric
  once, at the boundary);
* ``state()`` returns a JSON-safe dict and ``restore(state)`` continues exactly from it.

A *scheduler* (Hyperband, ASHA, ...) decides how far each trial trains; a *sampler* (random,
CQR, ...) decides which configuration a new trial gets. Schedulers own a sampler. Both are
registered by name so the service can build a study's algorithm from its settings.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np

from .space import SearchSpace


class SettingsError(ValueError):
    """Invalid algorithm or resource settings. ``field`` names the setting, for the user."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class PreconditionError(RuntimeError):
    """An operation is valid only in another state of the study (FAILED_PRECONDITION), e.g.
    raising the maximum resource before the current Hyperband run is complete."""


class TransientAlgorithmError(RuntimeError):
    """Raise this (instead of any other exception) when a call may succeed if retried, e.g. a
    numerical fit that did not converge this time. The service rebuilds the study without the
    input and answers the caller UNAVAILABLE; any other exception fails the study for good
    (its state becomes FAILED with the message)."""


class Decision(str, enum.Enum):
    """The answer to a learning-curve point."""

    CONTINUE = "continue"
    STOP = "stop"


class Status(str, enum.Enum):
    """How a job ended, as the algorithm is told."""

    COMPLETED = "completed"
    FAILED = "failed"  # the trainer raised: the trial is broken, never retried
    LOST = "lost"  # the worker vanished and the service gave up retrying the job


@dataclass(frozen=True)
class Job:
    """One bounded segment of one trial: train ``trial_id`` from ``from_resource`` to
    ``to_resource``, resuming from the checkpoint at ``from_resource`` when it is > 0.

    ``config`` is set for every job (the service stores it with the trial the first time).
    ``bracket`` and ``rung`` are informational (events, plots); ``None`` where meaningless.
    """

    trial_id: int
    config: dict[str, Any]
    from_resource: float
    to_resource: float
    bracket: int | None = None
    rung: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Job:
        return cls(**d)


@dataclass(frozen=True)
class Outcome:
    """The end of a job. ``value`` is the metric at ``resource`` (lower is better); it is
    ``None`` unless ``status`` is COMPLETED. ``cost`` is what the segment cost (device seconds
    by default)."""

    status: Status
    value: float | None = None
    resource: float | None = None
    cost: float | None = None


@dataclass(frozen=True)
class Rung:
    n: int  # configurations evaluated at this rung
    r: float  # resource each of them reaches


@dataclass(frozen=True)
class Bracket:
    s: int
    rungs: tuple[Rung, ...]

    @property
    def budget(self) -> float:
        return sum(r.n * r.r for r in self.rungs)


@dataclass(frozen=True)
class Plan:
    """A dry run of a study. ``total_resource`` counts every rung in full (no checkpoint
    reuse), as the papers do; ``incremental_resource`` is what a study that resumes promoted
    trials from their checkpoints actually trains. ``max_trials`` is ``None`` when unbounded."""

    brackets: tuple[Bracket, ...] = ()
    total_resource: float | None = None
    incremental_resource: float | None = None
    max_trials: int | None = None
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "brackets": [
                {"s": b.s, "rungs": [{"n": r.n, "r": _num(r.r)} for r in b.rungs]}
                for b in self.brackets
            ],
            "total_resource": _num(self.total_resource),
        }


def _num(x: float | None) -> float | int | None:
    """Integral floats print as ints in JSON plans (81, not 81.0)."""
    if x is None:
        return None
    return int(x) if float(x).is_integer() else x


@dataclass(frozen=True)
class Resource:
    """The study's resource settings. ``min_resource`` <= ``max_resource``; ``eta`` >= 2."""

    max_resource: float
    min_resource: float = 1.0
    eta: int = 3
    name: str = "epoch"

    def check(self) -> None:
        if not self.max_resource > 0:
            raise SettingsError("resource.max_resource", "must be > 0")
        if not self.min_resource > 0:
            raise SettingsError("resource.min_resource", "must be > 0")
        if self.min_resource > self.max_resource:
            raise SettingsError(
                "resource.min_resource",
                f"min resource ({self.min_resource:g}) is greater than max resource "
                f"({self.max_resource:g}); lower min_resource or raise max_resource",
            )
        if int(self.eta) != self.eta or self.eta < 2:
            raise SettingsError(
                "resource.eta", f"eta must be a whole number >= 2 (got {self.eta}); 3 is usual"
            )


@dataclass
class Context:
    """What an algorithm is built from. ``settings`` holds the algorithm's own options, as the
    user gave them (unknown keys must be rejected with a SettingsError)."""

    space: SearchSpace
    resource: Resource
    seed: int
    settings: Mapping[str, Any] = field(default_factory=dict)
    max_trials: int | None = None


@dataclass(frozen=True)
class SuggestContext:
    """What a sampler is told when asked for a new trial's configuration: enough to model the
    fidelity (BOHB-, DEHB- or multi-fidelity-CQR-style proposals).

    ``bracket`` is the Hyperband bracket the trial joins (0 where there are none), ``rung``
    the rung its first job ends at (bracket-local, 0 for every scheduler here), ``resource``
    the resource that first job trains to (where the trial is first judged), ``pending`` the
    configurations of running trials that have no result yet (empty for samplers that declare
    ``uses_pending = False``)."""

    trial_id: int
    bracket: int = 0
    rung: int = 0
    resource: float = 0.0
    pending: Sequence[Mapping[str, Any]] = ()


class Sampler(abc.ABC):
    """Chooses the configuration of each new trial. Told every learning-curve point."""

    name: str = ""
    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    # False for samplers that ignore ``pending``: schedulers then skip building that list, a
    # scan of their running trials per new trial.
    uses_pending: bool = True

    @abc.abstractmethod
    def suggest(self, ctx: SuggestContext) -> dict[str, Any]:
        """A configuration for new trial ``ctx.trial_id`` (see :class:`SuggestContext`)."""

    def observe(self, trial_id: int, config: Mapping[str, Any], resource: float,  # noqa: B027
                value: float) -> None:
        """A learning-curve point of a trial (lower is better)."""

    def on_segment(  # noqa: B027 (optional hook: only cost-aware samplers use it)
        self, trial_id: int, config: Mapping[str, Any], from_resource: float, resource: float,
        value: float, cost: float | None,
    ) -> None:
        """A job of the trial ended: it trained from ``from_resource`` to ``resource`` and
        reached ``value``, spending ``cost`` (the study's cost source, device seconds by
        default; ``None`` when nothing was measured). Called after ``observe`` of that point
        and before ``on_trial_end``. ASHA and asynchronous Hyperband call it (in promotion mode
        a job is one rung, so a cost-aware sampler sees what each rung cost); a scheduler that
        does not leaves its samplers to their ``observe`` points."""

    def on_trial_end(  # noqa: B027 (optional hook: samplers without a model ignore it)
        self, trial_id: int, config: Mapping[str, Any], status: Status
    ) -> None:
        """A trial will get no more resource (completed, stopped, failed or lost)."""

    def adopt_config(self, trial_id: int, config: Mapping[str, Any]) -> None:  # noqa: B027
        """Trial ``trial_id`` runs ``config``, not what :meth:`suggest` just returned for it
        (see :meth:`Algorithm.adopt_config`). Only a sampler that keeps its own copy of a
        proposal has anything to do."""

    @abc.abstractmethod
    def state(self) -> dict[str, Any]: ...

    @abc.abstractmethod
    def restore(self, state: Mapping[str, Any]) -> None: ...


class Capability(str, enum.Enum):
    """An optional ability an algorithm or sampler declares in its ``capabilities``; the
    service asks for it through :func:`deepening` and :func:`pareto_source`, never by probing
    attributes. Registration checks that a class declares exactly the capabilities whose
    members it has (:data:`CAPABILITY_MEMBERS`)."""

    DEEPENING = "deepening"  # the maximum resource can be raised (ID-HB)
    PARETO = "pareto"  # keeps a cost/value Pareto front and scaling fits (CARBS)
    FIDELITY = "fidelity"  # learns how far low resources can be trusted, logs its decisions


class Deepening(Protocol):
    @property
    def max_resource(self) -> float:
        """The current maximum resource (it grows with each raise)."""

    def raise_max_resource(self) -> None:
        """R -> eta*R; PreconditionError while the current run is not complete."""


class ParetoSource(Protocol):
    def pareto_front(self) -> list[tuple[int, float, float]]:
        """(representative trial, cost, value) per front point, cheapest first."""

    def pareto_groups(self) -> list[list[int]]:
        """The trials behind each front point."""

    def pareto_configs(self) -> list[dict[str, Any]]:
        """The configuration (with its resource, if any) of each front point."""

    def scaling_fit(self) -> dict[str, dict[str, Any]]:
        """Per parameter: how its best value scales with cost."""


class FidelitySource(Protocol):
    def decision_log(self) -> list[dict[str, Any]]:
        """Each new trial's bracket and why: ``trial``, ``bracket``, ``start_resource``,
        ``why``, oldest first."""

    def fidelity_report(self) -> dict[str, Any]:
        """``trust`` (per level: ``resource``, ``rho``, ``against``, ``pairs``),
        ``bracket_start`` and ``bracket_weights``."""


CAPABILITY_MEMBERS: dict[Capability, tuple[str, ...]] = {
    Capability.DEEPENING: ("max_resource", "raise_max_resource"),
    Capability.PARETO: ("pareto_front", "pareto_groups", "pareto_configs", "scaling_fit"),
    Capability.FIDELITY: ("decision_log", "fidelity_report"),
}


def check_capabilities(cls: type) -> None:
    """A class declares a capability iff it has every member of it (TypeError otherwise), so
    a capability is never half implemented nor silently undeclared."""
    declared = frozenset(getattr(cls, "capabilities", ()))
    for cap, members in CAPABILITY_MEMBERS.items():
        have = [m for m in members if hasattr(cls, m)]
        if cap in declared and len(have) < len(members):
            missing = sorted(set(members) - set(have))
            raise TypeError(f"{cls.__name__} declares {cap.value} but lacks {missing}")
        if cap not in declared and have:
            raise TypeError(f"{cls.__name__} has {have} but does not declare "
                            f"Capability.{cap.name} in its capabilities")


class Algorithm(abc.ABC):
    """One study's policy. The service calls, in any interleaving:

    * ``next_jobs(free)`` when ``free`` workers could take work: return at most ``free`` jobs
      (fewer, or none, when nothing can run yet, e.g. a synchronous rung is waiting);
    * ``on_progress(trial, resource, value)`` for each learning-curve point, in increasing
      resource per trial; answer CONTINUE or STOP (STOP ends the running job early);
    * ``on_job_end(job, outcome)`` once per job handed out.
    """

    name: str = ""
    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    sampler: Sampler | None = None  # the sampler a scheduler owns, if any

    @abc.abstractmethod
    def next_jobs(self, free: int) -> list[Job]: ...

    @abc.abstractmethod
    def on_progress(self, trial_id: int, resource: float, value: float) -> Decision: ...

    @abc.abstractmethod
    def on_job_end(self, job: Job, outcome: Outcome) -> None: ...

    @abc.abstractmethod
    def plan(self) -> Plan: ...

    def finalized(self) -> list[int]:
        """Trials the latest ``on_job_end`` decided will get no more resource although their
        last job completed below the maximum resource: paused trials that a synchronous rung
        dropped (Hyperband, ID-HB). The service reads it right after each ``on_job_end`` and
        turns those PAUSED trials into COMPLETED ones. Only the latest call's decisions are
        kept (nothing accumulates, nothing is saved). Default: none, for schedulers that
        decide nothing about paused trials (ASHA can always still promote one)."""
        return []

    @abc.abstractmethod
    def done(self) -> bool:
        """True when the algorithm will hand out no more jobs and none is outstanding."""

    @abc.abstractmethod
    def best(self) -> tuple[int, float] | None:
        """(trial id, value) of the incumbent by the algorithm's documented rule, or None."""

    def adopt_config(self, trial_id: int, config: Mapping[str, Any]) -> bool:
        """The new trial ``trial_id`` of the latest ``next_jobs`` runs ``config``, not the
        configuration that call proposed for it. The service calls it when it replays a
        logged ask on another machine or library release: a model fit rounds differently
        there, so a proposal can differ from the one the live study handed out, and the
        workers train the logged one. Returns False if the algorithm cannot take it (it
        keeps its own copy; the service's records still hold the logged one)."""
        return False

    @abc.abstractmethod
    def state(self) -> dict[str, Any]: ...

    @abc.abstractmethod
    def restore(self, state: Mapping[str, Any]) -> None: ...


# --- registries ---------------------------------------------------------------------------

AlgorithmFactory = Callable[[Context], Algorithm]
SamplerFactory = Callable[[Context, np.random.Generator], Sampler]

ALGORITHMS: dict[str, AlgorithmFactory] = {}
SAMPLERS: dict[str, SamplerFactory] = {}


def register_algorithm(name: str) -> Callable[[AlgorithmFactory], AlgorithmFactory]:
    def deco(factory: AlgorithmFactory) -> AlgorithmFactory:
        if isinstance(factory, type):
            check_capabilities(factory)
        ALGORITHMS[name] = factory
        return factory

    return deco


def register_sampler(name: str) -> Callable[[SamplerFactory], SamplerFactory]:
    def deco(factory: SamplerFactory) -> SamplerFactory:
        if isinstance(factory, type):
            check_capabilities(factory)
        SAMPLERS[name] = factory
        return factory

    return deco


def deepening(alg: Algorithm) -> Deepening | None:
    """The algorithm as a :class:`Deepening` one, or None if it did not declare it."""
    return alg if Capability.DEEPENING in alg.capabilities else None  # type: ignore[return-value]


def can_deepen(alg: Algorithm) -> bool:
    return Capability.DEEPENING in alg.capabilities


def fidelity_source(alg: Algorithm) -> FidelitySource | None:
    """The algorithm if it declared :attr:`Capability.FIDELITY` (``decision_log()``,
    ``fidelity_report()``: auto), else None."""
    return alg if Capability.FIDELITY in alg.capabilities else None  # type: ignore[return-value]


def pareto_source(alg: Algorithm) -> ParetoSource | None:
    """Whichever of the algorithm and its sampler keeps a cost/value front (the algorithm
    first), or None."""
    for obj in (alg, alg.sampler):
        if obj is not None and Capability.PARETO in obj.capabilities:
            return obj  # type: ignore[return-value]
    return None


def rng_for(seed: int, *path: int) -> np.random.Generator:
    """A generator derived from the study seed and a path (e.g. a bracket), never global."""
    return np.random.default_rng(np.random.SeedSequence([int(seed) & (2**63 - 1), *path]))


def rng_state(rng: np.random.Generator) -> dict[str, Any]:
    return rng.bit_generator.state


def rng_restore(rng: np.random.Generator, state: Mapping[str, Any]) -> None:
    rng.bit_generator.state = dict(state)


SERVICE_SETTINGS = frozenset({"cost_source"})
"""Keys of ``algorithm.settings`` that the service reads (not the algorithm): every algorithm
accepts them, so a study-level choice never needs each algorithm's cooperation."""


def check_settings(settings: Mapping[str, Any], allowed: Sequence[str], algorithm: str) -> None:
    """Reject unknown settings by name, so a typo never silently falls back to a default."""
    allowed = [*allowed, *SERVICE_SETTINGS]
    if "sampler" in allowed and isinstance(settings.get("sampler"), str):
        allowed.append(settings["sampler"])  # the sampler's own options, e.g. {"cqr": {...}}
    unknown = sorted(set(settings) - set(allowed))
    if unknown:
        raise SettingsError(
            f"algorithm.settings.{unknown[0]}",
            f"unknown setting for {algorithm}; known settings: {sorted(allowed)}",
        )
