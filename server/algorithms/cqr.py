"""Conformal quantile regression search (Salinas et al., ICML 2023), single- and multi-fidelity.

The ``cqr`` *sampler* models the objective with one gradient-boosted quantile regressor per
quantile level, widens (or narrows) the symmetric quantile pairs by split conformal prediction
once there are enough observations, and proposes the candidate whose randomly chosen quantile is
lowest ("Thompson sampling over quantiles"). Any scheduler whose settings say
``sampler: cqr`` uses it; the ``cqr`` *algorithm* is single-fidelity search (every trial
trains to the maximum resource) with this sampler. The method is Salinas et
al., ICML 2023; the reference implementation is Syne Tune's ``CQR``.

Settings live in a nested mapping under the key ``cqr`` of the algorithm's settings (one key a
scheduler has to accept, and a Struct carries it unchanged)::

    settings: {sampler: cqr, cqr: {quantiles: 5, conformal: standard, num_candidates: 2000}}

=========================== ============== ======================================================
key                         default        meaning
=========================== ============== ======================================================
quantiles                   5              odd number of levels, interior points of a
                                           (quantiles+1)-way split of [0, 1], 2 decimals
conformal                   ``standard``   ``standard`` (Romano et al. 2019: the
                                           ⌈(n+1)·c⌉-th smallest score), ``syne_compat``
                                           (Syne Tune: ``np.quantile(E, c / (1 + 1/n))``) or
                                           ``none`` (raw quantiles)
min_samples_to_conformalize 32             conformalise only when n > this
valid_fraction              0.1            calibration share of the split (⌈f·n⌉ rows)
num_init_random_draws       5              random suggestions until this many trials have a value
num_candidates              2000           random candidates per suggestion
max_fit_samples             none           fit on a random subset of this size (bounds fit time)
refit_growth                0.2            from 32 rows on, refit once the observations since
                                           the last fit reach this share of those before it
                                           (below, at every one): ~32 + log(n/32)/log(1.2)
                                           fits in a study, not n
fit_on                      ``last_value`` ``last_value``: each trial's last observed value
                                           (the paper); ``highest_rung``: the highest resource
                                           level at least ``highest_rung_min_points`` trials
                                           reached, each trial's first value at or above it
highest_rung_min_points     10             see ``fit_on``
pending_penalty             true           exclude pending configurations from the candidates
                                           and penalise candidates near them (false: reference)
pending_radius              0.1            length scale of that penalty, in unit space
local_fraction              0.25           share of candidates that perturb the best
                                           configurations (0: reference, uniform only)
local_scale                 0.1            std of those perturbations, in unit space
local_top                   5              how many best configurations are perturbed
n_estimators, learning_rate 100, 0.1       passed to scikit-learn's GradientBoostingRegressor
max_depth, min_samples_leaf 3, 1
subsample                   1.0
=========================== ============== ======================================================

Deviations from the reference, all deliberate: every random draw (candidates, quantile picks,
the calibration split, the trees) derives from the study seed, so runs repeat exactly; fresh
candidates are drawn at every suggestion rather than once per refit; the model is refitted
when the data grew by ``refit_growth`` since the last fit (the reference refits for every
trial: most of its cost), the data of that fit saved so a restore refits the same model; the
single-fidelity
algorithm fits on finished trials only (as the paper's FIFO CQR) while a multi-fidelity
scheduler feeds every learning-curve point. The single-fidelity ``cqr`` algorithm takes the
reference's candidates and conformal rule by default (``local_fraction: 0``,
``pending_penalty: false``, ``conformal: syne_compat``; :data:`SINGLE_FIDELITY_DEFAULTS`):
measured better there; a scheduler's ``sampler: cqr`` keeps the table's defaults.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.ensemble import GradientBoostingRegressor

from .asha import ASHA
from .base import (
    Context,
    Decision,
    Job,
    Outcome,
    Sampler,
    SettingsError,
    Status,
    SuggestContext,
    check_settings,
    register_algorithm,
    register_sampler,
    rng_for,
)
from .offload import compute
from .persist import Persistent
from .random_search import RandomSearch
from .settings import ROOT, parse
from .space import Categorical, Float, Int, SearchSpace

CONFORMAL_MODES = ("standard", "syne_compat", "none")
FIT_ON = ("last_value", "highest_rung")
# A redrawn categorical in a local perturbation: most of the parent's choices survive.
LOCAL_CATEGORICAL_REDRAW = 0.2
# Random start-up draws that collide with a pending configuration are retried this often.
STARTUP_RETRIES = 100
# Below this many rows the model is refitted at every new observation, whatever refit_growth.
REFIT_ALWAYS_BELOW = 32


# --- settings -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CQRSettings:
    quantiles: int = 5
    conformal: str = "standard"
    min_samples_to_conformalize: int = 32
    valid_fraction: float = 0.1
    num_init_random_draws: int = 5
    num_candidates: int = 2000
    max_fit_samples: int | None = None
    refit_growth: float = 0.2
    fit_on: str = "last_value"
    highest_rung_min_points: int = 10
    pending_penalty: bool = True
    pending_radius: float = 0.1
    local_fraction: float = 0.25
    local_scale: float = 0.1
    local_top: int = 5
    n_estimators: int = 100
    learning_rate: float = 0.1
    max_depth: int = 3
    min_samples_leaf: int = 1
    subsample: float = 1.0

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> CQRSettings:
        """Parse ``settings["cqr"]``; a SettingsError names the offending field."""
        parsed = parse(cls, settings.get("cqr"), f"{ROOT}.cqr")
        parsed._check()
        return parsed

    def _check(self) -> None:
        if self.quantiles % 2 == 0 or not 1 <= self.quantiles <= 99:
            _fail("quantiles", f"must be an odd number between 1 and 99 (got {self.quantiles}),"
                  " so the levels form symmetric pairs around the median; 5 is usual")
        _choice("conformal", self.conformal, CONFORMAL_MODES)
        _choice("fit_on", self.fit_on, FIT_ON)
        _at_least("min_samples_to_conformalize", self.min_samples_to_conformalize, 1)
        if not 0.0 < self.valid_fraction <= 0.5:
            _fail("valid_fraction", f"must be in (0, 0.5] (got {self.valid_fraction}); 0.1 is "
                  "the reference")
        _at_least("num_init_random_draws", self.num_init_random_draws, 2)
        _at_least("num_candidates", self.num_candidates, 1)
        if self.max_fit_samples is not None:
            _at_least("max_fit_samples", self.max_fit_samples, 2)
        _at_least("highest_rung_min_points", self.highest_rung_min_points, 2)
        for name in ("local_top", "n_estimators", "max_depth", "min_samples_leaf"):
            _at_least(name, getattr(self, name), 1)
        for name in ("pending_radius", "local_scale", "learning_rate"):
            if not getattr(self, name) > 0:
                _fail(name, f"must be > 0 (got {getattr(self, name)})")
        if not 0.0 <= self.refit_growth <= 10.0:
            _fail("refit_growth", f"must be in [0, 10] (got {self.refit_growth}); 0 refits "
                  "for every suggestion")
        if not 0.0 <= self.local_fraction <= 1.0:
            _fail("local_fraction", f"must be in [0, 1] (got {self.local_fraction})")
        if not 0.0 < self.subsample <= 1.0:
            _fail("subsample", f"must be in (0, 1] (got {self.subsample})")


def _fail(name: str, message: str) -> None:
    raise SettingsError(f"algorithm.settings.cqr.{name}", message)


def _at_least(name: str, value: int, low: int) -> None:
    if value < low:
        _fail(name, f"must be >= {low} (got {value})")


def _choice(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        _fail(name, f"must be one of {list(allowed)} (got {value!r})")


# --- pure pieces: levels, conformal correction, acquisition --------------------------------


def quantile_levels(k: int) -> list[float]:
    """The interior points of a (k+1)-way split of [0, 1], rounded to 2 decimals as in the
    reference: k = 5 gives [0.17, 0.33, 0.5, 0.67, 0.83]."""
    return [round(i / (k + 1), 2) for i in range(1, k + 1)]


def pair_coverages(levels: Sequence[float]) -> list[float]:
    """Target coverage of each symmetric pair (levels[j], levels[-1-j]): 1 - 2·lo."""
    return [round(1.0 - 2.0 * levels[j], 10) for j in range(len(levels) // 2)]


def n_calibration(n: int, valid_fraction: float) -> int:
    """Calibration rows of a split, as sklearn's train_test_split counts them: ⌈f·n⌉."""
    return int(math.ceil(round(valid_fraction * n, 10)))


