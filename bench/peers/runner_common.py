"""The peer side of ``bench/peers/driver.py``: a scheduler served over JSON lines.

A runner script (``syne_tune_runner.py``, ``ray_tune_runner.py``) runs in the peer's own
interpreter (a separate venv: the peers are not dependencies of hpod) and imports only the peer,
numpy and this file. It holds one peer scheduler at a time; the simulated cluster, the problems
and the clock stay in hpod's process, so every peer is driven by the same event loop
(``driver.run_loop``) and evaluated on the same problem objects, real trainers included.

Requests, one JSON object per line on stdin, each answered by one line on stdout:

* ``{"op": "init", "method", "space", "min_resource", "max_resource", "eta", "seed"}``
  -> ``{"ok": true}``: a new scheduler (the previous one is dropped);
* ``{"op": "suggest"}`` -> ``{"trial": id, "config": {...}, "resume": bool}``, or
  ``{"trial": null}`` when the scheduler has nothing to run now;
* ``{"op": "result", "trial", "resource", "value", "last"}`` -> ``{"decision":
  "continue" | "stop" | "pause"}``; ``last`` says the trial reached the maximum resource, so a
  ``continue`` ends it as completed;
* ``{"op": "quit"}`` or end of input: exit.

Any failure answers ``{"error": "..."}`` and the runner keeps serving. ``--probe`` prints
``{"peer", "version", "methods", "unavailable"}`` (or exits non-zero with the reason) and
exits. The peer's own prints go to stderr: the protocol has the real stdout to itself.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

Session = Any  # an object with suggest() -> dict and result(trial, r, value, last) -> str


def plain(value: Any) -> Any:
    """numpy scalars to JSON-able Python values."""
    if hasattr(value, "item"):
        return value.item()
    return value


def resource(r: float) -> int | float:
    """Resources are whole units here; keep a fractional one as it is."""
    return int(round(r)) if abs(r - round(r)) < 1e-9 else float(r)


def n_brackets(r_min: float, r_max: float, eta: float) -> int:
    """s_max + 1: the number of rung levels from r_min to r_max, R included."""
    import math

    return int(math.floor(math.log(r_max / r_min) / math.log(eta) + 1e-9)) + 1


def serve(peer: str, version: str, methods: list[str],
          make_session: Callable[[dict[str, Any]], Session],
          unavailable: dict[str, str] | None = None) -> int:
    """Serve requests until "quit" or end of input; ``unavailable`` lists methods this
    installation cannot run, with the reason (reported by ``--probe``)."""
    if "--probe" in sys.argv[1:]:
        print(json.dumps({"peer": peer, "version": version, "methods": methods,
                          "unavailable": unavailable or {}}))
        return 0
    out = os.fdopen(os.dup(1), "w", buffering=1)  # the protocol's own copy of stdout
    os.dup2(2, 1)  # everything else the process prints goes to stderr
    sys.stdout = sys.stderr
    session: Session = None
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
            op = req.get("op")
            if op == "quit":
                break
            if op == "init":
                if req.get("method") not in methods:
                    raise ValueError(f"unknown method {req.get('method')!r}; known: {methods}")
                session = make_session(req)
                resp: dict[str, Any] = {"ok": True}
            elif session is None:
                raise RuntimeError("no scheduler: send init first")
            elif op == "suggest":
                resp = session.suggest()
            elif op == "result":
                resp = {"decision": session.result(req["trial"], resource(req["resource"]),
                                                   float(req["value"]), bool(req["last"]))}
            else:
                raise ValueError(f"unknown op {op!r}")
        except Exception as exc:  # report and keep serving
            resp = {"error": f"{type(exc).__name__}: {exc}",
                    "traceback": traceback.format_exc()}
        out.write(json.dumps(resp) + "\n")
    return 0
