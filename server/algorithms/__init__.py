"""Pure search algorithms. Every module in this package registers itself on import; the
service builds a study's policy with :func:`build` and never imports a policy by name.

Modules are imported on first use (CQR pulls in scikit-learn, CARBS torch and BoTorch), so a
server or CLI that never builds them starts in a fraction of a second. A new module adds its
names to ``MODULES``; ``test_registry`` checks that the table and the registrations agree.
"""

from __future__ import annotations

import importlib

from .base import (
    ALGORITHMS,
    SAMPLERS,
    Algorithm,
    Capability,
    Context,
    Decision,
    Job,
    Outcome,
    Plan,
    Resource,
    Sampler,
    SettingsError,
    Status,
    SuggestContext,
)
from .space import SearchSpace, SpaceError

# name -> module that registers it, for algorithms and for samplers.
MODULES: dict[str, str] = {
    "random": "random_search", "hyperband": "hyperband", "asha": "asha",
    "async-hyperband": "asha", "idhb": "idhb", "cqr": "cqr", "asha-cqr": "cqr",
    "carbs": "carbs", "asha-carbs": "carbs", "auto": "auto",
}
SAMPLER_MODULES: dict[str, str] = {
    "random": "samplers", "cqr": "cqr", "carbs": "carbs", "tpe": "tpe", "mfkde": "mfkde",
    "mfgp": "mfgp",
}


def load(name: str, sampler: bool = False) -> bool:
    """Import the module that registers ``name``; False if no module does."""
    module = (SAMPLER_MODULES if sampler else MODULES).get(name)
    if module is None:
        return False
    importlib.import_module(f"{__name__}.{module}")
    return True


def load_all() -> None:
    for module in sorted(set(MODULES.values()) | set(SAMPLER_MODULES.values())):
        importlib.import_module(f"{__name__}.{module}")


def build(name: str, ctx: Context) -> Algorithm:
    """The algorithm ``name`` for a study, or a SettingsError naming what is wrong."""
    ctx.resource.check()
    load(name)
    if name not in ALGORITHMS:
        raise SettingsError(
            "algorithm.name", f"unknown algorithm {name!r}; choose one of {sorted(MODULES)}"
        )
    return ALGORITHMS[name](ctx)


__all__ = [
    "ALGORITHMS", "SAMPLERS", "Algorithm", "Capability", "Context", "Decision", "Job", "Outcome",
    "Plan", "Resource", "Sampler", "SearchSpace", "SettingsError", "SpaceError", "Status",
    "SuggestContext", "build",
    "load", "load_all", "MODULES", "SAMPLER_MODULES",
]
