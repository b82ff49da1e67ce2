"""The function API: tune an existing training loop without writing a Trainer class.

A function trainer is any function ``fn(config, ctx)``; the worker calls it once per job
segment. ``config`` is the trial's configuration (dict); ``ctx`` (:class:`JobContext`) says
which segment to train and carries everything else::

    def train(config, ctx):
        model = build(config)
        state = ctx.load()                    # None at the trial's start
        if state is not None:
            model.load(state)
        for epoch in ctx.steps():             # from_resource + 1 .. to_resource
            loss = train_one_epoch(model)
            if ctx.report(epoch, loss):       # True: stop now (the algorithm said so)
                break
        ctx.save(model.state())               # the checkpoint at the last reported resource

hpod owns everything around it: where checkpoints live (``ctx.save`` / ``ctx.load``), the lease
and its heartbeat, retries after a lost worker, and promotion (a later job of the same trial
gets the checkpoint saved at its ``from_resource``). The result of the segment is the last
reported value; the device seconds are the wall time of the call.

Optional attributes of the function describe it the way a Trainer class's do: ``search_space``
(a list in ``SearchSpace.to_dict()`` form or a mapping, used when a study gives none),
``metric``, ``direction``, ``resource_unit``.

Whatever ``ctx.save`` is given is written with ``torch.save`` when torch is imported, else
``pickle``; ``ctx.load`` reads it back (onto ``ctx.device`` for tensors).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from . import checkpoints
from .base import whole

ReportFn = Callable[[float, float], bool]


class FunctionTrainer:
    """The class :func:`hpod.trainers.base.get_trainer` returns for a function: the worker
    calls ``fn`` instead of driving ``train``. Subclassed once per function."""

    fn: ClassVar[Callable[..., Any]]
    name: ClassVar[str]
    resource_unit: ClassVar[str] = "epoch"
    metric: ClassVar[str] = "loss"
    direction: ClassVar[str] = "minimize"

    @classmethod
    def default_space(cls) -> Any:
        space = getattr(cls.fn, "search_space", None)
        if callable(space):
            space = space()
        if space is None:
            raise ValueError(
                f"function trainer {cls.name!r} declares no search space: give the study a "
                "search_space, or set the function's search_space attribute")
        return space


def function_trainer(fn: Callable[..., Any], name: str) -> type[FunctionTrainer]:
    attrs: dict[str, Any] = {"fn": staticmethod(fn), "name": name}
    for key in ("resource_unit", "metric", "direction"):
        value = getattr(fn, key, None)
        if isinstance(value, str):
            attrs[key] = value
    return type(f"FunctionTrainer_{getattr(fn, '__name__', 'fn')}", (FunctionTrainer,), attrs)


class JobContext:
    """One job segment as a function trainer sees it.

    ``from_resource`` / ``to_resource``: the segment to train, in resource units (``steps()``
    gives the whole units in between); ``max_resource``: the study's maximum, for schedules;
    ``seed``: derived from the study seed and the trial id; ``settings``: the study's
    ``trainer_settings``; ``data_dir``; ``trial_id``, ``study_id``, ``job_id``, ``attempt``
    (0 unless a lost job is being retried).
    """

    def __init__(self, job: Mapping[str, Any], checkpoint_dir: str | os.PathLike,
                 report: ReportFn, data_dir: str | None = None,
                 device: Callable[[], str] | None = None) -> None:
        self.study_id = str(job["study_id"])
        self.job_id = str(job["job_id"])
        self.trial_id = int(job["trial_id"])
        self.from_resource = float(job["from_resource"])
        self.to_resource = float(job["to_resource"])
        self.max_resource = float(job["max_resource"])
        self.seed = int(job["seed"])
        self.attempt = int(job.get("attempt") or 0)
        self.settings: dict[str, Any] = dict(job.get("trainer_settings") or {})
        self.data_dir = data_dir or self.settings.get("data_dir")
        self._root = checkpoint_dir
        self._report = report
        self._device = device
        self.last: tuple[float, float] | None = None  # the last reported (resource, value)
        self.stopped = False  # told to stop: nothing more is reported or saved
        self.saved: Path | None = None  # the checkpoint this segment wrote

    @property
    def device(self) -> str:
        """Where to train: ``HPOD_DEVICE``, else CUDA when torch sees a GPU, else the CPU.
        Asking imports torch (a function that asks uses it)."""
        if self._device is not None:
            return self._device()
        from .device import pick_device

        return str(pick_device())

    def steps(self) -> range:
        """The whole resource units to train, 1-based: ``from_resource + 1 .. to_resource``."""
        return range(whole(self.from_resource, "from_resource") + 1,
                     whole(self.to_resource, "to_resource") + 1)

    def report(self, resource: float, value: float) -> bool:
        """Report the metric after training to ``resource``; True when the function must stop
        (the algorithm stopped the trial, or the job went to another worker). Resources must
        increase within ``(from_resource, to_resource]``."""
        if self.stopped:
            return True
        resource, value = float(resource), float(value)
        if not (math.isfinite(resource) and math.isfinite(value)):
            raise ValueError(f"report({resource!r}, {value!r}): resource and value must be "
                             "finite; raise an exception to fail a diverged trial")
        low = self.last[0] if self.last else self.from_resource
        if not low < resource <= self.to_resource + 1e-9:
            raise ValueError(f"report({resource:g}, ...): the resource must be above "
                             f"{low:g} and at most to_resource {self.to_resource:g}")
        self.last = (resource, value)
        try:
            self.stopped = bool(self._report(resource, value))
        except BaseException:
            # SIGTERM or Redis out of reach: the job goes back to the queue, so a function that
            # catches this must not write a checkpoint a retry would never use.
            self.stopped = True
            raise
        return self.stopped

    def save(self, state: Any) -> None:
        """Save the trial's state as the checkpoint at the last reported resource (the one a
        later job of this trial loads). After a stop it does nothing: nothing resumes it."""
        if self.stopped:
            return
        if self.last is None:
            raise RuntimeError("ctx.save() before any ctx.report(): a checkpoint belongs to "
                               "the resource last reported; report first, then save")
        path = checkpoints.checkpoint_path(self._root, self.study_id, self.trial_id,
                                           self.last[0])
        checkpoints.write(path, state)
        if self.saved is not None and self.saved != path:
            checkpoints.delete(self.saved)  # a trial keeps only its newest checkpoint
        self.saved = path

    def load(self) -> Any:
        """The state saved at ``from_resource`` by the job that got there, or None when the
        trial starts from zero."""
        if self.from_resource <= 0:
            return None
        path = checkpoints.checkpoint_path(self._root, self.study_id, self.trial_id,
                                           self.from_resource)
        if not path.exists():
            raise FileNotFoundError(
                f"no checkpoint of trial {self.trial_id} at resource {self.from_resource:g} "
                f"({path}): the job that trained to it did not call ctx.save(), or workers "
                "do not share one checkpoint directory (--checkpoint-dir on a shared volume)")
        return checkpoints.read(path, self._map_location())

    def _map_location(self) -> Any:
        return self.device if "torch" in sys.modules else None
