"""A multi-fidelity Parzen-estimator sampler (``mfkde``): BOHB's kernel-density proposals
(Falkner et al., ICML 2018) fitted at *every* resource level at once, each level weighted by
how far its ranking can be trusted, as MFES-HB (Li et al., AAAI 2021) and Hyper-Tune (Li et
al., VLDB 2022) weight their per-fidelity surrogates.

What it keeps: each trial's value at each rung level (the first report at or past the level,
the milestone rule of the Hyperband family). At each suggestion:

1. every level with at least ``min_points`` results (default: number of parameters + 2, BOHB's
   rule) is split into its best ``gamma`` fraction ("good") and the rest ("bad"); a product
   kernel density is fitted to each (Scott's bandwidth per dimension, at least
   ``min_bandwidth``, 0.05 of the unit range; categorical parameters use an Aitchison-Aitken
   kernel) plus one uniform pseudo-point, as Optuna's TPE prior, so that a few good points
   never rule the rest of the space out;
2. each level gets a weight: 1 for the highest fitted level, and for a lower level its
   :func:`level_trust` (the Spearman rank correlation of its values with a higher level's on the
   trials both saw, squared, clipped at 0); a level that misleads gets no say;
3. ``n_candidates`` points are drawn from the weighted mixture of the good densities (bandwidths
   widened by ``bandwidth_factor``, as BOHB does, folded back at the bounds), and the one
   with the largest weighted ``log good(x) - log bad(x)`` is proposed. A ``random_fraction``
   (a third) of suggestions, and every
   suggestion before any level can be fitted, is uniform at random.

Everything is numpy on at most a few hundred points per level: well under a millisecond per
level at 500 trials. Deterministic given the study seed and the sequence of observations; the
state is the generator and the recorded values.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import Context, Resource, Sampler, SuggestContext, register_sampler
from .hb_math import rung_levels, to_fraction
from .persist import decode, encode
from .settings import parse
from .space import Categorical, Float, Int, SearchSpace

MIN_PAIRS = 5  # trials two levels must share before their rank correlation is believed
MAX_PAIRS = 300  # the latest trials two levels share that their correlation is read from


@dataclass(frozen=True)
class MFKDESettings:
    """``algorithm.settings.mfkde``."""

    min_points: int | None = None
    gamma: float = 0.15
    n_candidates: int = 64
    random_fraction: float = 0.33
    bandwidth_factor: float = 3.0
    min_bandwidth: float = 0.05


# --- rank agreement between levels ----------------------------------------------------------


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties); 0 when either side is constant."""
    ra, rb = _ranks(a), _ranks(b)
    sa, sb = ra.std(), rb.std()
    if sa == 0 or sb == 0:
        return 0.0
    return float(((ra - ra.mean()) * (rb - rb.mean())).mean() / (sa * sb))


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks from 1, tied values sharing their average rank."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    average = np.cumsum(counts) - (counts - 1) / 2.0
    return average[inverse]


def level_trust(by_level: Mapping[float, Mapping[int, float]],
                min_pairs: int = MIN_PAIRS, max_pairs: int = MAX_PAIRS
                ) -> dict[float, tuple[float, float, int]]:
    """For each level below the highest, (rank correlation, compared level, pairs): its values
    against those of the *highest* level that shares at least ``min_pairs`` trials with it,
    on the latest ``max_pairs`` trials to reach that level (the ones most like those proposed
    now, and a cost that does not grow with the study). A level with no such partner is
    absent (its trust is unknown)."""
    levels = sorted(by_level)
    out: dict[float, tuple[float, float, int]] = {}
    for i, low in enumerate(levels[:-1]):
        lo = by_level[low]
        for high in reversed(levels[i + 1:]):
            hi = by_level[high]
            # Newest first (a dict keeps the order trials reached the level); every trial
            # that reached a level reported the levels below on the way, so this stops soon.
            common = list(itertools.islice((t for t in reversed(hi) if t in lo), max_pairs))
            common.reverse()
            if len(common) >= min_pairs:
                a = np.array([lo[t] for t in common])
                b = np.array([hi[t] for t in common])
                out[low] = (spearman(a, b), high, len(common))
                break
    return out


