"""A multi-fidelity Gaussian-process sampler (``mfgp``): one GP over (configuration, resource
level) fitted on every rung-level result of every trial, proposing by expected improvement at
the maximum resource R.

Why one joint model rather than one model per level (BOHB, MFES-HB): how far a cheap level
speaks for R is then learned by the same marginal likelihood as everything else, and R's few
results and the many cheap ones meet in one prediction at R (MOBSTER and FABOLAS model the
fidelity as an input for the same reason). The covariance is the intrinsic coregionalisation
model of multi-task GPs (Bonilla et al., NIPS 2007)::

    k((x, l), (x', l')) = Matérn52_ARD(x, x') * B[l, l'] + [l = l'] s_l Matérn52_ARD'(x, x'),
    B = w wᵀ + diag(v)

on unit-scaled parameters (one-hot categoricals), with a mean and a white-noise variance per
level. The mean per level absorbs the learning curve all configurations share (everything is
worse after one epoch); ``B`` is what the study learned about its fidelities: a level whose
``w`` has R's sign and whose own ``v`` is small passes its ranking on to R; a level that ranks
backwards gets the opposite sign and still informs R, reversed; a noisy level gets a large
noise variance and says little. Before results at R exist, every level starts fully
correlated with every other (the prior a Hyperband user already holds).

The second term is each level's own departure from the shared part, with length scales of its
own (a linear model of coregionalisation with two components; in the spirit of Kennedy &
O'Hagan's autoregressive co-kriging, Biometrika 2000, where R = ρ · lower level + a
discrepancy with its own smoothness). Without it a level could only differ from R through
``v`` at the shared length scales, so a smooth departure (an optimum that moves with
the resource, as in the augmented Branin; a learning rate that speeds early epochs and hurts
the end) was fitted as a near-perfect correlation and R predicted as a copy of the cheap
level. Measured on the six analytic problems of ``bench/mf_suite.py`` (30 seeds, ``auto``), the
own parts cut the median regret at half the budget on four (0.030 → 0.002 where the learning
rate changes the curve's shape, 0.39 → 0.21 with noisy low levels), left one where it was and
cost one (DESIGN.md, "auto").

Costs, so that it can sit behind a service: the hyperparameters are MAP estimates (BoTorch's
dimension-scaled log-normal prior on the length scales, Gamma(1.1, 0.05) on each noise) by
L-BFGS on the exact marginal likelihood, torch computing the gradient, on at most
``fit_rows`` rows (the highest levels first), at every new result below
``REFIT_ALWAYS_BELOW`` results and then once they grew by ``refit_growth`` (a few dozen fits
in a 500-trial study), starting from the last length scales, through
:func:`~.offload.compute` (a fit process in the service). Between fits a suggestion conditions
the GP on at most ``max_rows`` rows (the highest levels first, each level's best and an even
spread of the rest, chosen from a bounded set kept per level as results arrive: the cost of a
suggestion does not grow with the study) in numpy, one Cholesky factorisation, and scores
``n_candidates`` points: half uniform, half Gaussian moves around the five configurations
with the best predicted value at R, then a finer round of moves around the best-scored
candidates. Running trials without a result are added at R at their predicted mean ("kriging
believer"), so workers asking together spread out. ``random_fraction`` of suggestions, and
every one before ``n_init`` trials have a result, are uniform.

Deterministic given the study seed and the sequence of observations: the fit runs on one
thread with no random restarts (bit for bit repeatable), its result is saved, and a restore
conditions on the same rows.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.linalg import cho_solve, cholesky, solve_triangular
from scipy.special import ndtr

from .base import Context, Sampler, SuggestContext, register_sampler
from .mfkde import from_raw, milestone_levels, record_milestones, to_raw
from .offload import compute
from .persist import decode, encode
from .settings import parse
from .space import Categorical, Int

JITTER = 1e-6
# A categorical parameter is redrawn with this probability in a local move.
CATEGORICAL_REDRAW = 0.2
# Scales (unit space) of the local moves: a mix, so both a basin and its bottom are found.
LOCAL_SCALES = (0.02, 0.06, 0.15)
TOP_PARENTS = 5
MAX_FIT_STEPS = 100
# Below this many results the hyperparameters are refitted at every new one (fits are cheap
# there, and each result moves them most).
REFIT_ALWAYS_BELOW = 32
# Rank of the learned covariance between levels (it may be negative: a level that ranks
# backwards then still informs R, reversed).
LEVEL_RANK = 1
# Each level's own part starts this much smoother (in log length scale) than the shared one
# and with this small a variance: a level departs from the others in a few broad ways (an
# optimum moved, a hyperparameter that matters more late) before any fine ones.
OWN_SMOOTHER = 1.0
OWN_VARIANCE0 = 0.01


@dataclass(frozen=True)
class MFGPSettings:
    """``algorithm.settings.mfgp``."""

    n_init: int | None = None  # default: number of parameters + 2
    n_candidates: int = 512
    random_fraction: float = 0.05
    max_rows: int = 300
    fit_rows: int = 128
    refit_growth: float = 0.25


# --- the model --------------------------------------------------------------------------------


def _matern52(d: np.ndarray) -> np.ndarray:
    """Matérn-5/2 correlation of scaled distances (in place: ``d`` is consumed)."""
    d *= math.sqrt(5.0)
    out = np.exp(-d)
    out *= 1.0 + d + d * d / 3.0
    return out


def _scaled_dist(a: np.ndarray, b: np.ndarray, ls: np.ndarray) -> np.ndarray:
    a, b = a / ls, b / ls
    d2 = a @ b.T
    d2 *= -2.0
    d2 += (a * a).sum(1)[:, None]
    d2 += (b * b).sum(1)[None, :]
    np.maximum(d2, 0.0, out=d2)
    return np.sqrt(d2, out=d2)


def kernel(a: np.ndarray, b: np.ndarray, hyper: Mapping[str, Any]) -> np.ndarray:
    """The covariance between rows ``a`` and ``b`` (columns: the configuration's features,
    then the level's index): Matérn-5/2 over the configuration times the levels'
    covariance."""
    ls = np.asarray(hyper["lengthscale"], dtype=float)
    out = _matern52(_scaled_dist(a[:, :-1], b[:, :-1], ls))
    la, lb = a[:, -1].astype(int), b[:, -1].astype(int)
    out *= np.asarray(hyper["levels"])[la][:, lb]
    if "own_lengthscale" in hyper:  # absent from a fit saved before levels had own parts
        own = _matern52(_scaled_dist(a[:, :-1], b[:, :-1],
                                     np.asarray(hyper["own_lengthscale"], dtype=float)))
        own *= la[:, None] == lb[None, :]
        own *= np.asarray(hyper["own"])[la][:, None]
        out += own
    return out


def fit_hyperparameters(x: np.ndarray, y: np.ndarray, n_levels: int, seed: int,
                        start: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Maximum-a-posteriori hyperparameters of :func:`kernel` for standardised ``y``: L-BFGS
    on the exact log marginal likelihood (torch computes its gradient), with BoTorch's
    dimension-scaled log-normal prior on the length scales and its Gamma(1.1, 0.05) prior on
    the noise. Length scales start where ``start`` (the previous fit) ended. Pure, and
    bit-for-bit repeatable (one thread, no random restarts): a restored study must refit
    exactly what the live one did, and the service may run it in another process."""
    import torch

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # a parallel reduction's rounding varies between runs
        return _fit(x, y, n_levels, np.random.default_rng(seed), start)
    finally:
        torch.set_num_threads(threads)


def _fit(x: np.ndarray, y: np.ndarray, n_levels: int, rng: np.random.Generator,
         start: Mapping[str, Any] | None) -> dict[str, Any]:
    import torch
    from scipy.optimize import minimize

    dims = x.shape[1] - 1
    rank = min(LEVEL_RANK, n_levels)
    tx = torch.as_tensor(x, dtype=torch.float64)
    ty = torch.as_tensor(y, dtype=torch.float64)
    feats, lvl = tx[:, :dims], tx[:, dims].long()
    same_level = (lvl[:, None] == lvl[None, :]).to(torch.float64)
    ls_mu, ls_sd = math.sqrt(2) + 0.5 * math.log(max(dims, 1)), math.sqrt(3)
    # Packed parameters: log length scales, the levels' factor (n_levels x rank), log of
    # v (B's diagonal), the levels' means, log noise per level (a cheap level is often
    # noisier than R); then the levels' own parts (below).
    ls0 = (np.log(start["lengthscale"]) if start is not None
           else np.full(dims, ls_mu - ls_sd ** 2 / 2))  # the prior's mode
    # Every level starts fully correlated with every other: the data must show otherwise.
    factor0 = np.full((n_levels, rank), 1.0 / math.sqrt(rank))
    factor0 += 0.01 * rng.standard_normal(factor0.shape)  # break the rank symmetry
    means0 = [float(ty[lvl == i].mean()) if bool((lvl == i).any()) else 0.0
              for i in range(n_levels)]
    theta0 = np.concatenate([ls0, factor0.ravel(), np.full(n_levels, math.log(0.05)),
                             means0, np.full(n_levels, math.log(1e-2))])
    n_base = len(theta0)
    # Then each level's own part: log length scales, log variance per level.
    own_ls0 = (np.log(start["own_lengthscale"]) if start is not None and "own_lengthscale" in start
               else ls0 + OWN_SMOOTHER)
    theta0 = np.concatenate([theta0, own_ls0, np.full(n_levels, math.log(OWN_VARIANCE0))])

    def unpack(t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        i = dims + n_levels * rank
        ls = torch.exp(t[:dims])
        factor = t[dims:i].reshape(n_levels, rank)
        own = torch.exp(t[i:i + n_levels])
        means = t[i + n_levels:i + 2 * n_levels]
        noise = torch.exp(t[i + 2 * n_levels:n_base]) + 1e-6
        return ls, factor @ factor.T + torch.diag(own), means, noise

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        t = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
        ls, levels, means, noise = unpack(t)
        k = _torch_matern52(torch.cdist(feats / ls, feats / ls)) * levels[lvl][:, lvl]
        own_ls, own_var = torch.exp(t[n_base:n_base + dims]), torch.exp(t[n_base + dims:])
        k = k + (_torch_matern52(torch.cdist(feats / own_ls, feats / own_ls))
                 * same_level * own_var[lvl][:, None])
        k = k + torch.diag(noise[lvl] + JITTER)
        chol, info = torch.linalg.cholesky_ex(k)
        if int(info) != 0:
            return 1e10, np.zeros_like(theta)
        r = (ty - means[lvl]).reshape(-1, 1)
        alpha = torch.cholesky_solve(r, chol)
        nll = 0.5 * (r * alpha).sum() + torch.log(torch.diagonal(chol)).sum()
        log_ls = torch.cat([t[:dims], t[n_base:n_base + dims]])
        nll = nll + (0.5 * ((log_ls - ls_mu) / ls_sd) ** 2 + log_ls).sum()  # log-normal
        nll = nll - (0.1 * torch.log(noise) - 0.05 * noise).sum()  # Gamma(1.1, 0.05)
        nll.backward()
        assert t.grad is not None
        return float(nll.detach()), t.grad.numpy().copy()

    bounds = ([(-5.0, 5.0)] * dims + [(-10.0, 10.0)] * (n_levels * rank)
              + [(-12.0, 3.0)] * n_levels + [(-10.0, 10.0)] * n_levels + [(-14.0, 2.0)] * n_levels)
    bounds += [(-5.0, 5.0)] * dims + [(-12.0, 3.0)] * n_levels
    res = minimize(loss, theta0, jac=True, method="L-BFGS-B", bounds=bounds,
                   options={"maxiter": MAX_FIT_STEPS})
    with torch.no_grad():
        ls, levels, means, noise = unpack(torch.as_tensor(res.x))
        return {"lengthscale": ls.tolist(), "levels": levels.tolist(), "means": means.tolist(),
                "noise": noise.tolist(),
                "own_lengthscale": np.exp(res.x[n_base:n_base + dims]).tolist(),
                "own": np.exp(res.x[n_base + dims:]).tolist()}


def _torch_matern52(d: Any) -> Any:
    import torch

    s = math.sqrt(5.0) * d
    return (1.0 + s + s * s / 3.0) * torch.exp(-s)


class Posterior:
    """The GP conditioned on rows ``x`` with targets ``y`` under fixed hyperparameters."""

    def __init__(self, x: np.ndarray, y: np.ndarray, hyper: Mapping[str, Any]) -> None:
        self.x, self.hyper = x, hyper
        k = kernel(x, x, hyper)
        k[np.diag_indices_from(k)] += np.asarray(hyper["noise"])[x[:, -1].astype(int)] + JITTER
        self.chol = cholesky(k, lower=True)
        self.means = np.asarray(hyper["means"])
        self.alpha = cho_solve((self.chol, True), y - self.means[x[:, -1].astype(int)])
        # Predictions are asked for at R only: the top level's variance.
        self.prior_var = np.asarray(hyper["levels"])[-1, -1] + (
            hyper["own"][-1] if "own" in hyper else 0.0)

    def predict(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation of the latent function at rows ``q``."""
        ks = kernel(q, self.x, self.hyper)
        mean = self.means[-1] + ks @ self.alpha
        v = solve_triangular(self.chol, ks.T, lower=True)
        var = np.maximum(self.prior_var - (v * v).sum(0), 1e-12)
        return mean, np.sqrt(var)


# --- the rows a suggestion conditions on ------------------------------------------------------

_MASK = (1 << 64) - 1


def _mix(n: int, salt: int) -> int:
    """SplitMix64 of (n, salt): the reservoir's coin, a function of the position alone, so the
    choice is repeatable without a random state to save."""
    z = (n * 0x9E3779B97F4A7C15 + salt * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


class KeptRows:
    """One level's results that the model may use, bounded: the ``best`` lowest values exactly
    and a uniform sample of the others (reservoir sampling, Vitter's algorithm R), so that a
    suggestion costs the same at a hundred results as at a hundred thousand. Until the level
    has ``best + sample`` results it keeps every one."""

    def __init__(self, best: int, sample: int, salt: int) -> None:
        self.cap_best, self.cap_sample, self.salt = best, sample, salt
        self.best: list[tuple[float, int]] = []  # heap of (-value, -trial): the worst on top
        self.sample: list[tuple[int, float]] = []  # (trial, value)
        self.offered = 0  # results that have left (or never entered) the best

    def add(self, trial: int, value: float) -> None:
        heapq.heappush(self.best, (-value, -trial))
        if len(self.best) > self.cap_best:
            v, t = heapq.heappop(self.best)
            self._offer(-t, -v)

    def _offer(self, trial: int, value: float) -> None:
        self.offered += 1
        if len(self.sample) < self.cap_sample:
            self.sample.append((trial, value))
            return
        j = _mix(self.offered, self.salt) % self.offered
        if j < self.cap_sample:
            self.sample[j] = (trial, value)

    def by_value(self) -> list[tuple[int, float]]:
        """The kept (trial, value) pairs, lowest value first."""
        kept = [(-t, -v) for v, t in self.best] + self.sample
        return sorted(kept, key=lambda tv: (tv[1], tv[0]))

    def state(self) -> list[Any]:
        return [self.best, self.sample, self.offered]

    def restore(self, saved: Sequence[Any]) -> None:
        best, sample, offered = saved
        self.best = [(float(v), int(t)) for v, t in best]  # a heap stays a heap
        self.sample = [(int(t), float(v)) for t, v in sample]
        self.offered = int(offered)


def thin(rows: list[tuple[int, float]], n: int) -> list[tuple[int, float]]:
    """At most ``n`` of ``rows`` (sorted by value): the best half of ``n``, then an even spread
    of the rest, so the model sees the good region closely and the whole range."""
    if len(rows) <= n:
        return rows
    if n <= 0:
        return []
    keep = rows[: n // 2]
    rest = rows[n // 2:]
    step = len(rest) / (n - len(keep))
    return keep + [rest[int(i * step)] for i in range(n - len(keep))]


def expected_improvement(mean: np.ndarray, sd: np.ndarray, best: float) -> np.ndarray:
    z = (best - mean) / sd
    return sd * (z * ndtr(z) + np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi))


# --- the sampler ----------------------------------------------------------------------------


class MultiFidelityGP(Sampler):
    name = "mfgp"

    def __init__(self, ctx: Context, rng: np.random.Generator) -> None:
        self.space = ctx.space
        st = parse(MFGPSettings, ctx.settings.get("mfgp") or {}, "algorithm.settings.mfgp")
        self.opts = st
        self.n_init = int(st.n_init or len(self.space) + 2)
        self.levels = milestone_levels(ctx.resource)
        self.rng = rng
        self.values: dict[float, dict[int, float]] = {lv: {} for lv in self.levels}
        # Per level, the results a suggestion may condition on (a bounded choice of them).
        self.kept = [self._new_kept(i) for i in range(len(self.levels))]
        self.configs: dict[int, list[float]] = {}  # trial -> raw point (unit or choice index)
        self.rows = 0  # results recorded; the refit schedule counts them
        self.hyper: dict[str, Any] | None = None
        self.fitted_at = 0  # rows when the hyperparameters were fitted
        self.last_fit: dict[str, Any] = {}

    # --- telling -------------------------------------------------------------------------

    def observe(self, trial_id: int, config: Mapping[str, Any], resource: float,
                value: float) -> None:
        if not math.isfinite(value):
            return
        for level in record_milestones(self.values, trial_id, resource, value):
            self.kept[self.levels.index(level)].add(trial_id, float(value))
            self.rows += 1
        if trial_id not in self.configs:
            self.configs[trial_id] = to_raw(self.space, config)

    def _features(self, raw: np.ndarray) -> np.ndarray:
        """Model inputs of raw points: unit numerics (integers snapped to the values they
        stand for) and one-hot categoricals."""
        parts = []
        for j, p in enumerate(self.space.params):
            col = raw[:, j]
            if isinstance(p, Categorical):
                parts.append(np.eye(len(p.choices))[col.astype(int)] / math.sqrt(2))
            elif isinstance(p, Int):
                parts.append(np.array([p.to_unit(p.from_unit(u)) for u in col])[:, None])
            else:
                parts.append(col[:, None])
        return np.hstack(parts)

    # --- asking --------------------------------------------------------------------------

    def suggest(self, ctx: SuggestContext) -> dict[str, Any]:
        u = float(self.rng.random())
        if len(self.configs) < self.n_init or u < self.opts.random_fraction:
            self.last_fit = {"model": False}
            return self.space.sample(self.rng)
        x, y, scale, trials = self._training_rows()
        self._refit_if_due(x, y)
        assert self.hyper is not None
        post = Posterior(x, y, self.hyper)
        seen = np.array([self.configs[t] for t in trials])
        seen_mean, _ = post.predict(self._at_top(seen))
        best = float(seen_mean.min())
        if ctx.pending:
            post, believed = self._believe(post, x, y, ctx.pending)
            # What a pending trial is believed to reach counts as reached: no candidate gains
            # from repeating it.
            best = min(best, believed)
        parents = seen[np.argsort(seen_mean, kind="stable")[:TOP_PARENTS]]
        cand = np.vstack([self._uniform(self.opts.n_candidates // 2),
                          self._moves(parents, self.opts.n_candidates // 2)])
        score = self._score(post, cand, best)
        finer = cand[np.argsort(-score, kind="stable")[:TOP_PARENTS]]
        cand2 = self._moves(finer, self.opts.n_candidates // 4, scale=0.3)
        score2 = self._score(post, cand2, best)
        pick = cand[int(np.argmax(score))] if score.max() >= score2.max() \
            else cand2[int(np.argmax(score2))]
        self.last_fit = {"model": True, "rows": len(y), "scale": scale,
                         "level_correlation": self._top_correlation()}
        return from_raw(self.space, pick)

    def _score(self, post: Posterior, cand: np.ndarray, best: float) -> np.ndarray:
        mean, sd = post.predict(self._at_top(cand))
        ei = expected_improvement(mean, sd, best)
        if ei.max() <= 0.0:  # far past any improvement the model believes in: optimism
            return -(mean - 2.0 * sd)
        return ei

    def _top_correlation(self) -> list[float]:
        """Each level's learned correlation with R (of the configuration-dependent part, at
        one configuration)."""
        assert self.hyper is not None
        b = np.asarray(self.hyper["levels"])
        var = np.diag(b) + np.asarray(self.hyper.get("own", np.zeros(len(b))))
        # R's own part is R's too: its correlation with itself is 1, not B's share of it.
        return [round(float(b[i, -1] / math.sqrt(var[i] * var[-1])), 4)
                for i in range(len(b) - 1)] + [1.0]

    def _at_top(self, raw: np.ndarray) -> np.ndarray:
        f = self._features(raw)
        return np.hstack([f, np.full((len(f), 1), len(self.levels) - 1.0)])

    def _new_kept(self, level: int) -> KeptRows:
        half = self.opts.max_rows // 2
        return KeptRows(half, self.opts.max_rows - half, level)

    def _training_rows(self) -> tuple[np.ndarray, np.ndarray, float, list[int]]:
        """Features (with z), standardised targets, their scale and the trials among them, for
        at most ``max_rows`` results, chosen from each level's kept ones (:class:`KeptRows`):
        the highest levels first, the lowest level keeping at least half the rows if it has
        them (cheap results are the many and say the least about R); a level cut short gives
        its best and an even spread of the rest (:func:`thin`). Costs O(max_rows) whatever
        the study's size."""
        kept = [k.by_value() for k in self.kept]
        take = [len(k) for k in kept]
        cap = self.opts.max_rows
        if sum(take) > cap:
            left = cap - min(take[0], cap // 2)
            for i in range(len(kept) - 1, 0, -1):
                take[i] = min(take[i], left)
                left -= take[i]
            take[0] = cap - sum(take[1:])
        rows: list[tuple[int, int, float]] = []  # (trial, level index, value)
        for i in range(1, len(kept)):
            rows += [(t, i, v) for t, v in sorted(thin(kept[i], take[i]))]
        rows += [(t, 0, v) for t, v in thin(kept[0], take[0])]
        raw = np.array([self.configs[t] for t, _, _ in rows])
        x = np.hstack([self._features(raw), np.array([[i] for _, i, _ in rows])])
        y = np.array([v for _, _, v in rows])
        scale = float(y.std()) or 1.0
        return x, (y - y.mean()) / scale, scale, sorted({t for t, _, _ in rows})

    def _refit_if_due(self, x: np.ndarray, y: np.ndarray) -> None:
        if self.hyper is not None and (
                self.rows < self.fitted_at * (1 + self.opts.refit_growth)
                and self.fitted_at >= REFIT_ALWAYS_BELOW or self.rows == self.fitted_at):
            return
        idx = np.arange(len(y))
        if len(y) > self.opts.fit_rows:  # the highest results, then an even spread of the rest
            order = np.argsort(-x[:, -1], kind="stable")
            half = self.opts.fit_rows // 2
            rest = order[half:]
            spread = rest[np.linspace(0, len(rest) - 1, self.opts.fit_rows - half).astype(int)]
            idx = np.sort(np.concatenate([order[:half], spread]))
        seed = int(self.rng.integers(2**31 - 1))
        self.hyper = compute(fit_hyperparameters, x[idx], y[idx], len(self.levels), seed,
                             self.hyper)
        self.fitted_at = self.rows

    def _believe(self, post: Posterior, x: np.ndarray, y: np.ndarray,
                 pending: Sequence[Mapping[str, Any]]) -> tuple[Posterior, float]:
        """The posterior with each pending configuration added at R at its predicted mean,
        and the best of those means."""
        px = self._at_top(np.array([to_raw(self.space, c) for c in pending]))
        mean, _ = post.predict(px)
        assert self.hyper is not None
        return (Posterior(np.vstack([x, px]), np.concatenate([y, mean]), self.hyper),
                float(mean.min()))

    def _uniform(self, n: int) -> np.ndarray:
        cols = [self.rng.integers(len(p.choices), size=n).astype(float)
                if isinstance(p, Categorical) else self.rng.random(n) for p in self.space.params]
        return np.column_stack(cols)

    def _moves(self, parents: np.ndarray, n: int, scale: float = 1.0) -> np.ndarray:
        """Gaussian moves of the numerics around random parents, at mixed scales; each
        categorical redrawn now and then."""
        out = parents[self.rng.integers(len(parents), size=n)].copy()
        sd = scale * np.asarray(LOCAL_SCALES)[self.rng.integers(len(LOCAL_SCALES), size=n)]
        for j, p in enumerate(self.space.params):
            if isinstance(p, Categorical):
                redraw = self.rng.random(n) < CATEGORICAL_REDRAW
                out[redraw, j] = self.rng.integers(len(p.choices), size=int(redraw.sum()))
            else:
                out[:, j] = np.clip(out[:, j] + sd * self.rng.standard_normal(n), 0.0, 1.0)
        return out

    # --- state ---------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {"rng": encode(self.rng), "values": encode(self.values),
                "kept": [k.state() for k in self.kept],
                "configs": {str(t): x for t, x in self.configs.items()},
                "rows": self.rows, "hyper": encode(self.hyper), "fitted_at": self.fitted_at}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.rng = decode(state["rng"], self.rng)
        self.values = decode(state["values"])
        self.kept = [self._new_kept(i) for i in range(len(self.levels))]
        if "kept" in state:
            for k, saved in zip(self.kept, state["kept"], strict=True):
                k.restore(saved)
        else:  # saved before results were kept per level: choose them again, oldest first
            for i, lv in enumerate(self.levels):
                for t, v in sorted(self.values[lv].items()):
                    self.kept[i].add(t, v)
        self.configs = {int(t): list(x) for t, x in state["configs"].items()}
        self.rows, self.fitted_at = int(state["rows"]), int(state["fitted_at"])
        self.hyper = decode(state["hyper"])


register_sampler("mfgp")(MultiFidelityGP)
