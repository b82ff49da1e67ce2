"""CARBS: cost-aware Pareto-region Bayesian search (Fetterman et al., "Tune As You Scale", 2023).

A local Bayesian search around the cost/performance Pareto front, after imbue-ai/carbs (Fetterman
et al., 2023). Every parameter is mapped to an unbounded *basic* space
(linear, log10 or logit, divided by a ``scale``); candidates are Gaussian steps of radius 0.3
around the Pareto groups; each is scored by

    expected improvement over the front at its predicted cost × prior weight × P(success)

with a mask for ``max_suggestion_cost``. The surrogates (performance, log cost, failure, front)
are BoTorch ``SingleTaskGP`` models with the reference's kernel (linear + Matérn-3/2, length
scale = search radius). By default their hyperparameters are *fixed* at the reference's initial
values: imbue trains them with Adam at lr 1e-4, which barely moves them, so fixing them keeps
parity, speed and determinism (``gp_fit: "mll"`` fits them with ``fit_gpytorch_mll`` instead).

Resource convention: a trial trains from 0 to ``max_resource``, unless the resource itself is a
searched parameter (``resource_param``, or a parameter named like the resource): then it trains
to that parameter's value. The cost of a trial is ``Outcome.cost`` (device seconds, the resource
or a user metric, as the service's ``cost_source`` chooses), falling back to the resource.
Values are lower-is-better, as the interface guarantees.

Cost-aware and multi-fidelity together: ``asha-carbs`` is asynchronous Hyperband whose new
trials come from the CARBS sampler (:class:`CarbsSampler`); the resource becomes an input of the
models and every rung a trial reaches is an observation with the cost measured up to it.

Fixes of the reference, each with the reference behaviour one setting away where it changes
results:

* imbue-ai/carbs#6 (empty Pareto group crash): the cheap-bucket quantile is taken over group
  mean costs and the cheapest group is always a candidate (``compat_pareto_quantile``);
* success probability uses the standard deviation, not the variance (``compat_success_variance``);
* no silent random fallback when no candidate is predicted under ``max_suggestion_cost``:
  ``cost_cap_fallback`` is ``cheapest`` (default), ``random`` (reference) or ``error``; each case
  is counted in ``events["cost_cap_unmet"]``;
* no global RNG: every draw goes through the study's ``numpy`` generator, torch's global state is
  never touched (GP fitting runs under ``torch.random.fork_rng``);
* optional global exploration for wide spaces (imbue-ai/carbs#8): a fraction of the Bayesian
  steps score candidates drawn uniformly over the whole space, with a flat prior.

``compat: true`` switches every compat flag (and ``cost_cap_fallback: random``) on at once.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import torch
from scipy.special import erfcx, ndtr
from sklearn.preprocessing import QuantileTransformer

from .asha import AsyncHyperband
from .base import (
    Algorithm,
    Capability,
    Context,
    Decision,
    Job,
    Outcome,
    Plan,
    Resource,
    Sampler,
    SettingsError,
    Status,
    SuggestContext,
    check_settings,
    register_algorithm,
    register_sampler,
    rng_for,
    rng_restore,
    rng_state,
)
from .offload import compute
from .persist import Persistent, own_state
from .settings import ROOT, parse
from .space import Categorical, Float, Int, SearchSpace

log = logging.getLogger(__name__)

TRANSFORMS = ("linear", "log", "logit")
ESTIMATORS = ("thompson", "mean")
FALLBACKS = ("cheapest", "random", "error")


class CostCapError(RuntimeError):
    """No candidate is predicted under ``max_suggestion_cost`` (with ``cost_cap_fallback:
    error``)."""


# --- settings -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CarbsConfig:
    """The algorithm's settings; names are the user-facing setting keys."""

    num_random_samples: int = 4
    search_radius: float = 0.3
    exploration_bias: float = 1.0
    candidates_per_dim: int = 100
    resample_frequency: int = 5
    max_suggestion_cost: float | None = None
    min_pareto_cost_fraction: float = 0.2
    conservative_pareto: bool = True
    clamp_pareto_value: bool = True
    pending_estimator: str = "thompson"
    gp_fit: str = "fixed"
    random_phase: str = "local"
    global_exploration_fraction: float = 0.0
    cost_cap_fallback: str = "cheapest"
    compat: bool = False
    compat_success_variance: bool = False
    compat_pareto_quantile: bool = False
    search_center: Mapping[str, float] = field(default_factory=dict)
    scale: Mapping[str, float] = field(default_factory=dict)
    transform: Mapping[str, str] = field(default_factory=dict)
    rounding: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], where: str = ROOT) -> CarbsConfig:
        """Parse CARBS's settings found at ``where`` (the top level for ``carbs``,
        ``algorithm.settings.carbs`` for the sampler); errors name the full path."""
        values = dict(settings) if isinstance(settings, Mapping) else settings
        if isinstance(values, dict) and values.get("compat"):
            # The reference's behaviour everywhere a fix changes results, unless overridden.
            for key, ref in (("compat_success_variance", True), ("compat_pareto_quantile", True),
                             ("cost_cap_fallback", "random")):
                values.setdefault(key, ref)
        cfg = parse(cls, values, where)
        cfg._check(where)
        return cfg

    def _check(self, where: str) -> None:
        def bad(key: str, why: str) -> SettingsError:
            return SettingsError(f"{where}.{key}", why)

        if int(self.num_random_samples) != self.num_random_samples or self.num_random_samples < 2:
            raise bad("num_random_samples", "must be a whole number >= 2 (4 is usual)")
        if not self.search_radius > 0:
            raise bad("search_radius", "must be > 0 (0.3 is usual)")
        if self.candidates_per_dim < 1 or self.resample_frequency < 0:
            raise bad("candidates_per_dim", "candidates_per_dim >= 1, resample_frequency >= 0")
        if self.max_suggestion_cost is not None and not self.max_suggestion_cost > 0:
            raise bad("max_suggestion_cost", "must be > 0 when set")
        if not 0 <= self.min_pareto_cost_fraction <= 1:
            raise bad("min_pareto_cost_fraction", "must be in [0, 1] (0.2 is usual)")
        if not 0 <= self.global_exploration_fraction <= 1:
            raise bad("global_exploration_fraction", "must be in [0, 1]")
        for key, value, allowed in (("pending_estimator", self.pending_estimator, ESTIMATORS),
                                    ("gp_fit", self.gp_fit, ("fixed", "mll")),
                                    ("random_phase", self.random_phase, ("local", "uniform")),
                                    ("cost_cap_fallback", self.cost_cap_fallback, FALLBACKS)):
            if value not in allowed:
                raise bad(key, f"{value!r} is not one of {list(allowed)}")


