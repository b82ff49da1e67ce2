"""A study's configuration as the server keeps it: plain data, JSON-safe, no wire types."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .algorithms import Algorithm, Context, Resource, SearchSpace, build
from .algorithms.base import SERVICE_SETTINGS, SettingsError

# What a trial's cost is for the algorithm. Workers report only the objective, so a user metric
# as cost has no channel yet; ``resource`` makes cost deterministic (replays, seeded tests).
COST_SOURCES = ("device_seconds", "resource")


@dataclass(frozen=True)
class StudyConfig:
    space: SearchSpace
    resource: Resource
    algorithm: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    max_trials: int | None = None
    name: str = ""
    metric: str = "loss"
    maximize: bool = False
    trainer: str = ""
    trainer_settings: Mapping[str, Any] = field(default_factory=dict)
    max_retries: int = 2
    tenant: str = ""  # the owner; "" when the server runs without authentication

    def check(self) -> None:
        """Raise SettingsError/SpaceError naming the field; builds the algorithm to validate
        its settings, so a study that passes can start."""
        if self.max_trials is not None and self.max_trials < 0:
            raise SettingsError("max_trials", "must be >= 0 (0 means unset)")
        if self.max_retries < 0:
            raise SettingsError("max_retries", "must be >= 0")
        for name in ("max_resource", "min_resource"):
            if not math.isfinite(getattr(self.resource, name)):
                raise SettingsError(f"resource.{name}", "must be a finite number")
        self.build_algorithm()

    @property
    def cost_source(self) -> str:
        """What becomes a trial's cost for the algorithm (``algorithm.settings.cost_source``)."""
        source = self.settings.get("cost_source", "device_seconds")
        if source not in COST_SOURCES:
            raise SettingsError("algorithm.settings.cost_source",
                                f"{source!r} is not one of {list(COST_SOURCES)} (device_seconds: "
                                "what the workers measure; resource: what the job trained)")
        return str(source)

    def build_algorithm(self) -> Algorithm:
        self.cost_source  # noqa: B018 (validates the service's own key before building)
        # Service-level keys are the service's business: the algorithm never sees them, so
        # algorithms that build their settings with ``cls(**settings)`` need not know them.
        settings = {k: v for k, v in self.settings.items() if k not in SERVICE_SETTINGS}
        ctx = Context(self.space, self.resource, self.seed, settings, self.max_trials)
        return build(self.algorithm, ctx)

    def to_dict(self) -> dict[str, Any]:
        return {
            "space": self.space.to_dict(),
            "resource": {"max_resource": self.resource.max_resource,
                         "min_resource": self.resource.min_resource,
                         "eta": self.resource.eta, "name": self.resource.name},
            "algorithm": self.algorithm,
            "settings": dict(self.settings),
            "seed": self.seed,
            "max_trials": self.max_trials,
            "name": self.name,
            "metric": self.metric,
            "maximize": self.maximize,
            "trainer": self.trainer,
            "trainer_settings": dict(self.trainer_settings),
            "max_retries": self.max_retries,
            "tenant": self.tenant,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StudyConfig:
        r = d["resource"]
        return cls(
            space=SearchSpace.from_dict(d["space"]),
            resource=Resource(float(r["max_resource"]), float(r["min_resource"]), int(r["eta"]),
                              str(r.get("name", "epoch"))),
            algorithm=d["algorithm"],
            settings=dict(d.get("settings", {})),
            seed=int(d.get("seed", 0)),
            max_trials=d.get("max_trials"),
            name=d.get("name", ""),
            metric=d.get("metric", "loss"),
            maximize=bool(d.get("maximize", False)),
            trainer=d.get("trainer", ""),
            trainer_settings=dict(d.get("trainer_settings", {})),
            max_retries=int(d.get("max_retries", 2)),
            tenant=str(d.get("tenant", "")),
        )