def conformal_correction(scores: np.ndarray, coverage: float, mode: str) -> float:
    """The amount Q a symmetric pair is widened by, from calibration conformity scores.

    ``standard`` is Romano et al.'s finite-sample quantile, the ⌈(n+1)·c⌉-th smallest score
    (the largest when that exceeds n): it guarantees coverage >= c. ``syne_compat`` is the
    authors' code, linear interpolation at c / (1 + 1/n): slightly smaller, not guaranteed.
    """
    e = np.sort(np.asarray(scores, dtype=float))
    n = len(e)
    if mode == "syne_compat":
        return float(np.quantile(e, coverage / (1.0 + 1.0 / n)))
    # The epsilon keeps an exact integer such as (n+1)·c = 4 from rounding up to 5.
    k = math.ceil((n + 1) * coverage - 1e-9)
    return float(e[min(max(k, 1), n) - 1])


def thompson_pick(preds: np.ndarray, rng: np.random.Generator,
                  penalty: np.ndarray | None = None,
                  excluded: np.ndarray | None = None) -> int:
    """Index of the candidate whose uniformly drawn quantile (plus its penalty) is smallest.
    ``excluded`` candidates are skipped unless every candidate is excluded."""
    n, k = preds.shape
    picks = rng.integers(k, size=n)
    values = preds[np.arange(n), picks]
    if penalty is not None:
        values = values + penalty
    if excluded is not None and not excluded.all():
        values = np.where(excluded, np.inf, values)
    return int(np.argmin(values))


