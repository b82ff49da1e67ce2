"""A study's configuration as the server keeps it: plain data, JSON-safe, no wire types."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .algorithms import Algorithm, Context, Resource, SearchSpace, build
from .algorithms.base import SettingsError


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

    def build_algorithm(self) -> Algorithm:
        ctx = Context(self.space, self.resource, self.seed, dict(self.settings), self.max_trials)
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
