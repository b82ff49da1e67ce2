"""Children of `hpod local` and `hpod demo` die with their parent (imported by every child at
start, so it imports nothing heavy)."""

from __future__ import annotations

import os
import signal
import sys

PARENT_ENV = "HPOD_PARENT_PID"  # set for the children: they ask to die with this process


def die_with_parent() -> None:
    """Called by a child at its start (``hpod.client.cli.main``) when ``HPOD_PARENT_PID`` is
    set: SIGTERM when that parent dies (Linux PR_SET_PDEATHSIG), and exit at once if it is
    already gone. Done in the child itself rather than in a ``preexec_fn``: forking a process
    that runs gRPC threads and running Python before exec can crash or hang the child."""
    parent = os.environ.pop(PARENT_ENV, "")
    if not parent or not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except OSError:
        return
    if os.getppid() != int(parent):  # the parent died before the request took effect
        raise SystemExit(0)