# --- the quantile model ---------------------------------------------------------------------


@dataclasses.dataclass
class QuantileModel:
    """One GBM per level; ``corrections[j]`` widens pair j (0 when not conformalised)."""

    levels: list[float]
    models: list[GradientBoostingRegressor]
    corrections: np.ndarray
    calibration_rows: np.ndarray  # indices of the rows held out for calibration

    def predict_raw(self, x: np.ndarray) -> np.ndarray:
        return np.column_stack([m.predict(x) for m in self.models])

    def predict_picked(self, x: np.ndarray, picks: np.ndarray) -> np.ndarray:
        """Row i's corrected quantile ``picks[i]`` only: each model predicts just the rows
        that drew its level (Thompson sampling needs one quantile per candidate), the same
        numbers as ``predict(x)[i, picks[i]]`` at a fifth of the cost."""
        out = np.empty(len(x))
        k = len(self.levels)
        for j, model in enumerate(self.models):
            rows = picks == j
            if rows.any():
                out[rows] = model.predict(x[rows])
                if j < len(self.corrections):
                    out[rows] -= self.corrections[j]
                elif k - 1 - j < len(self.corrections):
                    out[rows] += self.corrections[k - 1 - j]
        return out

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Corrected quantiles, one column per level (the median is never corrected)."""
        out = self.predict_raw(x)
        k = len(self.levels)
        for j, q in enumerate(self.corrections):
            out[:, j] -= q
            out[:, k - 1 - j] += q
        return out


def fit_quantile_model(x: np.ndarray, y: np.ndarray, cfg: CQRSettings,
                       rng: np.random.Generator) -> QuantileModel:
    """Fit the GBMs and, above the threshold, the split-conformal corrections.

    As in the reference, a conformalised model is fitted on the training part only."""
    levels = quantile_levels(cfg.quantiles)
    n = len(y)
    conformalise = (cfg.conformal != "none" and n > cfg.min_samples_to_conformalize
                    and cfg.quantiles >= 3)
    n_cal = n_calibration(n, cfg.valid_fraction) if conformalise else 0
    perm = rng.permutation(n)
    cal, train = perm[:n_cal], perm[n_cal:]
    models = [_gbm(q, cfg, rng).fit(x[train], y[train]) for q in levels]
    model = QuantileModel(levels, models, np.zeros(len(levels) // 2), np.sort(cal))
    if conformalise:
        raw = model.predict_raw(x[cal])
        model.corrections = np.array([
            conformal_correction(
                np.maximum(raw[:, j] - y[cal], y[cal] - raw[:, -1 - j]), c, cfg.conformal)
            for j, c in enumerate(pair_coverages(levels))
        ])
    return model


def _gbm(alpha: float, cfg: CQRSettings, rng: np.random.Generator) -> GradientBoostingRegressor:
    return GradientBoostingRegressor(
        loss="quantile", alpha=alpha, n_estimators=cfg.n_estimators,
        learning_rate=cfg.learning_rate, max_depth=cfg.max_depth,
        min_samples_leaf=cfg.min_samples_leaf, subsample=cfg.subsample,
        random_state=int(rng.integers(2**31 - 1)),
    )


# --- configurations as columns ----------------------------------------------------------------

# A batch of configurations: per parameter, native values (Float, Int) or choice indices.
Columns = dict[str, np.ndarray]


def sample_columns(space: SearchSpace, n: int, rng: np.random.Generator) -> Columns:
    """``n`` uniform draws, vectorised, with the same distributions as ``space.sample``."""
    cols: Columns = {}
    for p in space.params:
        if isinstance(p, Categorical):
            cols[p.name] = rng.integers(len(p.choices), size=n)
        elif isinstance(p, Float):
            cols[p.name] = (np.exp(rng.uniform(math.log(p.low), math.log(p.high), n)) if p.log
                            else rng.uniform(p.low, p.high, n))
        elif p.log:
            lo, hi = math.log(p.low - 0.5 + 1e-9), math.log(p.high + 0.5)
            cols[p.name] = np.clip(np.round(np.exp(rng.uniform(lo, hi, n))), p.low,
                                   p.high).astype(np.int64)
        else:
            cols[p.name] = rng.integers(p.low, p.high + 1, size=n)
    return cols


def configs_to_columns(space: SearchSpace, configs: Sequence[Mapping[str, Any]]) -> Columns:
    cols: Columns = {}
    for p in space.params:
        if isinstance(p, Categorical):
            cols[p.name] = np.array([p.index(c[p.name]) for c in configs], dtype=np.int64)
        else:
            cols[p.name] = np.array([c[p.name] for c in configs], dtype=float)
    return cols


def column_config(space: SearchSpace, cols: Columns, i: int) -> dict[str, Any]:
    """Row ``i`` as a configuration with plain Python values."""
    out: dict[str, Any] = {}
    for p in space.params:
        v = cols[p.name][i]
        if isinstance(p, Categorical):
            out[p.name] = p.choices[int(v)]
        elif isinstance(p, Int):
            out[p.name] = int(round(float(v)))
        else:
            # exp(log(low)) can land one ulp outside the bounds; the space must contain it.
            out[p.name] = min(max(float(v), p.low), p.high)
    return out


def unit_columns(space: SearchSpace, cols: Columns) -> dict[str, np.ndarray]:
    """Numeric columns mapped to [0, 1] on each parameter's own scale."""
    return {p.name: np.array([p.to_unit(float(v)) for v in cols[p.name]], dtype=float)
            for p in space.params if not isinstance(p, Categorical)}


