"""Samplers for the runtime tests, loaded into a real server through ``HPOD_PLUGINS``.

* ``raise-third``: random proposals, then a RuntimeError on the third suggestion (a broken
  algorithm);
* ``slow-random``: random proposals that take ``SLOW_SECONDS`` each, without using the CPU
  (stands in for a model fit whose wall time is what matters to the tests).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from hpod.server.algorithms.base import register_sampler, rng_restore, rng_state

SLOW_SECONDS = 0.25


class _Random:
    uses_pending = False
    name = ""

    def __init__(self, ctx: Any, rng: Any) -> None:
        self.space, self.rng, self.calls = ctx.space, rng, 0

    def suggest(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.calls += 1
        return self.space.sample(self.rng)

    def observe(self, *args: Any, **kwargs: Any) -> None: ...

    def on_segment(self, *args: Any, **kwargs: Any) -> None: ...

    def on_trial_end(self, *args: Any, **kwargs: Any) -> None: ...

    def state(self) -> dict[str, Any]:
        return {"rng": rng_state(self.rng), "calls": self.calls}

    def restore(self, state: Mapping[str, Any]) -> None:
        rng_restore(self.rng, state["rng"])
        self.calls = int(state["calls"])


class RaiseThird(_Random):
    def suggest(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if self.calls == 2:
            raise RuntimeError("the surrogate exploded on its third suggestion")
        return super().suggest(*args, **kwargs)


class SlowRandom(_Random):
    def suggest(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        time.sleep(SLOW_SECONDS)
        return super().suggest(*args, **kwargs)


register_sampler("raise-third")(RaiseThird)
register_sampler("slow-random")(SlowRandom)
