"""An existing training loop, tuned through hpod's function API (numpy only). Run a worker
for it with

    PYTHONPATH=examples/byo hpod worker --trainer my_loop:train

and create studies with ``trainer: my_loop:train`` (examples/byo/function.yaml).

The function gets the trial's configuration and a context: ``ctx.steps()`` are the epochs of
this job's segment, ``ctx.report(epoch, value)`` says whether to stop, ``ctx.load()`` returns
the state saved when the trial reached ``ctx.from_resource`` (None at the start), and
``ctx.save(state)`` stores the state at the last reported epoch. hpod decides where the file
lives, hands the next segment to any worker, and retries a segment whose worker died.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def train(config: dict[str, Any], ctx: Any) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 10))
    y = x @ rng.normal(size=10) + rng.normal(scale=0.5, size=1000)
    lr, momentum = float(config["lr"]), float(config["momentum"])

    state = ctx.load()
    if state is None:
        state = {"w": np.zeros(10), "v": np.zeros(10), "epoch": 0}
    # A resumed segment starts exactly where the saved one ended.
    assert state["epoch"] == ctx.from_resource, (state["epoch"], ctx.from_resource)
    w, v = state["w"], state["v"]
    for epoch in ctx.steps():
        for i in range(0, 800, 50):
            grad = x[i:i + 50].T @ (x[i:i + 50] @ w - y[i:i + 50]) / 50
            v = momentum * v - lr * grad
            w = w + v
        val = float(np.mean((x[800:] @ w - y[800:]) ** 2))
        if not np.isfinite(val):
            raise FloatingPointError(f"diverged at epoch {epoch} (lr={lr})")
        if ctx.report(epoch, val):
            break
    ctx.save({"w": w, "v": v, "epoch": epoch})


# What the worker shows as this trainer's defaults (a study may give its own search_space).
train.search_space = {
    "lr": {"type": "float", "low": 1e-4, "high": 0.3, "log": True},
    "momentum": {"type": "float", "low": 0.0, "high": 0.95},
}
train.metric = "val_mse"