def encode(space: SearchSpace, cols: Columns, onehot_weight: float = 1.0) -> np.ndarray:
    """Model features: unit-scaled numerics and one-hot categoricals (weighted by
    ``onehot_weight``, so that a distance can count a changed choice as 1, not 2)."""
    units = unit_columns(space, cols)
    parts: list[np.ndarray] = []
    for p in space.params:
        if isinstance(p, Categorical):
            onehot = np.eye(len(p.choices))[cols[p.name]] * onehot_weight
            parts.append(onehot)
        else:
            parts.append(units[p.name][:, None])
    n = len(next(iter(cols.values())))
    return np.hstack(parts) if parts else np.zeros((n, 0))


def perturb_columns(space: SearchSpace, parents: Columns, n: int, cfg: CQRSettings,
                    rng: np.random.Generator) -> Columns:
    """``n`` local candidates: a random parent, numerics moved by N(0, local_scale²) in unit
    space, each categorical redrawn with a small probability."""
    k = len(next(iter(parents.values())))
    which = rng.integers(k, size=n)
    units = unit_columns(space, parents)
    cols: Columns = {}
    for p in space.params:
        if isinstance(p, Categorical):
            redraw = rng.random(n) < LOCAL_CATEGORICAL_REDRAW
            cols[p.name] = np.where(redraw, rng.integers(len(p.choices), size=n),
                                    parents[p.name][which])
        else:
            u = np.clip(units[p.name][which] + cfg.local_scale * rng.standard_normal(n), 0, 1)
            cols[p.name] = np.array([p.from_unit(float(v)) for v in u],
                                    dtype=np.int64 if isinstance(p, Int) else float)
    return cols