# --- basic space ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Dim:
    """One parameter's map to basic space: u = T(x) / scale, T in {identity, log10, logit10}."""

    name: str
    transform: str
    scale: float
    integer: bool
    rounding: int
    low: float
    high: float

    def raw(self, x: np.ndarray | float) -> np.ndarray:
        """T(x) without the scale; 0 and 1 map to ±inf as in the reference."""
        x = np.asarray(x, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            if self.transform == "log":
                return np.log10(x)
            if self.transform == "logit":
                return np.log10(x / (1.0 - x))
            return x

    def to_basic(self, x: np.ndarray | float) -> np.ndarray:
        return self.raw(x) / self.scale

    def from_basic(self, u: np.ndarray | float) -> np.ndarray:
        v = np.asarray(u, dtype=float) * self.scale
        with np.errstate(over="ignore"):
            if self.transform == "log":
                return np.power(10.0, v)
            if self.transform == "logit":
                return 1.0 / (np.power(10.0, -v) + 1.0)
            return v

    def round_basic(self, u: np.ndarray) -> np.ndarray:
        """Round integer parameters inside basic space, so the models score the real point."""
        if not self.integer:
            return u
        v = np.round(self.from_basic(u) / self.rounding) * self.rounding
        return self.to_basic(v)

    def to_param(self, u: float) -> int | float:
        v = float(self.from_basic(u))
        if self.integer:
            v = round(v / self.rounding) * self.rounding
            return int(min(max(v, self.low), self.high))
        return float(min(max(v, self.low), self.high))

    def bounds(self) -> tuple[float, float]:
        """Bounds in basic space, widened by 0.1 for integers (floats are poor integer bounds)."""
        pad = 0.1 if self.integer else 0.0
        return float(self.to_basic(self.low - pad)), float(self.to_basic(self.high + pad))


def build_dims(space: SearchSpace, cfg: CarbsConfig) -> list[Dim]:
    for key in ("scale", "transform", "rounding", "search_center"):
        unknown = sorted(set(getattr(cfg, key)) - set(space.names))
        if unknown:
            raise SettingsError(f"algorithm.settings.{key}", f"unknown parameters {unknown}")
    return [_build_dim(p, cfg) for p in space.params]


def _build_dim(p: Any, cfg: CarbsConfig) -> Dim:
    where = f"algorithm.settings.transform.{p.name}"
    if isinstance(p, Categorical):
        raise SettingsError(f"search_space.{p.name}", "carbs searches float and int parameters "
                            "only; fix the categorical or run one study per choice")
    integer = isinstance(p, Int)
    transform = cfg.transform.get(p.name, "log" if p.log else "linear")
    if transform not in TRANSFORMS:
        raise SettingsError(where, f"{transform!r} is not one of {list(TRANSFORMS)}")
    if transform == "log" and p.low <= 0:
        raise SettingsError(where, "a log transform needs low > 0")
    if transform == "logit" and (integer or p.low < 0 or p.high > 1):
        raise SettingsError(where, "a logit transform needs a float parameter within [0, 1]")
    rounding = int(cfg.rounding.get(p.name, 1))
    if rounding < 1 or (rounding > 1 and not integer):
        raise SettingsError(f"algorithm.settings.rounding.{p.name}",
                            "rounding is a whole number >= 1, for int parameters only")
    dim = Dim(p.name, transform, 1.0, integer, rounding, float(p.low), float(p.high))
    scale = cfg.scale.get(p.name)
    if scale is None:
        scale = _default_scale(dim, cfg.search_radius)
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise SettingsError(f"algorithm.settings.scale.{p.name}", "must be a number > 0")
    return Dim(p.name, transform, float(scale), integer, rounding, float(p.low), float(p.high))


def _default_scale(dim: Dim, radius: float) -> float:
    """The reference makes the user choose every scale. We default to a range two basic units
    wide, so the search radius reaches ~15% of the range; a linear int gets at least one
    rounding step per radius so neighbouring integers stay reachable (the README's advice)."""
    width = float(dim.raw(dim.high) - dim.raw(dim.low))
    scale = width / 2.0 if math.isfinite(width) and width > 0 else 1.0
    if dim.integer and dim.transform == "linear":
        scale = max(scale, dim.rounding / radius)
    return scale


# --- observations and Pareto groups ---------------------------------------------------------


@dataclass
class Obs:
    trial: int
    config: dict[str, Any]
    x: np.ndarray
    value: float = math.nan
    cost: float = math.nan


@dataclass
class Group:
    """Observations at the same basic input (resamples). Cost and value are member means."""

    members: list[Obs]

    @property
    def x(self) -> np.ndarray:
        return self.members[0].x

    @property
    def cost(self) -> float:
        return float(np.mean([o.cost for o in self.members]))

    @property
    def value(self) -> float:
        return float(np.mean([o.value for o in self.members]))

    @property
    def best(self) -> float:
        return min(o.value for o in self.members)


def group_observations(obs: Sequence[Obs]) -> list[Group]:
    """Merge observations whose inputs are all close, in order of first appearance."""
    groups: list[Group] = []
    reps = np.empty((len(obs), len(obs[0].x) if obs else 0))
    for o in obs:
        k = len(groups)
        close = np.flatnonzero(np.all(np.isclose(reps[:k], o.x, rtol=1e-5, atol=1e-8), axis=1))
        if close.size:
            groups[close[0]].members.append(o)
        else:
            reps[k] = o.x
            groups.append(Group([o]))
    return groups


def pareto_groups(groups: Sequence[Group], fraction: float, conservative: bool,
                  quantile_over_observations: bool = False) -> list[Group]:
    """The cost/value front over groups, cheapest first (lower value is better).

    The best group among the cheapest ``fraction`` starts the front; every costlier group that
    beats the front so far joins. ``conservative`` prefers resampled groups in the cheap bucket
    and lets a single-sample group join only if it beats the previous group's best member.
    The reference takes the quantile over individual costs, which can leave the cheap bucket
    empty (imbue-ai/carbs#6); we take it over group means and always keep the cheapest group.
    """
    if not groups:
        return []
    costs = ([o.cost for g in groups for o in g.members] if quantile_over_observations
             else [g.cost for g in groups])
    threshold = float(np.quantile(costs, fraction))
    cheap = [g for g in groups if g.cost <= threshold] or [min(groups, key=lambda g: g.cost)]
    if conservative:
        cheap = [g for g in cheap if len(g.members) > 1] or cheap
    first = min(cheap, key=lambda g: g.value)
    rest = sorted((g for g in groups if g.cost > threshold and g is not first),
                  key=lambda g: g.cost)
    front, best, best_member = [first], first.value, first.best
    for g in rest:
        bar = best_member if conservative and len(g.members) == 1 else best
        if g.value < bar:
            front.append(g)
            best, best_member = g.value, g.best
    return front


# --- acquisition pieces (pure functions, tested one by one) -------------------------------------


def expected_improvement(mu: np.ndarray, var: np.ndarray, ref: np.ndarray,
                         bias: float) -> np.ndarray:
    """EI of a higher-is-better Gaussian over ``ref + bias``: σ(φ(z) + zΦ(z)).

    Written as σφ(z)(1 + z·erfcx(−z/√2)·√(π/2)), the reference's Faddeeva form (erfcx is the
    real part of wofz on the imaginary axis), which stays finite for z ≪ 0."""
    sigma = np.sqrt(np.maximum(var, 1e-18))
    z = np.asarray((mu - ref - bias) / sigma, dtype=float)
    with np.errstate(under="ignore", over="ignore"):
        phi = np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
        # erfcx(-z/√2) overflows for large positive z, where the plain form is exact anyway.
        neg = np.minimum(z, 0.0)
        tail = phi * (1.0 + neg * erfcx(-neg / math.sqrt(2)) * math.sqrt(math.pi / 2))
        return sigma * np.where(z < 0, tail, phi + z * ndtr(z))


def success_probability(mean: np.ndarray, var: np.ndarray, compat: bool) -> np.ndarray:
    """P(label < 0) for the failure GP (labels −1 success, +1 failure). The reference passes
    the variance where the standard deviation belongs; ``compat`` keeps that."""
    scale = np.maximum(var, 1e-18) if compat else np.sqrt(np.maximum(var, 1e-18))
    return ndtr(-mean / scale)


def prior_weight(x: np.ndarray, origins: np.ndarray, radius: float) -> np.ndarray:
    """max over origins of the 1-D N(0, radius) density at the Euclidean distance (as the
    reference does; not the d-dimensional density)."""
    dist = np.linalg.norm(x[:, None, :] - origins[None, :, :], axis=-1)
    dens = np.exp(-0.5 * (dist / radius) ** 2) / (radius * math.sqrt(2 * math.pi))
    return dens.max(axis=1)


def cost_threshold(rng: np.random.Generator, low: float, high: float,
                   cap: float | None) -> float:
    """A cost drawn log-uniformly along the front (capped): the clamp's reference point."""
    log_low, log_high = math.log(low), math.log(high)
    if cap is not None:
        log_high = min(log_high, math.log(cap))
    # A cap below the cheapest front cost: draw between the two, as the reference's
    # random.uniform does with swapped bounds (numpy refuses them).
    return math.exp(rng.uniform(min(log_low, log_high), max(log_low, log_high)))


def clamp_reference(pareto_ref: np.ndarray, value_at_threshold: float) -> np.ndarray:
    """Cheap candidates must beat the front at the threshold cost: pushes the search along
    the front towards higher cost."""
    return np.maximum(pareto_ref, value_at_threshold)


def acquisition(ei: np.ndarray, prior: np.ndarray, p_success: np.ndarray,
                cost: np.ndarray, cap: float | None) -> np.ndarray:
    mask = np.ones_like(cost) if cap is None else (cost < cap).astype(float)
    return ei * prior * p_success * mask


# --- surrogate models -----------------------------------------------------------------------


def _gp(x: np.ndarray, y: np.ndarray, kernel: str, cfg: CarbsConfig) -> Any:
    """A SingleTaskGP with the reference's kernel and initial hyperparameters (noise 0.01,
    zero mean, no outcome transform: targets are already normalised). With ``gp_fit: mll`` the
    hyperparameters are then fitted; a failed fit keeps the fixed ones."""
    from botorch.exceptions.errors import ModelFittingError
    from botorch.fit import fit_gpytorch_mll
    from gpytorch.mlls import ExactMarginalLogLikelihood

    model = _gp_fixed(x, y, kernel, cfg)
    if cfg.gp_fit == "mll":
        try:
            # fit_gpytorch_mll may draw restarts from torch's global RNG: isolate and seed it.
            with warnings.catch_warnings(), torch.random.fork_rng():
                warnings.simplefilter("ignore")
                torch.manual_seed(0)
                fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
        except ModelFittingError:
            model = _gp_fixed(x, y, kernel, cfg)
    model.eval()
    return model


def _gp_fixed(x: np.ndarray, y: np.ndarray, kernel: str, cfg: CarbsConfig) -> Any:
    from botorch.models import SingleTaskGP
    from gpytorch.kernels import LinearKernel, MaternKernel, RBFKernel, ScaleKernel
    from gpytorch.likelihoods import GaussianLikelihood
    from gpytorch.means import ZeroMean
    from gpytorch.priors import GammaPrior, LogNormalPrior

    tx = torch.as_tensor(x, dtype=torch.float64)
    ty = torch.as_tensor(y, dtype=torch.float64).reshape(-1, 1)
    if kernel == "rbf":
        covar: Any = ScaleKernel(RBFKernel())
        covar.base_kernel.lengthscale = 1.0
        covar.outputscale = 1.0
    else:
        # The prior only matters to an mll fit: an unbounded linear variance makes L-BFGS
        # diverge.
        linear = LinearKernel(variance_prior=GammaPrior(2.0, 2.0))
        matern = ScaleKernel(MaternKernel(nu=1.5, ard_num_dims=x.shape[1]))
        linear.variance = 1.0
        matern.outputscale = 1.0
        matern.base_kernel.lengthscale = cfg.search_radius
        covar = linear + matern
    lik = GaussianLikelihood(noise_prior=LogNormalPrior(math.log(1e-2), 0.5))
    lik.noise = 1e-2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SingleTaskGP(tx, ty, likelihood=lik, covar_module=covar, mean_module=ZeroMean(),
                            outcome_transform=None).to(torch.float64)


def _predict(model: Any, x: np.ndarray, full_cov: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Noiseless posterior mean and variance (or covariance) of the latent function."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        post = model(torch.as_tensor(x, dtype=torch.float64))
        cov = post.covariance_matrix if full_cov else post.variance
        return post.mean.numpy().copy(), cov.numpy().copy()


class Surrogates:
    """Performance, log-cost, failure and Pareto-front models for one suggest (the reference
    rebuilds them every time, so nothing of them is state)."""

    def __init__(self, cfg: CarbsConfig, successes: Sequence[Obs], failures: Sequence[Obs],
                 pending: np.ndarray, front: Sequence[Obs], rng: np.random.Generator) -> None:
        self.cfg = cfg
        values = np.array([o.value for o in successes])
        n_q = max(int(math.sqrt(len(values))), 2)
        self.qt = QuantileTransformer(n_quantiles=min(n_q, len(values)),
                                      output_distribution="normal").fit(values.reshape(-1, 1))
        logc = np.log([o.cost for o in successes])
        self.logc_low, self.logc_span = float(logc.min()), float(np.ptp(logc)) or 1.0
        x = np.stack([o.x for o in successes])
        self.cost_gp = _gp(x, self._logcost(np.exp(logc)), "sum", cfg)
        self.out_gp = self._output_model(x, self.surrogate(values), pending, rng)
        self.fail_gp = self._failure_model(x, failures)
        pc = self._logcost(np.array([o.cost for o in front]))
        self.pareto_low, self.pareto_high = float(pc.min()), float(pc.max())
        self.pareto_gp = _gp(pc[:, None], self.surrogate(np.array([o.value for o in front])),
                             "rbf", cfg)

    def surrogate(self, values: np.ndarray) -> np.ndarray:
        """Gaussianised, higher-is-better output space (our values are lower-is-better)."""
        return -self.qt.transform(np.asarray(values, float).reshape(-1, 1)).ravel()

    def _logcost(self, cost: np.ndarray) -> np.ndarray:
        return (np.log(cost) - self.logc_low) / self.logc_span * 2.0 - 1.0

    def _cost(self, logcost: np.ndarray) -> np.ndarray:
        return np.exp((logcost + 1.0) / 2.0 * self.logc_span + self.logc_low)

    def _output_model(self, x: np.ndarray, y: np.ndarray, pending: np.ndarray,
                      rng: np.random.Generator) -> Any:
        gp = _gp(x, y, "sum", self.cfg)
        if len(pending) == 0:
            return gp
        # Pending trials become pseudo-observations (a Thompson draw or the mean), so the
        # search does not pile parallel suggestions onto the same spot.
        mean, cov = _predict(gp, pending, full_cov=True)
        if self.cfg.pending_estimator == "thompson":
            mean = mean + _cholesky(cov) @ rng.standard_normal(len(mean))
        return _gp(np.vstack([x, pending]), np.concatenate([y, mean]), "sum", self.cfg)

    def _failure_model(self, x: np.ndarray, failures: Sequence[Obs]) -> Any | None:
        if not failures:
            return None
        xf = np.vstack([x, np.stack([o.x for o in failures])])
        labels = np.concatenate([-np.ones(len(x)), np.ones(len(failures))])
        return _gp(xf, labels, "sum", self.cfg)

    def pareto_at(self, logcost: np.ndarray) -> np.ndarray:
        clamped = np.clip(logcost, self.pareto_low, self.pareto_high)
        return _predict(self.pareto_gp, clamped.reshape(-1, 1))[0]

    def pareto_at_cost(self, cost: float) -> float:
        return float(self.pareto_at(self._logcost(np.array([cost])))[0])

    def predict(self, x: np.ndarray) -> dict[str, np.ndarray]:
        mu, var = _predict(self.out_gp, x)
        logcost = _predict(self.cost_gp, x)[0]
        p_success = np.ones(len(x))
        if self.fail_gp is not None:
            fm, fv = _predict(self.fail_gp, x)
            p_success = success_probability(fm, fv, self.cfg.compat_success_variance)
        return {"mu": mu, "var": var, "cost": self._cost(logcost),
                "pareto": self.pareto_at(logcost), "p_success": p_success}


def predict_candidates(cfg: CarbsConfig, successes: Sequence[Obs], failures: Sequence[Obs],
                       pending: np.ndarray, front: Sequence[Group], cands: np.ndarray,
                       rng: np.random.Generator) -> tuple[dict[str, np.ndarray], dict]:
    """Fit the surrogates and predict at ``cands``, with the Pareto reference each candidate
    is scored against (clamped at a cost drawn from ``rng`` when ``clamp_pareto_value``).
    Pure: returns the predictions and the state of ``rng`` after its draws."""
    models = Surrogates(cfg, successes, failures, pending,
                        [o for g in front for o in g.members], rng)
    pred = models.predict(cands)
    ref = pred["pareto"]
    if cfg.clamp_pareto_value:
        c_star = cost_threshold(rng, front[0].cost, front[-1].cost, cfg.max_suggestion_cost)
        ref = clamp_reference(ref, models.pareto_at_cost(c_star))
    pred["reference"] = ref
    return pred, rng.bit_generator.state


def _cholesky(cov: np.ndarray) -> np.ndarray:
    jitter = 1e-9 * max(float(np.mean(np.diag(cov))), 1e-12)
    for _ in range(8):
        try:
            return np.linalg.cholesky(cov + jitter * np.eye(len(cov)))
        except np.linalg.LinAlgError:
            jitter *= 10
    w, v = np.linalg.eigh(cov)
    return v * np.sqrt(np.clip(w, 0, None))


# --- the search -----------------------------------------------------------------------------


@own_state
class CarbsCore:
    """The CARBS search, independent of how trials are run: suggest a configuration for a
    trial, then observe its value and cost, record a failure, or forget it."""

    def __init__(self, space: SearchSpace, settings: Mapping[str, Any],
                 rng: np.random.Generator, where: str = ROOT) -> None:
        self.cfg = CarbsConfig.from_settings(settings, where)
        self.space = space
        self.dims = build_dims(space, self.cfg)
        self.rng = rng
        bounds = np.array([d.bounds() for d in self.dims])
        self.lo, self.hi = bounds[:, 0], bounds[:, 1]
        self.fixed = self.lo == self.hi  # a Float with low == high: never moved
        self.center = self._center()
        self.successes: list[Obs] = []
        self.failures: list[Obs] = []
        self.outstanding: dict[int, Obs] = {}
        self.resample_count = 0
        bounded = int(np.sum(np.isfinite(self.lo) | np.isfinite(self.hi)))
        self.overgen = 2 ** (bounded // 2)
        self.events: dict[str, int] = {}

    @property
    def d(self) -> int:
        return len(self.dims)

    def _center(self) -> np.ndarray:
        given = self.cfg.search_center
        center = []
        for d, lo, hi in zip(self.dims, self.lo, self.hi, strict=True):
            if d.name in given:
                u = float(d.to_basic(given[d.name]))
            elif math.isfinite(lo) and math.isfinite(hi):
                u = (lo + hi) / 2.0
            else:
                u = float(d.to_basic((d.low + d.high) / 2.0))
            if not (lo <= u <= hi and math.isfinite(u)):
                raise SettingsError(f"algorithm.settings.search_center.{d.name}",
                                    "the search center must lie inside the parameter's bounds")
            center.append(u)
        return np.array(center)

    # conversions

    def to_config(self, x: np.ndarray) -> dict[str, Any]:
        return {d.name: d.to_param(float(u)) for d, u in zip(self.dims, x, strict=True)}

    def to_basic(self, config: Mapping[str, Any]) -> np.ndarray:
        return np.array([float(d.to_basic(float(config[d.name]))) for d in self.dims])

    def _count(self, event: str) -> None:
        self.events[event] = self.events.get(event, 0) + 1

    # the public steps

    def suggest(self, trial: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """A configuration for ``trial`` (remembered as pending) and what led to it."""
        # torch's thread count is the process's (its operator's) to set, never toggled here:
        # a GP of a few hundred points gains nothing from more than one thread, so run the
        # server with OMP_NUM_THREADS=1 (or torch.set_num_threads(1) once at start-up).
        x, info = self._choose()
        config = self.to_config(x)
        # Pending points sit exactly where their observation will, so a restored study (which
        # keeps configurations, not basic vectors) fits the very same models.
        self.outstanding[trial] = Obs(trial, config, self.to_basic(config))
        self._count(info["kind"])
        return config, info

    def adopt(self, trial: int, config: Mapping[str, Any]) -> None:
        """Pending ``trial`` runs ``config``, not the one :meth:`suggest` chose."""
        self.outstanding[trial] = Obs(trial, dict(config), self.to_basic(config))

    def observe(self, trial: int, config: Mapping[str, Any], value: float, cost: float) -> None:
        self.outstanding.pop(trial, None)
        obs = Obs(trial, dict(config), self.to_basic(config), float(value), float(cost))
        if math.isfinite(obs.value) and math.isfinite(obs.cost) and obs.cost > 0:
            self.successes.append(obs)
        else:  # NaN/inf values are failures, as in the reference; a cost must be > 0 for logs
            self.failures.append(obs)

    def fail(self, trial: int, config: Mapping[str, Any]) -> None:
        self.outstanding.pop(trial, None)
        self.failures.append(Obs(trial, dict(config), self.to_basic(config)))

    def forget(self, trial: int) -> None:
        """An infrastructure loss: the hyperparameters are not to blame, so no failure."""
        self.outstanding.pop(trial, None)

    # the three phases

    def _choose(self) -> tuple[np.ndarray, dict[str, Any]]:
        n = len(self.successes)
        if n < self.cfg.num_random_samples:
            if self.cfg.random_phase == "uniform":
                return self._uniform(1)[0], {"kind": "random"}
            return self._random_around(self.center[None, :]), {"kind": "random"}
        freq = self.cfg.resample_frequency
        if freq > 0 and n > (self.resample_count + 1) * freq:
            return self._resample(), {"kind": "resample"}
        return self._bayes_step()

    def _random_around(self, origins: np.ndarray, attempts: int = 8) -> np.ndarray:
        for _ in range(attempts):
            x = self._around(origins, 32 * self.overgen)
            ok = self._valid(x)
            if ok.any():
                return x[ok][0]
            self._crank()
        raise RuntimeError("carbs: no valid point near the search center after "
                           f"{attempts} attempts; check search_center, scale and bounds")

    def _resample(self) -> np.ndarray:
        """Repeat the cheapest least-sampled point of the (standard) front, to average noise."""
        front = sorted(pareto_groups(group_observations(self.successes),
                                     self.cfg.min_pareto_cost_fraction, False,
                                     self.cfg.compat_pareto_quantile), key=lambda g: g.cost)
        pending = [o.x for o in self.outstanding.values()]
        counts = [len(g.members) + sum(np.allclose(p, g.x, rtol=1e-5, atol=1e-8)
                                       for p in pending) for g in front]
        self.resample_count += 1
        return front[counts.index(min(counts))].x.copy()

    def _bayes_step(self) -> tuple[np.ndarray, dict[str, Any]]:
        cfg = self.cfg
        front = self.front_groups()
        origins = np.stack([g.x for g in front])
        n = cfg.candidates_per_dim * self.d
        is_global = cfg.global_exploration_fraction > 0 and (
            self.rng.random() < cfg.global_exploration_fraction)
        if is_global:
            cands, prior = self._uniform(n), np.ones(n)
        else:
            cands = self._around(origins, n * self.overgen)
            cands = cands[self._valid(cands)][:n]
            if len(cands) < n:
                self._crank()
            prior = prior_weight(cands, origins, cfg.search_radius)
        if len(cands) == 0:
            self._count("no_valid_candidate")
            return self._random_around(origins), {"kind": "fallback_random"}
        return self._score(cands, prior, front, is_global)

    def _score(self, cands: np.ndarray, prior: np.ndarray, front: Sequence[Group],
               is_global: bool) -> tuple[np.ndarray, dict[str, Any]]:
        cfg = self.cfg
        pending = np.array([o.x for o in self.outstanding.values()]).reshape(-1, self.d)
        # The GP fits hold the GIL for most of a suggestion: the service runs them in a fit
        # process. The generator travels there and back, so its draws are the same either way.
        pred, rng_state = compute(predict_candidates, cfg, self.successes, self.failures,
                                  pending, front, cands, self.rng)
        self.rng.bit_generator.state = rng_state
        ref = pred["reference"]
        ei = expected_improvement(pred["mu"], pred["var"], ref, cfg.exploration_bias)
        acq = acquisition(ei, prior, pred["p_success"], pred["cost"], cfg.max_suggestion_cost)
        kind = "global" if is_global else "bayes"
        cap = cfg.max_suggestion_cost
        if cap is not None and not (pred["cost"] < cap).any():
            i, kind = self._cost_cap_unmet(pred["cost"], cap)
            if i is None:
                return self._random_around(np.stack([g.x for g in front])), {"kind": kind}
        else:
            i = int(np.argmax(acq))
        info = {"kind": kind, "predicted_cost": float(pred["cost"][i]),
                "expected_improvement": float(ei[i]), "prior_weight": float(prior[i]),
                "success_probability": float(pred["p_success"][i])}
        return cands[i], info

    def _cost_cap_unmet(self, cost: np.ndarray, cap: float) -> tuple[int | None, str]:
        """The reference asserts, catches its own assertion and returns a random point without
        a word; here the event is counted and logged, and the user chooses what happens."""
        self._count("cost_cap_unmet")
        msg = (f"carbs: no candidate is predicted to cost less than max_suggestion_cost={cap:g} "
               f"(cheapest predicted: {float(cost.min()):g})")
        if self.cfg.cost_cap_fallback == "error":
            raise CostCapError(msg + "; raise max_suggestion_cost or move the search center")
        log.warning("%s; falling back to %s", msg, self.cfg.cost_cap_fallback)
        if self.cfg.cost_cap_fallback == "random":
            return None, "fallback_random"
        return int(np.argmin(cost)), "cheapest"

    # candidates

    def _around(self, origins: np.ndarray, n: int) -> np.ndarray:
        idx = self.rng.integers(len(origins), size=n)
        x = origins[idx] + self.rng.normal(0.0, self.cfg.search_radius, size=(n, self.d))
        return self._round(x)

    def _uniform(self, n: int) -> np.ndarray:
        """Uniform over the space on each parameter's own scale (global exploration)."""
        x = np.array([self.to_basic(self.space.sample(self.rng)) for _ in range(n)])
        return self._round(x)

    def _round(self, x: np.ndarray) -> np.ndarray:
        for j, d in enumerate(self.dims):
            x[:, j] = d.round_basic(x[:, j])
        x[:, self.fixed] = self.lo[self.fixed]
        return x

    def _valid(self, x: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            inside = (x > self.lo) & (x < self.hi)
        return np.all(inside | self.fixed, axis=1)

    def _crank(self) -> None:
        self.overgen = min(self.overgen * 2, 2 ** self.d)

    # reports

    def front_groups(self, conservative: bool | None = None) -> list[Group]:
        if conservative is None:
            conservative = self.cfg.conservative_pareto
        return pareto_groups(group_observations(self.successes),
                             self.cfg.min_pareto_cost_fraction, conservative,
                             self.cfg.compat_pareto_quantile)

    def pareto_front(self) -> list[tuple[int, float, float]]:
        """(first trial of the group, mean cost, mean value), cheapest first (standard rule)."""
        return [(g.members[0].trial, g.cost, g.value) for g in self.front_groups(False)]

    def pareto_trials(self) -> list[list[int]]:
        """The trials behind each point of ``pareto_front()`` (a point and its resamples)."""
        return [[o.trial for o in g.members] for g in self.front_groups(False)]

    def pareto_configs(self) -> list[dict[str, Any]]:
        """The configuration of each point of ``pareto_front()``, as the models saw it."""
        return [dict(g.members[0].config) for g in self.front_groups(False)]

    def scaling_fit(self) -> dict[str, dict[str, float]]:
        """Each parameter's least-squares line against log10(cost) over the front points, as
        in the authors' analysis notebook. For a log parameter the ``exponent`` k reads as
        param ∝ cost^k; for a linear one it is d(param)/d(log10 cost)."""
        pts = [o for g in self.front_groups(False) for o in g.members]
        if len({o.cost for o in pts}) < 2:
            return {}
        lc = np.log10([o.cost for o in pts])
        out = {}
        for j, d in enumerate(self.dims):
            raw = np.array([o.x[j] for o in pts]) * d.scale
            slope, intercept = np.polyfit(lc, raw, 1)
            out[d.name] = {"exponent": float(slope), "intercept": float(intercept),
                           "transform": d.transform}
        return out

    # persistence: configurations, not basic vectors (JSON-safe; conversions are deterministic)

    def state(self) -> dict[str, Any]:
        return {
            "successes": [[o.trial, o.config, o.value, o.cost] for o in self.successes],
            "failures": [[o.trial, o.config] for o in self.failures],
            "outstanding": [[o.trial, o.config] for o in self.outstanding.values()],
            "resample_count": self.resample_count,
            "overgen": self.overgen,
            "events": dict(self.events),
            "rng": rng_state(self.rng),
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        def obs(t: int, c: Mapping[str, Any], v: float = math.nan, k: float = math.nan) -> Obs:
            return Obs(int(t), dict(c), self.to_basic(c), float(v), float(k))

        self.successes = [obs(*row) for row in state["successes"]]
        self.failures = [obs(*row) for row in state["failures"]]
        self.outstanding = {int(t): obs(t, c) for t, c in state["outstanding"]}
        self.resample_count = int(state["resample_count"])
        self.overgen = int(state["overgen"])
        self.events = {str(k): int(v) for k, v in state["events"].items()}
        rng_restore(self.rng, state["rng"])


# --- the algorithm and the sampler ----------------------------------------------------------


class Carbs(Persistent, Algorithm):
    """Stand-alone CARBS: each trial trains from 0 to ``max_resource`` (or to its own value of
    the searched resource parameter); ``max_trials`` trials in all. ``best()`` is the lowest
    value regardless of cost; ``pareto_front()`` is the cost/value front."""

    capabilities = frozenset({Capability.PARETO})

    name = "carbs"
    saved = ("started", "running", "info", "core")
    state_version = 2

    def __init__(self, ctx: Context) -> None:
        settings = dict(ctx.settings)
        check_settings(settings, [*CarbsConfig.keys(), "resource_param"], self.name)
        if not ctx.max_trials or ctx.max_trials < 1:
            raise SettingsError("max_trials", "carbs needs max_trials >= 1 (how many trials)")
        self.max_trials = int(ctx.max_trials)
        self.max_resource = float(ctx.resource.max_resource)
        self.resource_param = self._resource_param(ctx, settings.pop("resource_param", None))
        self.core = CarbsCore(ctx.space, settings, rng_for(ctx.seed, 0))
        self.started = 0
        self.running: dict[int, dict[str, Any]] = {}
        self.info: dict[int, dict[str, Any]] = {}

    def _resource_param(self, ctx: Context, name: str | None) -> str | None:
        if name is None:
            return ctx.resource.name if ctx.resource.name in ctx.space.names else None
        if name not in ctx.space.names:
            raise SettingsError("algorithm.settings.resource_param",
                                f"{name!r} is not a parameter of the search space")
        param = ctx.space[name]
        if isinstance(param, Categorical) or not 0 < param.low <= param.high <= self.max_resource:
            raise SettingsError("algorithm.settings.resource_param",
                                f"{name!r} must be numeric within (0, max_resource]")
        return name

    def next_jobs(self, free: int) -> list[Job]:
        jobs: list[Job] = []
        while len(jobs) < free and self.started < self.max_trials:
            tid = self.started
            config, info = self.core.suggest(tid)
            self.running[tid] = config
            self.info[tid] = {k: v for k, v in info.items()
                              if not isinstance(v, float) or math.isfinite(v)}
            self.started += 1
            to = float(config[self.resource_param]) if self.resource_param else self.max_resource
            jobs.append(Job(tid, config, 0.0, to, bracket=0, rung=0))
        return jobs

    def adopt_config(self, trial_id: int, config: Mapping[str, Any]) -> bool:
        if self.resource_param:  # the job's length came from the proposal: not only its config
            return False
        self.running[trial_id] = dict(config)
        self.core.adopt(trial_id, config)
        return True

    def on_progress(self, trial_id: int, resource: float, value: float) -> Decision:
        return Decision.CONTINUE  # CARBS never stops a trial early

    def on_job_end(self, job: Job, outcome: Outcome) -> None:
        tid = job.trial_id
        config = self.running.pop(tid, job.config)
        self.info.pop(tid, None)
        if outcome.status is Status.LOST:
            self.core.forget(tid)
        elif outcome.status is Status.FAILED or outcome.value is None:
            self.core.fail(tid, config)
        else:
            self.core.observe(tid, config, float(outcome.value), _cost(job, outcome))

    def plan(self) -> Plan:
        total = None if self.resource_param else self.max_trials * self.max_resource
        notes = ("cost-aware local search around the cost/value Pareto front",)
        return Plan(total_resource=total, incremental_resource=total,
                    max_trials=self.max_trials, notes=notes)

    def done(self) -> bool:
        return self.started >= self.max_trials and not self.running

    def best(self) -> tuple[int, float] | None:
        if not self.core.successes:
            return None
        o = min(self.core.successes, key=lambda o: (o.value, o.trial))
        return o.trial, o.value

    def pareto_front(self) -> list[tuple[int, float, float]]:
        return self.core.pareto_front()

    def pareto_groups(self) -> list[list[int]]:
        """The trials of each front point (a configuration and its resamples), in the order
        of ``pareto_front()``: so a reader can match a mean cost to the trials behind it."""
        return self.core.pareto_trials()

    def pareto_configs(self) -> list[dict[str, Any]]:
        return self.core.pareto_configs()

    def scaling_fit(self) -> dict[str, dict[str, float]]:
        return self.core.scaling_fit()

    @property
    def events(self) -> dict[str, int]:
        return dict(self.core.events)


def _cost(job: Job, outcome: Outcome) -> float:
    end = outcome.resource if outcome.resource is not None else job.to_resource
    return segment_cost(job.from_resource, end, outcome.cost)


def segment_cost(from_resource: float, resource: float, cost: float | None) -> float:
    """The measured cost of a job, or the resource it trained when nothing was measured."""
    if cost is not None and math.isfinite(cost) and cost > 0:
        return float(cost)
    return float(resource) - float(from_resource)


def with_resource(space: SearchSpace, resource: Resource) -> SearchSpace:
    """The search space plus the resource, log-scaled from min to max resource: the input a
    multi-fidelity CARBS models, since the scheduler decides how far each trial trains."""
    if resource.name in space.names:
        raise SettingsError(f"search_space.{resource.name}",
                            "the scheduler decides the resource, so it cannot be searched "
                            "too; remove it from the space, or use algorithm carbs to search it")
    return SearchSpace((*space.params, Float(resource.name or "resource",
                                             float(resource.min_resource),
                                             float(resource.max_resource), log=True)))


class CarbsSampler(Persistent, Sampler):
    """CARBS as the sampler of a scheduler (``asha-carbs``, or ``sampler: carbs`` on any
    scheduler). Its settings come from ``settings["carbs"]``: the scheduler owns the top level.

    The scheduler, not CARBS, decides how far a trial trains, so the resource is one more input
    of the models (named like the resource, log-scaled over [min_resource, max_resource]). Each
    job end a scheduler reports (``on_segment``: every scheduler here does) is one
    observation: the configuration at the resource it reached, its value there, and its cost
    from scratch, the sum of what every segment of the trial cost so far (a promotion resumes
    from a checkpoint, so the segments add up to training from 0). A trial paused at a low rung
    is a cheap point of the front and the same trial promoted a dearer one; the cost model sees
    the cost measured at each rung. A suggestion is the best candidate over configuration and
    resource, returned without the resource (its pending fantasy sits at that resource).

    A trial for which a scheduler reported no segment is observed once when it completes, at
    its last point, with the resource reached as its cost.
    """

    capabilities = frozenset({Capability.PARETO})

    name = "carbs"
    uses_pending = False  # the core keeps its own pending trials (with their fantasies)
    saved = ("core", "last", "spent")
    state_version = 3  # 2: the same content written by hand; 1: before the resource was modelled

    def __init__(self, ctx: Context, rng: np.random.Generator) -> None:
        settings = ctx.settings.get("carbs", {})
        space = with_resource(ctx.space, ctx.resource)
        self.resource_name = space.names[-1]
        self.low, self.high = float(ctx.resource.min_resource), float(ctx.resource.max_resource)
        self.core = CarbsCore(space, settings, rng, f"{ROOT}.carbs")
        self.last: dict[int, tuple[float, float]] = {}  # trial -> (resource, value), last point
        self.spent: dict[int, float] = {}  # trial -> cost so far, once a segment was reported

    def suggest(self, ctx: SuggestContext) -> dict[str, Any]:
        config = self.core.suggest(ctx.trial_id)[0]  # the core tracks its own pending trials
        return {k: v for k, v in config.items() if k != self.resource_name}

    def adopt_config(self, trial_id: int, config: Mapping[str, Any]) -> None:
        pending = self.core.outstanding.get(trial_id)
        if pending is not None:  # the core's copy carries the resource it was proposed at
            self.core.adopt(trial_id, {**config,
                                       self.resource_name: pending.config[self.resource_name]})

    def observe(self, trial_id: int, config: Mapping[str, Any], resource: float,
                value: float) -> None:
        self.last[trial_id] = (float(resource), float(value))

    def on_segment(self, trial_id: int, config: Mapping[str, Any], from_resource: float,
                   resource: float, value: float, cost: float | None) -> None:
        spent = self.spent.get(trial_id, 0.0) + segment_cost(from_resource, resource, cost)
        self.spent[trial_id] = spent
        self.core.observe(trial_id, self._at(config, resource), float(value), spent)

    def on_trial_end(self, trial_id: int, config: Mapping[str, Any], status: Status) -> None:
        last = self.last.pop(trial_id, None)
        reported = self.spent.pop(trial_id, None) is not None
        if status is Status.FAILED:
            # Placed where it broke (its last point), or where every trial starts.
            self.core.fail(trial_id, self._at(config, last[0] if last else self.low))
        elif status is Status.COMPLETED and not reported and last is not None and last[0] > 0:
            self.core.observe(trial_id, self._at(config, last[0]), last[1], last[0])
        else:  # lost (not the configuration's fault), or already observed segment by segment
            self.core.forget(trial_id)

    def _at(self, config: Mapping[str, Any], resource: float) -> dict[str, Any]:
        return {**config, self.resource_name: min(max(float(resource), self.low), self.high)}

    # the front, as the Carbs algorithm serves it (points are configurations at a resource)

    def pareto_front(self) -> list[tuple[int, float, float]]:
        return self.core.pareto_front()

    def pareto_groups(self) -> list[list[int]]:
        return self.core.pareto_trials()

    def pareto_configs(self) -> list[dict[str, Any]]:
        return self.core.pareto_configs()

    def scaling_fit(self) -> dict[str, dict[str, float]]:
        return self.core.scaling_fit()


class AshaCarbs(AsyncHyperband):
    """Cost-aware and multi-fidelity together: CARBS proposes each new trial's configuration,
    asynchronous Hyperband decides how far it trains, and CARBS's cost model sees the cost the
    workers measured at every rung (see :class:`CarbsSampler`). Promotion mode and every bracket
    by default, so each rung is a job of its own and its cost is measured, not apportioned;
    every ASHA setting works (``mode: stopping`` observes each trial once, where it stopped).
    CARBS's own settings go under ``carbs``. The front's points are configurations at the
    resource they reached."""

    name = "asha-carbs"

    def __init__(self, ctx: Context) -> None:
        if ctx.settings.get("sampler", "carbs") != "carbs":
            raise SettingsError("algorithm.settings.sampler", "asha-carbs always uses the carbs "
                                "sampler; use algorithm async-hyperband for another sampler")
        super().__init__(replace(ctx, settings={**ctx.settings, "sampler": "carbs"}))


register_algorithm("carbs")(Carbs)
register_sampler("carbs")(CarbsSampler)
register_algorithm("asha-carbs")(AshaCarbs)
