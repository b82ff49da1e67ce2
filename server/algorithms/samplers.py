"""Samplers that need no model: uniform random search over the space."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .base import (
    Context,
    Sampler,
    SettingsError,
    SuggestContext,
    register_sampler,
    rng_restore,
    rng_state,
)


class RandomSampler(Sampler):
    """Independent uniform draws (log-uniform on log-scale parameters)."""

    name = "random"
    uses_pending = False  # independent draws

    def __init__(self, ctx: Context, rng: np.random.Generator) -> None:
        self.space = ctx.space
        self.rng = rng

    def suggest(self, ctx: SuggestContext) -> dict[str, Any]:
        return self.space.sample(self.rng)

    def state(self) -> dict[str, Any]:
        return {"rng": rng_state(self.rng)}

    def restore(self, state: Mapping[str, Any]) -> None:
        rng_restore(self.rng, state["rng"])


register_sampler("random")(RandomSampler)


def sampler_options(settings: Mapping[str, Any]) -> list[str]:
    """The key of a scheduler's settings that holds its sampler's own options (``{"sampler":
    "cqr", "cqr": {...}}``): the scheduler lets it through for the sampler to parse."""
    name = settings.get("sampler")
    return [name] if isinstance(name, str) else []


def make_sampler(ctx: Context, rng: np.random.Generator, default: str = "random") -> Sampler:
    """The sampler a study's settings name (``settings["sampler"]``), built on ``rng``."""
    from . import SAMPLER_MODULES, load
    from .base import SAMPLERS

    name = str(ctx.settings.get("sampler", default))
    load(name, sampler=True)
    factory = SAMPLERS.get(name)
    if factory is None:
        raise SettingsError(
            "algorithm.settings.sampler",
            f"unknown sampler {name!r}; choose one of {sorted(SAMPLER_MODULES)}",
        )
    return factory(ctx, rng)
