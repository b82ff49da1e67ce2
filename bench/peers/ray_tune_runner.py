"""Ray Tune's trial schedulers behind the JSON-lines protocol of ``runner_common.py``.

    /tmp/peers/ray/bin/python bench/peers/ray_tune_runner.py [--probe]

Ray is never started: the schedulers (``ASHAScheduler``, ``HyperBandScheduler``) are plain
Python objects that Ray's ``TuneController`` calls, and this runner makes the same calls
(``on_trial_add``, ``choose_trial_to_run``, ``on_trial_result``, ``on_trial_complete``,
``on_trial_remove``) from hpod's simulated clock, with a small stand-in for the controller and
its trials that offers what the schedulers read (``status``, ``is_saving``, ``get_trials()``,
``stop_trial()``, with the controller's semantics: stopping a pending or paused trial calls
``on_trial_remove``, a running one ``on_trial_complete``). A STOP decision on a running trial,
or its natural end at ``max_t``, is followed by ``on_trial_complete`` with the last result, as in
``TuneController.stop_trial``.

New trials: Ray's search algorithm creates trials ahead of the scheduler, up to the
controller's ``max_pending_trials``; for random search (``BasicVariantGenerator``) Ray 2.60
allows ``max(200, 1.1 × cluster CPUs)`` of them (``tune_controller._get_max_pending_trials``),
so this runner keeps ``MAX_PENDING`` (200) trials pending, each configuration drawn as
``BasicVariantGenerator`` draws it (``Domain.sample`` with a generator seeded by the run's
seed). The scheduler then chooses what runs, a pending trial or a paused one it wants resumed.
That matters for ``HyperBandScheduler``: it assigns each trial to a bracket when the trial is
added and halves a bracket once all its trials reached the rung, so with one trial pending at
a time a bracket would hold one live trial, every halving would keep it, and every trial would
train to ``max_t``.

Methods: ``asha``: ``ASHAScheduler`` (asynchronous successive halving, stopping, one bracket,
``grace_period`` = min resource, ``reduction_factor`` = eta); ``hyperband``:
``HyperBandScheduler`` (synchronous Hyperband with pause and resume, ``max_t``,
``reduction_factor`` = eta). Both seed numpy's global generator (ASHA draws brackets from it).
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from runner_common import plain, serve  # noqa: E402

METHODS = ["asha", "hyperband"]
# Ray 2.60's pending-trial allowance for random search on a small cluster (see above).
MAX_PENDING = 200


def _space(space: list[dict[str, Any]]) -> dict[str, Any]:
    from ray import tune

    out: dict[str, Any] = {}
    for p in space:
        log = bool(p.get("log", False))
        if p["type"] == "float":
            out[p["name"]] = (tune.loguniform if log else tune.uniform)(p["low"], p["high"])
        elif p["type"] == "int":  # Ray's randint excludes the upper bound; hpod's includes it
            out[p["name"]] = (tune.lograndint if log else tune.randint)(p["low"],
                                                                        p["high"] + 1)
        else:
            out[p["name"]] = tune.choice(list(p["choices"]))
    return out


class _Trial:
    """What Ray's schedulers read from a ``ray.tune.experiment.Trial``."""

    def __init__(self, trial_id: str, config: dict[str, Any], status: str) -> None:
        self.trial_id = trial_id
        self.config = config
        self.status = status
        self.is_saving = False
        self.last_result: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"Trial({self.trial_id}, {self.status})"


class _Controller:
    """The part of ``TuneController`` the schedulers call back into."""

    def __init__(self) -> None:
        self.trials: list[_Trial] = []
        self.scheduler: Any = None
        self.pending = 0  # trials added and neither started nor stopped

    def get_trials(self) -> list[_Trial]:
        return self.trials

    def stop_trial(self, trial: _Trial) -> None:
        from ray.tune.experiment import Trial

        if trial.status in (Trial.ERROR, Trial.TERMINATED):
            return
        if trial.status in (Trial.PENDING, Trial.PAUSED):
            self.pending -= trial.status == Trial.PENDING
            self.scheduler.on_trial_remove(self, trial)
        elif trial.status == Trial.RUNNING:
            self.scheduler.on_trial_complete(self, trial, trial.last_result)
        trial.status = Trial.TERMINATED


class Session:
    def __init__(self, req: dict[str, Any]) -> None:
        import numpy as np
        from ray.tune.schedulers import ASHAScheduler, HyperBandScheduler

        seed = int(req["seed"])
        np.random.seed(seed)
        random.seed(seed)
        self.rng = np.random.default_rng(seed)
        self.space = _space(req["space"])
        r_min, r_max, eta = int(req["min_resource"]), int(req["max_resource"]), req["eta"]
        if req["method"] == "asha":
            self.scheduler = ASHAScheduler(time_attr="epoch", metric="value", mode="min",
                                           max_t=r_max, grace_period=r_min,
                                           reduction_factor=eta)
        else:
            self.scheduler = HyperBandScheduler(time_attr="epoch", metric="value",
                                                mode="min", max_t=r_max,
                                                reduction_factor=eta)
        self.ctrl = _Controller()
        self.ctrl.scheduler = self.scheduler
        self.by_id: dict[int, _Trial] = {}

    def _new_trial(self) -> None:
        from ray.tune.experiment import Trial

        config = {k: plain(d.sample(random_state=self.rng)) for k, d in self.space.items()}
        tid = len(self.by_id)
        trial = _Trial(f"{tid:05d}", config, Trial.PENDING)
        self.by_id[tid] = trial
        self.ctrl.trials.append(trial)
        self.ctrl.pending += 1
        self.scheduler.on_trial_add(self.ctrl, trial)

    def suggest(self) -> dict[str, Any]:
        from ray.tune.experiment import Trial

        while self.ctrl.pending < MAX_PENDING:
            self._new_trial()
        trial = self.scheduler.choose_trial_to_run(self.ctrl)
        if trial is None:
            return {"trial": None}
        resume = trial.status == Trial.PAUSED
        if not resume:
            self.ctrl.pending -= 1
        trial.status = Trial.RUNNING
        return {"trial": int(trial.trial_id), "config": dict(trial.config), "resume": resume}

    def result(self, tid: int, r: int | float, value: float, last: bool) -> str:
        from ray.tune.experiment import Trial
        from ray.tune.schedulers import TrialScheduler as TS

        trial = self.by_id[tid]
        res = {"value": value, "epoch": r, "training_iteration": r}
        trial.last_result = res
        decision = self.scheduler.on_trial_result(self.ctrl, trial, res)
        if decision == TS.STOP or (decision == TS.CONTINUE and last):
            self.ctrl.stop_trial(trial)
            return "stop" if decision == TS.STOP else "continue"
        if decision == TS.PAUSE:
            trial.status = Trial.PAUSED
            return "pause"
        return "continue"


def main() -> int:
    try:
        import ray
        import ray.tune.schedulers  # noqa: F401
    except ImportError as exc:
        print(f"ray[tune] is not importable here: {exc}", file=sys.stderr)
        return 3
    return serve("ray-tune", ray.__version__, METHODS, Session)


if __name__ == "__main__":
    sys.exit(main())
