"""Small helpers for the tests (importable as ``helpers``: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterator


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0, what: str = "") -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")


@contextlib.contextmanager
def ctrl_c_delivered() -> Iterator[None]:
    """SIGINT raises KeyboardInterrupt here, and reaches the processes started meanwhile,
    even when the tests were started with SIGINT ignored (a shell's background job): Python
    leaves an ignored SIGINT ignored, and a child inherits that."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)
