"""Samplers for the runtime tests, loaded into a real server through ``HPOD_PLUGINS``.

* ``raise-third``: random proposals, then a RuntimeError on the third suggestion (a broken
  algorithm);
* ``slow-random``: random proposals that take ``SLOW_SECONDS`` each, without using the CPU
  (stands in for a model fit whose wall time is what matters to the tests).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from hpod.server.algorithms.base import Context, Sampler, SuggestContext, register_sampler
from hpod.server.algorithms.persist import Persistent

SLOW_SECONDS = 0.25


class _Random(Persistent, Sampler):
    uses_pending = False
    saved = ("rng", "calls")

    def __init__(self, ctx: Context, rng: np.random.Generator) -> None:
        self.space, self.rng, self.calls = ctx.space, rng, 0

    def suggest(self, ctx: SuggestContext) -> dict[str, Any]:
        self.calls += 1
        return self.space.sample(self.rng)


class RaiseThird(_Random):
    name = "raise-third"

    def suggest(self, ctx: SuggestContext) -> dict[str, Any]:
        if self.calls == 2:
            raise RuntimeError("the surrogate exploded on its third suggestion")
        return super().suggest(ctx)


class SlowRandom(_Random):
    name = "slow-random"

    def suggest(self, ctx: SuggestContext) -> dict[str, Any]:
        time.sleep(SLOW_SECONDS)
        return super().suggest(ctx)


register_sampler("raise-third")(RaiseThird)
register_sampler("slow-random")(SlowRandom)
