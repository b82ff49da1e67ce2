"""Optuna's TPE as a sampler for the Hyperband family, using every fidelity.

Each suggestion builds a fresh in-memory Optuna study from the history and asks it through
Optuna's ask/tell interface. With ``fidelities: all`` (the default) every trial goes in: one
that reached the maximum resource as a finished trial with its value there, any other as a
pruned trial carrying its learning curve, which Optuna's TPE ranks after the finished ones by
how far it got, then by its last value (so a trial stopped late counts as better than one
stopped early, and the ones that got furthest form the "good" group early in a study). With
``fidelities: highest`` only the results at the highest resource level that has enough points
are used, as BOHB does. The Optuna sampler is seeded from the study seed and the number
of suggestions so far, so the sampler's only state is its history: a restored server replays
it and proposes exactly what an uninterrupted one would.

Settings (``settings["tpe"]``): ``min_points`` (points a level needs before TPE is fitted on
it; default: number of parameters + 2, BOHB's rule), ``n_startup_trials`` (Optuna's, default
10), ``multivariate`` (default true), ``constant_liar`` (pending trials get the worst value so
parallel asks spread out; default true), ``fidelities`` (``all`` | ``highest``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .base import Context, Sampler, SettingsError, Status, SuggestContext, register_sampler
from .persist import Persistent
from .settings import ROOT, parse
from .space import Categorical, Float, SearchSpace


@dataclass(frozen=True)
class TPESettings:
    """``algorithm.settings.tpe`` (see the module docstring)."""

    n_startup_trials: int = 10
    multivariate: bool = True
    constant_liar: bool = True
    min_points: int | None = None  # default: number of parameters + 2
    fidelities: Literal["all", "highest"] = "all"

# Each suggestion builds a throwaway in-memory Optuna study, and Optuna logs the creation of
# every study at INFO. Rather than lower Optuna's process-wide log level, one filter on that
# logger drops its lines only while this context is building one (a context variable: other
# threads, and a user's own studies in the same process, log as they are configured to).
_BUILDING: ContextVar[bool] = ContextVar("hpod_tpe_building", default=False)


class _QuietWhileBuilding(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _BUILDING.get()


logging.getLogger("optuna.storages._in_memory").addFilter(_QuietWhileBuilding())


def _distributions(space: SearchSpace) -> dict[str, Any]:
    import optuna.distributions as d

    out: dict[str, Any] = {}
    for p in space.params:
        if isinstance(p, Float):
            out[p.name] = d.FloatDistribution(p.low, p.high, log=p.log)
        elif isinstance(p, Categorical):
            out[p.name] = d.CategoricalDistribution(list(p.choices))
        else:
            out[p.name] = d.IntDistribution(p.low, p.high, log=p.log)
    return out


class TPESampler(Persistent, Sampler):
    name = "tpe"
    saved = ("seed", "suggested", "points")
    state_version = 2

    def __init__(self, ctx: Context, rng: np.random.Generator) -> None:
        self.space = ctx.space
        st = parse(TPESettings, ctx.settings.get("tpe"), f"{ROOT}.tpe")
        self.opts = {"n_startup_trials": st.n_startup_trials, "multivariate": st.multivariate,
                     "constant_liar": st.constant_liar, "fidelities": st.fidelities}
        self.max_resource = float(ctx.resource.max_resource)
        self.min_points = len(self.space) + 2 if st.min_points is None else st.min_points
        if self.min_points < 1:
            raise SettingsError("algorithm.settings.tpe.min_points", "must be >= 1")
        # One draw from the study's generator fixes this sampler's seed for good.
        self.seed = int(rng.integers(2**31 - 1))
        self.suggested = 0
        self.points: dict[int, dict[str, Any]] = {}  # trial -> {"config", "curve": {r: v}}

    def suggest(self, ctx: SuggestContext) -> dict[str, Any]:
        token = _BUILDING.set(True)
        try:
            return self._suggest(ctx.pending)
        finally:
            _BUILDING.reset(token)

    def _suggest(self, pending: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        import optuna

        sampler = optuna.samplers.TPESampler(
            seed=(self.seed + 7919 * self.suggested) % (2**31 - 1),
            n_startup_trials=int(self.opts["n_startup_trials"]),
            multivariate=bool(self.opts["multivariate"]),
            constant_liar=bool(self.opts["constant_liar"]))
        study = optuna.create_study(sampler=sampler, study_name="hpod-tpe")
        dists = _distributions(self.space)
        if self.opts["fidelities"] == "all":
            for trial in self._all_fidelities(optuna, dists):
                study.add_trial(trial)
        else:
            for config, value in self._history():
                study.add_trial(optuna.trial.create_trial(params=config, distributions=dists,
                                                          value=value))
        for config in pending:  # running trials: constant liar treats them as bad
            study.enqueue_trial(dict(config))
            study.ask(dists)
        trial = study.ask(dists)
        self.suggested += 1
        return {name: trial.params[name] for name in self.space.names}

    def _all_fidelities(self, optuna: Any, dists: dict[str, Any]) -> list[Any]:
        """Every trial with a finite point: finished at R, else pruned with its curve (steps
        are resources in millionths: Optuna wants whole steps and compares only their order)."""
        out = []
        for tid in sorted(self.points):
            entry = self.points[tid]
            curve = {float(r): v for r, v in entry["curve"].items() if math.isfinite(v)}
            if not curve:
                continue
            top = max(curve)
            if top >= self.max_resource:
                out.append(optuna.trial.create_trial(params=entry["config"],
                                                     distributions=dists, value=curve[top]))
            else:
                out.append(optuna.trial.create_trial(
                    params=entry["config"], distributions=dists,
                    state=optuna.trial.TrialState.PRUNED,
                    intermediate_values={round(r * 1e6): v for r, v in curve.items()}))
        return out

    def _history(self) -> list[tuple[dict[str, Any], float]]:
        """(config, value) at the highest resource with at least ``min_points`` results."""
        levels: dict[float, list[tuple[dict[str, Any], float]]] = {}
        for tid in sorted(self.points):
            entry = self.points[tid]
            for r, v in entry["curve"].items():
                if math.isfinite(v):
                    levels.setdefault(float(r), []).append((entry["config"], v))
        for r in sorted(levels, reverse=True):
            if len(levels[r]) >= self.min_points:
                return levels[r]
        return []

    def observe(self, trial_id: int, config: Mapping[str, Any], resource: float,
                value: float) -> None:
        entry = self.points.setdefault(trial_id, {"config": dict(config), "curve": {}})
        entry["curve"][repr(float(resource))] = float(value)

    def on_trial_end(self, trial_id: int, config: Mapping[str, Any], status: Status) -> None:
        return None


register_sampler("tpe")(TPESampler)