def agreement_with_top(trust: Mapping[float, tuple[float, float, int]], top: float
                       ) -> dict[float, float]:
    """Each level's rank agreement with the top level ``top``, from :func:`level_trust`'s
    pairwise correlations: a level compared with a lower partner ``h`` agrees with the top as
    much as ``rho(level, h) * agreement(h)`` (correlations multiply along a chain, and a level
    that ranks backwards against a backwards partner agrees with the top). A partner whose own
    agreement is unknown passes the pairwise rho on unchanged."""
    out: dict[float, float] = {}
    for level in sorted(trust, reverse=True):
        rho, against, _ = trust[level]
        out[level] = rho if against >= top or against not in out else rho * out[against]
    return out


def trust_weight(rho: float) -> float:
    """How much a level's ranking counts, from its rank correlation: rho² above 0, else 0."""
    return max(rho, 0.0) ** 2


# --- what per-level samplers share (also mfgp) -----------------------------------------------


def milestone_levels(res: Resource) -> list[float]:
    """The rung levels a study's results are kept at (r_min * eta^k, then R)."""
    return rung_levels(to_fraction(res.min_resource), to_fraction(res.max_resource),
                       int(res.eta))


def record_milestones(values: dict[float, dict[int, float]], trial_id: int, resource: float,
                      value: float) -> list[float]:
    """Keep ``value`` as the trial's value at every level it reached and had none yet (the
    first report at or past a level, the milestone rule); the levels that got it."""
    added = []
    for level, seen in values.items():
        if resource >= level and trial_id not in seen:
            seen[trial_id] = float(value)
            added.append(level)
    return added


def to_raw(space: SearchSpace, config: Mapping[str, Any]) -> list[float]:
    """A configuration as a point: numerics on the unit scale, categoricals as choice
    indexes."""
    return [float(p.index(config[p.name])) if isinstance(p, Categorical)
            else p.to_unit(config[p.name]) for p in space.params]


def from_raw(space: SearchSpace, x: Any) -> dict[str, Any]:
    """The configuration a point of :func:`to_raw` stands for."""
    out: dict[str, Any] = {}
    for p, u in zip(space.params, x, strict=True):
        if isinstance(p, Categorical):
            out[p.name] = p.choices[int(u)]
        else:
            assert isinstance(p, (Float, Int))
            out[p.name] = p.from_unit(float(u))
    return out


# --- the sampler ----------------------------------------------------------------------------


class MultiFidelityKDE(Sampler):
    name = "mfkde"
    uses_pending = False  # continuous draws from a density: pending trials rarely collide

    def __init__(self, ctx: Context, rng: np.random.Generator) -> None:
        self.space = ctx.space
        st = parse(MFKDESettings, ctx.settings.get("mfkde") or {}, "algorithm.settings.mfkde")
        self.opts = st
        self.min_points = int(st.min_points or len(self.space) + 2)
        self.levels = milestone_levels(ctx.resource)
        self.rng = rng
        self.values: dict[float, dict[int, float]] = {lv: {} for lv in self.levels}
        self.last_fit: dict[str, Any] = {}  # weights of the latest model, for reading
        self._configs: dict[int, np.ndarray] = {}
        self._kinds = [(p.__class__.__name__, len(p.choices) if isinstance(p, Categorical)
                        else 0) for p in self.space.params]

    # --- telling -------------------------------------------------------------------------

    def observe(self, trial_id: int, config: Mapping[str, Any], resource: float,
                value: float) -> None:
        if not math.isfinite(value):
            return
        record_milestones(self.values, trial_id, resource, value)
        if trial_id not in self._configs:
            self._configs[trial_id] = np.array(to_raw(self.space, config))

    # --- asking --------------------------------------------------------------------------

    def level_weights(self) -> dict[float, float]:
        """The weight of each level the model is fitted on (levels with enough points)."""
        fitted = [lv for lv in self.levels if len(self.values[lv]) >= self.min_points]
        if not fitted:
            return {}
        trust = level_trust(self.values)
        top = fitted[-1]
        agree = agreement_with_top(trust, self.levels[-1])
        weights = {}
        for lv in fitted:
            if lv == top:
                weights[lv] = 1.0
            elif lv in agree:
                weights[lv] = trust_weight(agree[lv])
            else:
                weights[lv] = 0.5  # unknown: half a say until a higher level can judge it
        return {lv: w for lv, w in weights.items() if w > 0}

    def suggest(self, ctx: SuggestContext) -> dict[str, Any]:
        u = float(self.rng.random())
        weights = self.level_weights()
        if not weights or u < self.opts.random_fraction:
            self.last_fit = {"model": False, "weights": {}}
            return self.space.sample(self.rng)
        models = [(w, *self._fit(lv)) for lv, w in weights.items()]
        self.last_fit = {"model": True, "weights": {repr(lv): round(w, 4)
                                                      for lv, w in weights.items()}}
        cands = self._candidates(models)
        score = np.zeros(len(cands))
        for w, good, bad in models:
            score += w * (good.logpdf(cands) - bad.logpdf(cands))
        return from_raw(self.space, cands[int(np.argmax(score))])

    def _fit(self, level: float) -> tuple[_KDE, _KDE]:
        entries = sorted((v, t) for t, v in self.values[level].items())
        x = np.array([self._configs[t] for _, t in entries])
        n_good = max(2, math.ceil(self.opts.gamma * len(x)))
        n_good = min(n_good, len(x) - 2)
        return (_KDE(x[:n_good], self._kinds, self.opts.min_bandwidth),
                _KDE(x[n_good:], self._kinds, self.opts.min_bandwidth))

    def _candidates(self, models: list[tuple[float, _KDE, _KDE]]) -> np.ndarray:
        w = np.array([m[0] for m in models])
        which = self.rng.choice(len(models), size=self.opts.n_candidates, p=w / w.sum())
        counts = np.bincount(which, minlength=len(models))
        return np.concatenate([models[m][1].sample(self.rng, int(k), self.opts.bandwidth_factor)
                               for m, k in enumerate(counts) if k])

    # --- state ---------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {"rng": encode(self.rng), "values": encode(self.values),
                "configs": {str(t): x.tolist() for t, x in self._configs.items()}}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.rng = decode(state["rng"], self.rng)
        self.values = decode(state["values"])
        self._configs = {int(t): np.array(x) for t, x in state["configs"].items()}


