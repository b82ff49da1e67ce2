"""Syne Tune's schedulers behind the JSON-lines protocol of ``runner_common.py``.

    /tmp/peers/syne/bin/python bench/peers/syne_tune_runner.py [--probe]

Run in an interpreter that has ``syne-tune`` 0.14.2 or newer (the scheduler API driven here:
``suggest()`` returning a ``TrialSuggestion``, ``on_trial_add``, ``on_trial_result``,
``on_trial_complete``, ``on_trial_remove``, and the baselines ``ASHA``, ``ASHACQR`` and ``CQR``
with ``time_attr``; ``BOHB`` since 0.16; measured with 0.16.0). The calls mirror what Syne
Tune's own ``Tuner`` makes: a STOP or PAUSE decision is followed by ``on_trial_remove``; a
trial that ends by itself (it reached ``max_t`` and was not stopped) by ``on_trial_complete``
with its last result.

Methods (Syne Tune's baselines with their defaults, random seed = the run's seed; grace period
= min resource, reduction factor = eta):

* ``asha``: ``ASHA`` (asynchronous successive halving, stopping type, one bracket);
* ``hyperband``: ``ASHA`` with ``brackets = s_max + 1``: asynchronous Hyperband, stopping type;
* ``asha-cqr``: ``ASHACQR``, ASHA whose new trials come from conformal quantile regression;
* ``cqr``: ``CQR``, single fidelity: every trial trains to ``max_t``;
* ``bohb``: ``BOHB`` as Syne Tune ships it: BOHB's kernel-density proposals on asynchronous
  successive halving (one bracket, its default);
* ``bohb-hyperband``: the same with ``brackets = s_max + 1``, Hyperband's brackets as in the
  BOHB paper (Falkner et al., ICML 2018), asynchronously.

``ASHA`` and ``ASHACQR`` are built as those baselines build themselves, an
``AsynchronousSuccessiveHalving`` with ``searcher="random_search"`` or ``"cqr"``, because
0.14.2's baselines take no grace period, reduction factor or bracket count.

Syne Tune picks a trial's bracket with numpy's global generator, so it is seeded too.
"""

from __future__ import annotations

import random
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from runner_common import n_brackets, plain, serve  # noqa: E402

METHODS = ["asha", "hyperband", "asha-cqr", "cqr", "bohb", "bohb-hyperband"]
MIN_VERSION = (0, 14, 2)


def _space(space: list[dict[str, Any]]) -> dict[str, Any]:
    from syne_tune import config_space as cs

    out: dict[str, Any] = {}
    for p in space:
        log = bool(p.get("log", False))
        if p["type"] == "float":
            out[p["name"]] = (cs.loguniform if log else cs.uniform)(p["low"], p["high"])
        elif p["type"] == "int":
            out[p["name"]] = (cs.lograndint if log else cs.randint)(p["low"], p["high"])
        else:
            out[p["name"]] = cs.choice(list(p["choices"]))
    return out


