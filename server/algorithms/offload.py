"""Where an algorithm's CPU-heavy pure functions run.

An algorithm calls ``compute(fn, *args)`` for a pure, picklable function that takes long and
holds the GIL (fitting gradient-boosted quantile models, say). By default it is a plain call.
The server installs a runner that sends the call to a process pool, so the fit cannot slow
the server's event loop through the GIL; the result is the same either way, because the
function is pure (it gets its own seeded generator, never the algorithm's).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_runner: Callable[..., Any] | None = None


def compute(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``, here or on the runner the service installed."""
    if _runner is None:
        return fn(*args)
    return _runner(fn, *args)


def set_runner(runner: Callable[..., Any] | None) -> None:
    """Install (or, with None, remove) the runner: ``runner(fn, *args)`` returns the result."""
    global _runner
    _runner = runner
