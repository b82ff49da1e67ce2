"""Where an algorithm's CPU-heavy pure functions run.

An algorithm calls ``compute(fn, *args)`` for a pure, picklable function that takes long and
holds the GIL (fitting gradient-boosted quantile models, say). By default it is a plain call.
The server installs a runner that sends the call to a process pool, so the fit cannot slow
the server's event loop through the GIL; the result is the same either way, because the
function is pure (it gets its own seeded generator, never the algorithm's).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
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


def fit_process_started(niceness: int) -> None:
    """Initializer of the service's fit processes: they die with the server, run
    ``niceness`` steps below it (under CPU contention the event loop's bookkeeping goes before
    a background fit, which only takes longer), and import the algorithms once, up front."""
    worker_dies_with_parent()
    if niceness > 0:
        with contextlib.suppress(OSError):
            os.nice(niceness)
    importlib.import_module(__package__).load_all()


def ready() -> bool:
    """A no-op call that makes a process pool start its processes."""
    return True


def worker_dies_with_parent() -> None:
    """The calling process ends with its parent, even if the parent is killed (Linux
    PR_SET_PDEATHSIG), instead of lingering as an orphan."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
        except OSError:
            return
    if os.getppid() == 1:  # the server died before the request took effect
        os._exit(0)
