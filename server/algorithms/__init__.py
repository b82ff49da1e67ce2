"""Pure search algorithms. Every module in this package registers itself on import; the
service builds a study's policy with :func:`build` and never imports a policy by name."""

from __future__ import annotations

import importlib
import pkgutil

from .base import (
    ALGORITHMS,
    SAMPLERS,
    Algorithm,
    Context,
    Decision,
    Job,
    Outcome,
    Plan,
    Resource,
    Sampler,
    SettingsError,
    Status,
)
from .space import SearchSpace, SpaceError

for _mod in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_mod.name}")


def build(name: str, ctx: Context) -> Algorithm:
    """The algorithm ``name`` for a study, or a SettingsError naming what is wrong."""
    ctx.resource.check()
    factory = ALGORITHMS.get(name)
    if factory is None:
        raise SettingsError(
            "algorithm.name", f"unknown algorithm {name!r}; choose one of {sorted(ALGORITHMS)}"
        )
    return factory(ctx)


__all__ = [
    "ALGORITHMS", "SAMPLERS", "Algorithm", "Context", "Decision", "Job", "Outcome", "Plan",
    "Resource", "Sampler", "SearchSpace", "SettingsError", "SpaceError", "Status", "build",
]
