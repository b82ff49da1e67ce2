"""imbue's reference CARBS (imbue-ai/carbs) behind a JSON-lines pipe, for
``bench/carbs.py``. It runs in the reference's own virtual environment (torch, pyro, wandb), never
in hpod's: ``bench/carbs.py --carbs-python /path/to/that/python`` starts one of these per run.
Our code, written against the library's public API (``CARBS``, ``CARBSParams``, ``Param``,
``LinearSpace``/``LogSpace``/``LogitSpace``, ``ObservationInParam``); nothing here is theirs.

Protocol, one JSON object per line on stdin, one answer per line on stdout:

* ``{"op": "init", "seed": s, "params": [...], "settings": {...}, "checkpoint_dir": d,
  "gp_steps": n | null}``: build the optimiser (minimising, wandb and autosave off). Each param
  is ``{"name", "transform" (linear|log|logit), "low", "high", "scale", "integer", "rounding",
  "center"}``; ``settings`` are extra ``CARBSParams`` fields; ``gp_steps`` overrides the number
  of optimiser steps of each GP fit (null keeps the library's 1000);
* ``{"op": "suggest"}`` -> ``{"id": uuid, "config": {...}}`` (the suggestion is remembered as
  outstanding, as the library does by default);
* ``{"op": "observe", "id": uuid, "config": {...}, "value": v, "cost": c}`` -> ``{"ok": true}``;
* ``{"op": "stats"}`` -> how often the library fell back to a random suggestion, and why.

Errors answer ``{"error": traceback}``. Everything the library prints goes to stderr.
"""

from __future__ import annotations

import json
import math
import os
import sys
import traceback
from pathlib import Path
from typing import Any

# bench/carbs.py sits beside this file and would shadow the ``carbs`` package.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]


def _space(ref: Any, p: dict[str, Any]) -> Any:
    kind = {"linear": ref.LinearSpace, "log": ref.LogSpace, "logit": ref.LogitSpace}
    kwargs: dict[str, Any] = {"min": p["low"], "max": p["high"], "scale": p["scale"]}
    if p["transform"] != "logit":
        kwargs.update(is_integer=bool(p["integer"]), rounding_factor=int(p["rounding"]))
    return kind[p["transform"]](**kwargs)


def _set_gp_steps(steps: int | None) -> None:
    """The library fits each of its GPs with pyro's ``gp.util.train`` at its default 1000 Adam
    steps (lr 1e-4, so the kernel barely moves). ``steps`` overrides that count, for runs where
    the reference's ~3,000 optimiser steps per suggestion would not fit the time at hand; None
    keeps the library untouched."""
    if steps is None:
        return
    from pyro.contrib.gp import util

    original = util.train

    def train(*args: Any, **kwargs: Any) -> Any:
        kwargs["num_steps"] = int(steps)
        return original(*args, **kwargs)

    util.train = train


def _plain(value: Any, integer: bool) -> int | float:
    v = float(value.item() if hasattr(value, "item") else value)
    return int(round(v)) if integer else v


def main() -> int:
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # the library's prints and logs must not reach the protocol channel

    import torch

    torch.set_num_threads(1)  # as hpod's carbs: small GPs, and the benchmark runs N at once
    import carbs as ref
    from loguru import logger

    counts = {"random_fallback": 0, "generation_error": 0}

    def sink(message: Any) -> None:
        text = str(message.record["message"])
        if "choosing at random" in text:
            counts["random_fallback"] += 1
        elif "error generating candidate" in text:
            counts["generation_error"] += 1

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    logger.add(sink, level="WARNING")
    key = getattr(ref, "SUGGESTION_ID_DICT_KEY", "suggestion_uuid")
    opt: Any = None
    integer: dict[str, bool] = {}
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
            op = req["op"]
            if op == "init":
                _set_gp_steps(req.get("gp_steps"))
                params = [ref.Param(p["name"], _space(ref, p), p["center"])
                          for p in req["params"]]
                integer = {p["name"]: bool(p["integer"]) for p in req["params"]}
                cfg = ref.CARBSParams(better_direction_sign=-1, seed=int(req["seed"]),
                                      is_wandb_logging_enabled=False,
                                      is_saved_on_every_observation=False,
                                      checkpoint_dir=req.get("checkpoint_dir", "checkpoints/"),
                                      **req.get("settings", {}))
                opt = ref.CARBS(cfg, params)
                reply: dict[str, Any] = {"ok": True}
            elif op == "suggest":
                suggestion = dict(opt.suggest().suggestion)
                sid = suggestion.pop(key)
                reply = {"id": sid, "config": {k: _plain(v, integer.get(k, False))
                                               for k, v in suggestion.items()}}
            elif op == "observe":
                given = {**req["config"], key: req["id"]}
                value = float(req["value"])
                opt.observe(ref.ObservationInParam(input=given, output=value,
                                                   cost=float(req["cost"]),
                                                   is_failure=not math.isfinite(value)))
                reply = {"ok": True}
            elif op == "stats":
                reply = {"counts": counts,
                         "successes": len(opt.success_observations) if opt else 0}
            else:
                reply = {"error": f"unknown op {op!r}"}
        except Exception:  # the parent reports it, with the traceback
            reply = {"error": traceback.format_exc()}
        channel.write(json.dumps(reply) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