class Session:
    def __init__(self, req: dict[str, Any]) -> None:
        import numpy as np
        from syne_tune.optimizer import baselines as b
        from syne_tune.optimizer.schedulers.asha import AsynchronousSuccessiveHalving

        seed = int(req["seed"])
        np.random.seed(seed)  # bracket choice (on_trial_add) uses the global generator
        random.seed(seed)
        self.names = [p["name"] for p in req["space"]]
        space = _space(req["space"])
        r_min, r_max, eta = int(req["min_resource"]), int(req["max_resource"]), req["eta"]
        method = req["method"]
        if method == "cqr":
            self.scheduler = b.CQR(space, metric="value", do_minimize=True, random_seed=seed)
        elif method.startswith("bohb"):
            brackets = n_brackets(r_min, r_max, eta) if method == "bohb-hyperband" else 1
            self.scheduler = b.BOHB(space, metric="value", time_attr="epoch", max_t=r_max,
                                    do_minimize=True, random_seed=seed, grace_period=r_min,
                                    reduction_factor=eta, brackets=brackets)
        else:  # what the baselines ASHA and ASHACQR build, with the grace period, reduction
            # factor and bracket count set (0.14.2's baselines do not take them)
            brackets = n_brackets(r_min, r_max, eta) if method == "hyperband" else 1
            self.scheduler = AsynchronousSuccessiveHalving(
                config_space=space, metric="value", do_minimize=True,
                searcher="cqr" if method == "asha-cqr" else "random_search",
                time_attr="epoch", max_t=r_max, grace_period=r_min, reduction_factor=eta,
                brackets=brackets, random_seed=seed)
        self.trials: dict[int, Any] = {}

    def suggest(self) -> dict[str, Any]:
        from syne_tune.backend.trial_status import Trial

        s = self.scheduler.suggest()
        if s is None:
            return {"trial": None}
        if s.spawn_new_trial_id:
            if s.checkpoint_trial_id is not None:
                raise NotImplementedError("warm start from another trial's checkpoint")
            tid = len(self.trials)
            trial = Trial(trial_id=tid, config=dict(s.config), creation_time=datetime.now())
            self.trials[tid] = trial
            self.scheduler.on_trial_add(trial=trial)
            resume = False
        else:
            tid = int(s.checkpoint_trial_id)
            trial = self.trials[tid]
            if s.config is not None:
                trial.config = dict(s.config)
            resume = True
        config = {k: plain(trial.config[k]) for k in self.names}
        return {"trial": tid, "config": config, "resume": resume}

    def result(self, tid: int, r: int | float, value: float, last: bool) -> str:
        from syne_tune.optimizer.scheduler import SchedulerDecision as D

        trial = self.trials[tid]
        res = {"value": value, "epoch": r}
        decision = self.scheduler.on_trial_result(trial=trial, result=res)
        if decision in (D.STOP, D.PAUSE):
            self.scheduler.on_trial_remove(trial=trial)
        elif last:
            self.scheduler.on_trial_complete(trial=trial, result=res)
        return {D.CONTINUE: "continue", D.STOP: "stop", D.PAUSE: "pause"}[decision]


def main() -> int:
    try:
        import syne_tune
    except ImportError as exc:
        print(f"syne-tune is not importable here: {exc}", file=sys.stderr)
        return 3
    version = syne_tune.__version__
    parts = tuple(int(x) for x in version.split(".")[:3] if x.isdigit())
    if parts < MIN_VERSION:
        print(f"syne-tune {version} is older than 0.14.2, whose scheduler API this adapter "
              "drives", file=sys.stderr)
        return 4
    try:  # 0.14.2 imports optional packages here: xgboost, scikit-learn, botorch (torch)
        import syne_tune.optimizer.baselines  # noqa: F401
    except Exception as exc:  # 0.14.2 without botorch fails with a NameError
        print(f"syne-tune {version}'s schedulers do not import: {type(exc).__name__}: {exc} "
              "(0.14.2 needs xgboost, scikit-learn and botorch besides its own requirements)",
              file=sys.stderr)
        return 5
    methods, unavailable = list(METHODS), {}
    if not hasattr(syne_tune.optimizer.baselines, "BOHB"):
        for m in ("bohb", "bohb-hyperband"):
            methods.remove(m)
            unavailable[m] = f"syne-tune {version} has no BOHB baseline (0.16.0 has)"
    try:  # CQR's searcher imports the blackbox repository, which needs huggingface_hub
        import syne_tune.optimizer.schedulers.searchers.conformal.conformal_quantile_regression_searcher  # noqa: E501, F401
    except ImportError as exc:
        for m in ("cqr", "asha-cqr"):
            methods.remove(m)
            unavailable[m] = (f"syne-tune's CQR does not import here ({exc}); pip install "
                              f"{exc.name or 'the missing package'} in its venv")
    return serve("syne-tune", version, methods, Session, unavailable)


if __name__ == "__main__":
    sys.exit(main())