class _KDE:
    """A product kernel density on the unit cube (categoricals as choice indexes)."""

    def __init__(self, x: np.ndarray, kinds: list[tuple[str, int]], min_bw: float) -> None:
        self.x, self.kinds = x, kinds
        n = len(x)
        # Scott's rule per dimension, floored so one repeated point does not collapse it.
        sd = x.std(axis=0) if n > 1 else np.full(x.shape[1], 0.3)
        self.bw = np.maximum(sd * n ** (-1.0 / (x.shape[1] + 4)), min_bw)
        self.cat = np.array([k == "Categorical" for k, _ in kinds])
        self.k = np.array([max(c, 1) for _, c in kinds], dtype=float)
        self.cat_bw = np.clip(self.bw, min_bw, 1.0)  # AA kernel: mass off the chosen index

    def logpdf(self, points: np.ndarray) -> np.ndarray:
        d = points[:, None, :] - self.x[None, :, :]  # (m, n, dims)
        cont = -0.5 * (d / self.bw) ** 2 - np.log(self.bw * math.sqrt(2 * math.pi))
        same = np.abs(d) < 0.5
        cat = np.where(same, np.log1p(-self.cat_bw * (self.k - 1) / self.k),
                       np.log(self.cat_bw / self.k))
        per = np.where(self.cat, cat, cont).sum(axis=2)  # (m, n)
        # One uniform pseudo-point (density 1 on the unit cube, 1/k per categorical), as
        # Optuna's TPE prior: a few good points never rule the rest of the space out.
        prior = -np.log(self.k[self.cat]).sum() * np.ones((len(points), 1))
        per = np.concatenate([per, prior], axis=1)
        top = per.max(axis=1, keepdims=True)
        return top[:, 0] + np.log(np.exp(per - top).mean(axis=1))

    def sample(self, rng: np.random.Generator, k: int, factor: float) -> np.ndarray:
        """k points: each a kernel centre moved by the kernel widened ``factor`` times."""
        out = self.x[rng.integers(len(self.x), size=k)].copy()
        moved = _reflect(rng.normal(out, self.bw * factor))
        prior = rng.random(k) < 1.0 / (len(self.x) + 1)  # the uniform pseudo-point
        moved[prior] = rng.random((int(prior.sum()), out.shape[1]))
        jump = rng.random(out.shape) < np.minimum(self.cat_bw * factor, 1.0)
        fresh = np.floor(rng.random(out.shape) * self.k)
        out[prior] = np.floor(rng.random((int(prior.sum()), out.shape[1])) * self.k)
        return np.where(self.cat, np.where(jump, fresh, out), moved)


def _reflect(x: np.ndarray) -> np.ndarray:
    """Fold values back into [0, 1] at the bounds (clipping would pile mass on them)."""
    x = np.abs(x) % 2.0
    return np.where(x > 1.0, 2.0 - x, x)


register_sampler("mfkde")(MultiFidelityKDE)