def concat_columns(a: Columns, b: Columns) -> Columns:
    return {name: np.concatenate([a[name], b[name]]) for name in a}


# --- the sampler --------------------------------------------------------------------------------


class CQRSampler(Persistent, Sampler):
    """Conformalised quantile-regression sampler (see the module docstring for settings).

    Observations are kept per trial as (resource, value) points; the model is a pure function
    of them and of a seed drawn once, so it is refitted lazily (also after ``restore``) and
    always comes out the same.
    """

    name = "cqr"
    # _version counts observations (the refit schedule), _fit_data is what the model was
    # fitted on: a restore refits the same model from it.
    saved = ("rng", "fit_seed", "trials", "_version", "_fit_data")
    state_version = 3

    def __init__(self, ctx: Context, rng: np.random.Generator) -> None:
        self.cfg = CQRSettings.from_settings(ctx.settings)
        self.space = ctx.space
        self.rng = rng
        self.fit_seed = int(rng.integers(2**63 - 1))
        self.trials: dict[int, dict[str, Any]] = {}  # id -> {"config", "points"}
        self._version = 0  # bumped on every change of the data
        self._fit_data: dict[str, Any] | None = None  # what the current model was fitted on
        self._model: tuple[int, QuantileModel, Columns, np.ndarray] | None = None

    # -- observations --

    def observe(self, trial_id: int, config: Mapping[str, Any], resource: float,
                value: float) -> None:
        if not math.isfinite(value):
            return  # a diverged run says nothing the quantiles could use
        entry = self.trials.setdefault(int(trial_id), {"config": dict(config), "points": []})
        points = [pt for pt in entry["points"] if pt[0] != resource]  # a re-report replaces
        points.append([float(resource), float(value)])
        points.sort(key=lambda pt: pt[0])
        # last_value needs only the latest point: keep the saved state small.
        entry["points"] = points if self.cfg.fit_on == "highest_rung" else points[-1:]
        self._version += 1

    def training_data(self) -> tuple[list[dict[str, Any]], np.ndarray]:
        """(configurations, targets) the model is fitted on, by ``fit_on``."""
        ids = sorted(self.trials)
        level = self._fit_level(ids) if self.cfg.fit_on == "highest_rung" else None
        configs, ys = [], []
        for tid in ids:
            points = self.trials[tid]["points"]
            if level is None:
                ys.append(points[-1][1])
            else:
                above = [v for r, v in points if r >= level]
                if not above:
                    continue
                ys.append(above[0])
            configs.append(self.trials[tid]["config"])
        return configs, np.array(ys, dtype=float)

    def _fit_level(self, ids: list[int]) -> float | None:
        """The highest resource that at least ``highest_rung_min_points`` trials reached."""
        reached = sorted((self.trials[t]["points"][-1][0] for t in ids), reverse=True)
        need = self.cfg.highest_rung_min_points
        return reached[need - 1] if len(reached) >= need else None

    # -- suggestions --

    def suggest(self, ctx: SuggestContext) -> dict[str, Any]:
        pending = ctx.pending
        if len(self.trials) < self.cfg.num_init_random_draws:
            return self._random_suggestion(pending)
        model, x_best, y = self._fitted()
        cand = self._candidates(x_best)
        penalty, excluded = self._pending_terms(cand, pending, y)
        x = encode(self.space, cand)
        # thompson_pick's draws and answer, predicting only the quantile each candidate drew.
        values = model.predict_picked(x, self.rng.integers(len(model.levels), size=len(x)))
        if penalty is not None:
            values = values + penalty
        if excluded is not None and not excluded.all():
            values = np.where(excluded, np.inf, values)
        return column_config(self.space, cand, int(np.argmin(values)))

    def _random_suggestion(self, pending: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        config = self.space.sample(self.rng)
        if self.cfg.pending_penalty:
            # Small discrete spaces collide easily; a redraw costs nothing.
            for _ in range(STARTUP_RETRIES):
                if all(dict(p) != config for p in pending):
                    break
                config = self.space.sample(self.rng)
        return config

    def _fitted(self) -> tuple[QuantileModel, Columns, np.ndarray]:
        """The model, the best configurations, and the targets, as of the last refit: a
        refit happens once ``refit_growth`` times its rows of new observations arrived."""
        if self._fit_data is None or self._due():
            configs, y = self.training_data()
            self._fit_data = {"configs": configs, "y": [float(v) for v in y],
                              "version": self._version}
            self._model = None
        if self._model is None:
            self._model = self._fit(self._fit_data["configs"], np.array(self._fit_data["y"]))
        _, model, parents, y = self._model
        return model, parents, y

    def _due(self) -> bool:
        assert self._fit_data is not None
        at_fit = int(self._fit_data["version"])
        since = self._version - at_fit
        # Small fits are cheap and each new point moves them most: refit every time there.
        if len(self._fit_data["y"]) < REFIT_ALWAYS_BELOW:
            return since >= 1
        return since >= max(1.0, self.cfg.refit_growth * at_fit)

    def _fit(self, configs: list[dict[str, Any]], y: np.ndarray
             ) -> tuple[int, QuantileModel, Columns, np.ndarray]:
        fit_rng = np.random.default_rng([self.fit_seed, len(y)])
        idx = np.arange(len(y))
        if self.cfg.max_fit_samples is not None and len(y) > self.cfg.max_fit_samples:
            idx = np.sort(fit_rng.choice(len(y), self.cfg.max_fit_samples, replace=False))
        cols = configs_to_columns(self.space, [configs[i] for i in idx])
        # Pure and seeded by its own generator: the service may run it in another process.
        model = compute(fit_quantile_model, encode(self.space, cols), y[idx], self.cfg,
                        fit_rng)
        best = np.argsort(y, kind="stable")[: self.cfg.local_top]
        parents = configs_to_columns(self.space, [configs[i] for i in best])
        return (self._version, model, parents, y)

    def _candidates(self, parents: Columns) -> Columns:
        n_local = int(round(self.cfg.local_fraction * self.cfg.num_candidates))
        cand = sample_columns(self.space, self.cfg.num_candidates - n_local, self.rng)
        if n_local:
            cand = concat_columns(
                cand, perturb_columns(self.space, parents, n_local, self.cfg, self.rng))
        return cand

    def _pending_terms(self, cand: Columns, pending: Sequence[Mapping[str, Any]],
                       y: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        """A penalty of up to one standard deviation of the targets, decaying with the
        distance to the nearest pending configuration, and the candidates equal to one.
        Several workers asking before new results arrive thus spread out."""
        if not self.cfg.pending_penalty or not pending:
            return None, None
        w = 1.0 / math.sqrt(2.0)  # a changed choice moves two one-hot columns
        a = encode(self.space, cand, w)
        b = encode(self.space, configs_to_columns(self.space, pending), w)
        # One pending configuration at a time: memory stays at one candidates-sized array.
        d2 = np.min([((a - row) ** 2).sum(1) for row in b], axis=0) / len(self.space)
        scale = float(np.std(y)) or 1.0
        return scale * np.exp(-0.5 * d2 / self.cfg.pending_radius**2), d2 == 0.0

    # -- persistence --

    def _derive(self) -> None:
        self._model = None  # refitted on demand from the saved fit data: the same model


register_sampler("cqr")(CQRSampler)


# --- the single-fidelity algorithm ----------------------------------------------------------


# Where the single-fidelity algorithm's defaults differ from the sampler's: the reference's
# uniform candidates, no pending penalty and its conformal rule. With a few dozen trials each
# fitted on finished trials only, these did better than the sampler's local candidates and
# penalty (bench/README.md, section 4: median final regret 0.063 vs 0.102 on branin-mf and
# 0.470 vs 0.667 on hartmann6-mf, 10 seeds, Syne Tune's CQR 0.072 and 0.542).
SINGLE_FIDELITY_DEFAULTS = {"local_fraction": 0.0, "pending_penalty": False,
                            "conformal": "syne_compat"}


class CQRSearch(RandomSearch):
    """Single-fidelity CQR: random search's trial loop with the ``cqr`` sampler, fitted on
    each finished trial's final value (not on partial curves of running trials).

    Settings: ``cqr`` (the sampler's options, with :data:`SINGLE_FIDELITY_DEFAULTS` where
    the study sets none); ``sampler``, if given, must be ``cqr``.
    """

    name = "cqr"

    def __init__(self, ctx: Context) -> None:
        check_settings(ctx.settings, ["sampler", "cqr"], self.name)
        if ctx.settings.get("sampler", "cqr") != "cqr":
            raise SettingsError("algorithm.settings.sampler",
                                "the cqr algorithm always uses the cqr sampler; use "
                                "algorithm 'random' for another sampler")
        options = ctx.settings.get("cqr")
        if options is None or isinstance(options, Mapping):  # anything else: the sampler says
            ctx = dataclasses.replace(ctx, settings={
                **ctx.settings, "cqr": {**SINGLE_FIDELITY_DEFAULTS, **(options or {})}})
        sampler = CQRSampler(ctx, rng_for(ctx.seed, 0))  # validates settings["cqr"] first
        # RandomSearch accepts only "sampler"; the sampler it builds is replaced by ours,
        # which holds the same seed-derived generator.
        super().__init__(dataclasses.replace(ctx, settings={"sampler": "cqr"}))
        self.sampler = sampler

    def on_progress(self, trial_id: int, resource: float, value: float) -> Decision:
        return Decision.CONTINUE

    def on_job_end(self, job: Job, outcome: Outcome) -> None:
        config = self.running.get(job.trial_id, job.config)
        if outcome.status is Status.COMPLETED and outcome.value is not None:
            resource = job.to_resource if outcome.resource is None else outcome.resource
            self.sampler.observe(job.trial_id, config, resource, float(outcome.value))
        super().on_job_end(job, outcome)


register_algorithm("cqr")(CQRSearch)


class ASHACQR(ASHA):
    """Multi-fidelity CQR (the paper's ASHA-CQR): asynchronous successive halving decides how
    far each trial trains; the cqr sampler, fitted on each trial's last observed value,
    proposes new trials. Stopping mode by default, as in the paper; every ASHA setting works."""

    name = "asha-cqr"

    def __init__(self, ctx: Context) -> None:
        if ctx.settings.get("sampler", "cqr") != "cqr":
            raise SettingsError("algorithm.settings.sampler", "asha-cqr always uses the cqr "
                                "sampler; use algorithm asha for another sampler")
        super().__init__(dataclasses.replace(
            ctx, settings={"mode": "stopping", **ctx.settings, "sampler": "cqr"}))


register_algorithm("asha-cqr")(ASHACQR)
