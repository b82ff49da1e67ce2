"""``auto``: the default algorithm. Asynchronous Hyperband whose bracket choice learns from the
study how far low-resource results can be trusted, with model-based proposals fitted on every
resource level (the ``mfgp`` sampler).

Why this shape (DESIGN.md, "auto"): asynchronous successive halving keeps every worker busy
and promotes from checkpoints; Hyperband's brackets hedge against misleading low fidelities but
spend a fixed share on every bracket whatever the study shows. Hyper-Tune (Li et al., VLDB 2022)
and MFES-HB (Li et al., AAAI 2021) measure instead how well each low level ranks configurations
against a higher one and weight brackets and surrogates by it. ``auto`` does the same:

* **trust of a level**: Spearman's rank correlation ρ of the values recorded at that rung level
  with those of the highest level that shares at least 5 trials with it, on the latest 300
  trials to reach that level (``level_trust``; a cost bounded at any study size), its
  agreement with R (ρ times the partner's own agreement when the partner is below R,
  ``agreement_with_top``), and ``q = max(agreement, 0)²``; unknown (too few pairs) counts as
  ``prior_trust`` (0.5);
* **bracket rule**: bracket b starts its trials at level b and is judged at every rung from b
  up, so its trust is ``Q_b = q_b · Π_{l > b, known} q_l`` (``chain``; off: ``Q_b = q_b``).
  Its weight is proportional to ``p_b · Q_b · Π_{b' < b} (1 − Q_b')``, with ``p_b``
  Hyperband's own bracket sizes (``sync_proportional``), mixed with a uniform ``explore``
  share (0.05) over brackets. A trusted low level takes the budget from every bracket above it
  (aggressive early stopping); a misleading one hands it to the brackets that start higher. The
  last bracket (the one that starts closest to R) has q = 1: it is the fallback when nothing
  below can be trusted. The uniform share keeps every level receiving results, so a trust
  estimate can recover;
* **rungs count near-copies once** (``duplicate_radius``, 0.075; ``distinct.py``): in a
  rung's top 1/eta, configurations within that distance of a better one in every parameter
  (unit scale) count as one entry. The model's local moves put many proposals a hair apart;
  where a low level is biased among good configurations (its optimum a few per cent of the
  range from R's), those copies would fill every cut with the low level's favourite, and the
  configurations R prefers would never reach R;
* **proposals**: ``mfgp`` (``mfgp.py``), one Gaussian process over (configuration, level)
  fitted on every result at every level, whose learned covariance between levels says how far
  each level speaks for R (it may be negative: a level that ranks backwards still informs R,
  reversed), proposing by expected improvement at R. ``sampler: mfkde`` gives BOHB-style
  kernel densities per level instead (under a millisecond per proposal where a GP takes tens).

Every bracket draw is recorded (trial, bracket, the trust it saw): :meth:`Auto.decision_log`
reads them back with the reason in words; :meth:`Auto.fidelity_report` gives the current trust
and bracket weights. Settings: ``budget`` (resource units; or the study's ``max_trials``),
``sampler`` (default ``mfgp``), ``explore``, ``prior_trust``, ``chain``,
``duplicate_radius`` (0 turns the grouping off).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .asha import AsyncHyperband
from .base import Capability, Context, Plan, SettingsError, register_algorithm
from .mfkde import MIN_PAIRS, agreement_with_top, level_trust, trust_weight
from .persist import encode
from .samplers import sampler_options
from .settings import parse

# Configurations this close (in every parameter, unit scale) count as one in a rung's top
# 1/eta (distinct.py): a little over the model's middle local move (0.06), so a proposal made
# as a refinement of a configuration mostly counts with it.
DUPLICATE_RADIUS = 0.075


@dataclass(frozen=True)
class AutoSettings:
    """``algorithm.settings`` of auto (see the module docstring)."""

    budget: float | None = None
    sampler: str = "mfgp"
    explore: float = 0.05
    prior_trust: float = 0.5
    chain: bool = True
    duplicate_radius: float = DUPLICATE_RADIUS


class Auto(AsyncHyperband):
    """Asynchronous Hyperband with trust-weighted brackets; see the module docstring."""

    saved = (*AsyncHyperband.saved, "decisions", "curves", "radius")
    state_version = 3
    name = "auto"
    capabilities = frozenset({Capability.FIDELITY})

    def __init__(self, ctx: Context) -> None:
        st = parse(AutoSettings, ctx.settings, passthrough=sampler_options(
            {"sampler": ctx.settings.get("sampler", "mfgp")}))
        for key in ("explore", "prior_trust"):
            if not 0.0 <= getattr(st, key) <= 1.0:
                raise SettingsError(f"algorithm.settings.{key}",
                                    f"must be between 0 and 1 (got {getattr(st, key)})")
        self.explore, self.prior_trust, self.chain = st.explore, st.prior_trust, st.chain
        inner = {k: v for k, v in ctx.settings.items()
                 if k not in ("explore", "prior_trust", "chain")}
        inner.update(mode="promotion", brackets="all", sampler=st.sampler,
                     duplicate_radius=st.duplicate_radius)
        super().__init__(replace(ctx, settings=inner))
        self.base = np.asarray(self.probabilities, dtype=float)
        # [trial, bracket, [agreement or None per bracket start level]] per new trial.
        self.decisions: list[list[Any]] = []
        # Per level index: trial -> its first reported value at or past that level, from the
        # whole learning curve (not only the rungs of its bracket).
        self.curves: list[dict[int, float]] = [{} for _ in self.levels]

    def restore(self, state: Mapping[str, Any]) -> None:
        version = state.get("version")
        if version in (1, 2):
            # Saved before rungs counted near-copies once: the study keeps the ranking its
            # promotions so far followed (and saves it from now on).
            state = {**state, "version": self.state_version, "radius": 0.0}
        if version == 1:  # saved before curves were kept: start from the rungs
            super().restore({**state, "curves": encode(self.curves)})
            for i, values in enumerate(self._rung_values().values()):
                self.curves[i].update(values)
            return
        super().restore(state)

    def _observe(self, tid: int, trial: Any, resource: float, value: float) -> None:
        if resource > trial.seen:
            for i, level in enumerate(self.levels):
                if level > resource:
                    break
                self.curves[i].setdefault(tid, value)
        super()._observe(tid, trial, resource, value)

    # --- the fidelity policy ----------------------------------------------------------------

    def _rung_values(self) -> dict[float, dict[int, float]]:
        out: dict[float, dict[int, float]] = {lv: {} for lv in self.levels}
        for rungs in self.rungs:
            for rung in rungs:
                out[rung.level].update(rung.values)
        return out

    def trust(self) -> dict[float, tuple[float, float, int]]:
        """Per rung level: (rank correlation, level it was compared with, pairs), from every
        trial's learning curve: a trial that started at R reported at the lower levels on the
        way, and those pairs were not selected by the lower levels' ranking (the trials that
        reached R through promotions were)."""
        return level_trust(dict(zip(self.levels, self.curves, strict=True)), MIN_PAIRS)

    def _rhos(self) -> list[float | None]:
        """Each bracket's start level's rank agreement with R (None: unknown)."""
        agree = agreement_with_top(self.trust(), self.levels[-1])
        return [round(agree[self.levels[b]], 4) if self.levels[b] in agree else None
                for b in range(self.n_brackets)]

    def bracket_trust(self, rhos: list[float | None]) -> list[float]:
        """How far each bracket's successive halving can be trusted: a bracket that starts at
        level b is judged at every rung from b up to R, so its trust is the product of those
        levels' q (a misleading level 3 spoils bracket 0 even when level 1 ranks well)."""
        own = [self.prior_trust if r is None else trust_weight(r) for r in rhos]
        own[-1] = 1.0  # the bracket that starts at R judges nothing early: the fallback
        if not self.chain:
            return own
        # Above the start level only evidence counts: an unknown level does not discount.
        known = [1.0 if r is None else trust_weight(r) for r in rhos]
        known[-1] = 1.0
        out, above = list(own), 1.0
        for b in range(self.n_brackets - 1, -1, -1):
            out[b] = own[b] * above
            above *= known[b]
        return out

    def weights(self, rhos: list[float | None] | None = None) -> np.ndarray:
        """The bracket probabilities the rule gives for these correlations (the current ones
        by default)."""
        rhos = self._rhos() if rhos is None else rhos
        q = self.bracket_trust(rhos)
        w = np.empty(self.n_brackets)
        distrust_below = 1.0
        for b in range(self.n_brackets):
            w[b] = self.base[b] * q[b] * distrust_below
            distrust_below *= 1.0 - q[b]
        # The fallback bracket has q = 1, so the sum is positive.
        return (1.0 - self.explore) * w / w.sum() + self.explore / self.n_brackets

    def draw_bracket(self) -> int:
        rhos = self._rhos()
        cumulative = np.cumsum(self.weights(rhos))
        u = float(self.bracket_rng.random())
        b = min(int(np.searchsorted(cumulative, u, side="right")), self.n_brackets - 1)
        self.decisions.append([len(self.trials), b, rhos])
        return b

    # --- reading ----------------------------------------------------------------------------

    def decision_log(self) -> list[dict[str, Any]]:
        """Each new trial's bracket and why, oldest first (for ``study show`` and plots)."""
        return [{"trial": t, "bracket": b, "start_resource": self.levels[b],
                 "why": self._why(b, rhos)} for t, b, rhos in self.decisions]

    def _why(self, b: int, rhos: list[float | None]) -> str:
        known = [(self.levels[i], r) for i, r in enumerate(rhos) if r is not None]
        # The weights follow from the recorded agreements and the settings: recomputed here.
        drew = (f"drew bracket {b} (starts at r={self.levels[b]:g}, probability "
                f"{float(self.weights(rhos)[b]):.2f})")
        if not known:
            return ("no level has enough paired results yet: Hyperband's bracket shares, "
                    f"tilted to the cheapest start by the prior trust; {drew}")
        seen = ", ".join(f"r={lv:g}: rho={r:+.2f}" for lv, r in known)
        return f"rank agreement with R {seen}; {drew}"

    def fidelity_report(self) -> dict[str, Any]:
        """The current trust per level and the bracket weights it gives."""
        trust = self.trust()
        agree = agreement_with_top(trust, self.levels[-1])
        return {
            "trust": [{"resource": lv, "rho": round(r, 4), "against": h, "pairs": n,
                       "agreement": round(agree[lv], 4)}
                      for lv, (r, h, n) in sorted(trust.items())],
            "bracket_weights": [round(float(w), 4) for w in self.weights()],
            "bracket_start": [self.levels[b] for b in range(self.n_brackets)],
        }

    def plan(self) -> Plan:
        """Asynchronous Hyperband's plan with today's bracket weights, and the rule in words."""
        saved = self.probabilities
        self.probabilities = [float(w) for w in self.weights()]
        try:
            plan = super().plan()
        finally:
            self.probabilities = saved
        notes = (
            "auto: asynchronous Hyperband (promotion from checkpoints) with "
            f"{self.sampler.name} proposals fitted on every resource level",
            "bracket b is drawn with weight p_b * Q_b * prod_{b'<b}(1 - Q_b') (p: Hyperband's "
            f"bracket sizes), mixed with {self.explore:g} uniform; Q_b = q of its start level"
            + (" times q of every known level above it" if self.chain else "")
            + "; q = max(a, 0)^2, a = the level's rank agreement with R (Spearman's rho with "
            "a higher level, times that level's own agreement; unknown: "
            f"{self.prior_trust:g})",
            "trusted low levels -> cheap early stopping; misleading ones -> brackets that "
            "start near the maximum resource",
            (f"a rung's top 1/eta counts configurations within {self.radius:g} of a better "
             "one (every parameter, unit scale) as one entry" if self.radius else
             "a rung's top 1/eta counts every configuration (duplicate_radius 0)"),
            "current bracket weights: " + ", ".join(
                f"s={b} (r={self.levels[b]:g}) {w:.2f}" for b, w in enumerate(self.weights())),
        )
        return replace(plan, notes=notes)


register_algorithm("auto")(Auto)
