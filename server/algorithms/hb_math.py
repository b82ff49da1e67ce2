"""The Hyperband family's arithmetic, shared by hyperband, asha/async-hyperband and idhb: exact
bracket tables, rung levels, bracket counts and costs, bracket probabilities for asynchronous
Hyperband, and successive halving's decision rules: the ranking of a synchronous rung and the
three quantile rules of an asynchronous one (over a plain rung or its sorted index).

Arithmetic is exact (``fractions.Fraction``, no float ``log``): s_max is the largest s with
r_min·η^s <= R, so R=243, η=3 has 6 brackets (a float log gives 5, as in Optuna). R and r_min
keep their decimal meaning (0.1 is 1/10), so R/r_min need not be a power of η.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from itertools import pairwise
from typing import Any

import numpy as np

from .base import Bracket, Resource, Rung, SettingsError
from .ordered import SortedKeys

Number = int | float | Fraction
ROUNDINGS = ("paper", "ray", "hpbandster")
RESOURCE_ROUNDINGS = ("float", "int", "round")


def to_fraction(x: float) -> Fraction:
    """The exact rational a user meant: repr() turns 0.1 into 1/10, not its binary double."""
    return exact(x, "resource")


def largest_s(r_min: Fraction, max_resource: Fraction, eta: int) -> int:
    """The largest s with r_min * eta**s <= R, exactly (a float log gives 4 for R=243, eta=3)."""
    return s_max_for(max_resource / r_min, eta)


@dataclass(frozen=True)
class ExactBracket:
    """One bracket with exact resources: ``rungs`` are (n_i, r_i) pairs."""

    s: int
    rungs: tuple[tuple[int, Fraction], ...]


def exact(x: Number, where: str) -> Fraction:
    """A user's number as the decimal it was written as: Fraction(repr(0.1)) is 1/10, while
    Fraction(0.1) is the nearest binary float, which would put R=24.3, r_min=0.1 a hair
    below 243 minimum units and lose a bracket."""
    if isinstance(x, Fraction):
        return x
    if isinstance(x, int) and not isinstance(x, bool):
        return Fraction(x)
    f = float(x)
    if not math.isfinite(f):
        raise SettingsError(where, f"must be a finite number (got {x!r})")
    return Fraction(repr(f))


def s_max_for(ratio: Fraction, eta: int) -> int:
    """The largest s with η^s <= R/r_min, by exact comparison (never a float log)."""
    s = 0
    while eta ** (s + 1) <= ratio:
        s += 1
    return s


def rung_counts(s: int, s_max: int, eta: int, rounding: str) -> list[int]:
    """n_0..n_s of bracket s under a rounding convention (see the module docstring)."""
    if rounding == "hpbandster":
        # Floor first, then scale: HpBandSter's (and the Python-2 website code's) order.
        n0 = (s_max + 1) // (s + 1) * eta**s
        return [max(n0 // eta**i, 1) for i in range(s + 1)]
    n = bracket_size(s_max, s, eta)
    if rounding == "ray":
        counts = [n]
        for _ in range(s):
            counts.append(-(-counts[-1] // eta))
        return counts
    # ⌊n/η^i⌋ equals keeping ⌊n_{i-1}/η⌋ each round (floors of floors compose).
    return [n // eta**i for i in range(s + 1)]


def round_resource(r: Fraction, mode: str) -> Fraction:
    if mode == "int":
        return Fraction(math.floor(r))
    if mode == "round":
        return Fraction(round(r))
    return r


def rung_resources(s: int, big_r: Fraction, eta: int, mode: str) -> list[Fraction]:
    rs = [round_resource(big_r / eta ** (s - i), mode) for i in range(s + 1)]
    # Rounding small fractional resources can give 0 or two equal rungs: a job of no length.
    if rs[0] <= 0 or any(a >= b for a, b in pairwise(rs)):
        raise SettingsError(
            "algorithm.settings.resource_rounding",
            f"{mode!r} rounding turns the rungs of bracket {s} into "
            f"{[float(r) for r in rs]}, which are not increasing and positive; "
            "use 'float' or a larger min_resource",
        )
    return rs


def check_choice(value: Any, allowed: tuple[str, ...], key: str) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise SettingsError(
            f"algorithm.settings.{key}", f"{value!r} is not one of {list(allowed)}"
        )
    return value


def bracket_table(
    max_resource: Number,
    eta: int,
    min_resource: Number = 1,
    rounding: str = "paper",
    resource_rounding: str = "float",
) -> tuple[ExactBracket, ...]:
    """The brackets of one Hyperband iteration, most exploratory (s = s_max) first."""
    Resource(float(max_resource), float(min_resource), eta).check()
    check_choice(rounding, ROUNDINGS, "rounding")
    check_choice(resource_rounding, RESOURCE_ROUNDINGS, "resource_rounding")
    big_r = exact(max_resource, "resource.max_resource")
    ratio = big_r / exact(min_resource, "resource.min_resource")
    eta = int(eta)
    top = s_max_for(ratio, eta)
    return tuple(
        ExactBracket(s, tuple(zip(rung_counts(s, top, eta, rounding),
                                  rung_resources(s, big_r, eta, resource_rounding),
                                  strict=True)))
        for s in range(top, -1, -1)
    )


def full_cost(b: ExactBracket) -> Fraction:
    return sum((n * r for n, r in b.rungs), Fraction(0))


def incremental_cost(b: ExactBracket) -> Fraction:
    """What a bracket trains when promoted trials resume: n_i·(r_i − r_{i−1})."""
    prev = [Fraction(0)] + [r for _, r in b.rungs[:-1]]
    return sum((n * (r - p) for (n, r), p in zip(b.rungs, prev, strict=True)), Fraction(0))


def rung_levels(r_min: Fraction, max_resource: Fraction, eta: int) -> list[float]:
    """Milestones r_min * eta**k strictly below R, then R, so every trial can end at R."""
    levels: list[float] = []
    k = 0
    while r_min * eta**k < max_resource:
        levels.append(float(r_min * eta**k))
        k += 1
    return [*levels, float(max_resource)]


def bracket_probabilities(kind: str, r_min: Fraction, max_resource: Fraction, eta: int,
                          n_brackets: int) -> list[float]:
    """P(new trial goes to bracket s) for s = 0 .. n_brackets-1 (reference §1.5).

    ``sync_proportional`` (Syne Tune): P(s) ∝ n / ((n - s) * r_s), r_s the bracket's first rung,
    i.e. proportional to the synchronous Hyperband bracket sizes. ``softmax_rungs`` (Ray):
    softmax over the number of rungs of each bracket.
    """
    if kind == "sync_proportional":
        n = n_brackets
        weights = [Fraction(n, n - s) / (r_min * eta**s) for s in range(n)]
        total = sum(weights)
        return [float(w / total) for w in weights]
    sizes = [len(rung_levels(r_min, max_resource, eta)) - s for s in range(n_brackets)]
    top = max(sizes)
    exps = [math.exp(x - top) for x in sizes]
    return [e / sum(exps) for e in exps]


# --- asynchronous successive halving: the three quantile rules -------------------------


def in_top(rule: str, tid: int, value: float, rung: Mapping[int, float], eta: int) -> bool:
    """Promotion test: is entry (tid, value) of ``rung`` (all recorded values, itself included)
    in the rung's top 1/eta?

    ``asha_floor`` (the paper): among the floor(n/eta) best, ties by trial id, so nothing leaves
    a rung before it holds eta entries. ``linear_quantile`` (Syne Tune): value <= the linear
    1/eta quantile, from 2 entries on. ``ray_percentile``: value <= the 100/eta percentile of the
    other entries (Ray's cutoff, in lower-is-better space).
    """
    if rule == "asha_floor":
        better = sum(1 for t, v in rung.items() if (v, t) < (value, tid))
        return better < len(rung) // eta
    if len(rung) < 2:
        return False
    if rule == "linear_quantile":
        return value <= float(np.quantile(list(rung.values()), 1.0 / eta))
    others = [v for t, v in rung.items() if t != tid]
    return value <= ray_cutoff(others, eta)


def ray_cutoff(previous: Sequence[float], eta: int) -> float:
    """Ray's cutoff in lower-is-better space: the 100/eta percentile of the earlier values
    (Ray takes the (1 - 1/eta) percentile of rewards; negating mirrors the percentile)."""
    return float(np.percentile(list(previous), 100.0 / eta))


def continues(rule: str, previous: Sequence[float], value: float, eta: int) -> bool:
    """Stopping test for a trial reaching a milestone with ``value``, given the values the
    milestone recorded before it. The first arrival always continues under every rule:
    ``asha_floor`` keeps max(1, floor(n/eta)) as Optuna does, ``linear_quantile`` needs 2
    entries as Syne Tune does, ``ray_percentile`` needs a previous value as Ray does."""
    if rule == "ray_percentile":
        return not previous or value <= ray_cutoff(previous, eta)
    values = [*previous, value]
    if rule == "linear_quantile":
        return len(values) < 2 or value <= float(np.quantile(values, 1.0 / eta))
    keep = max(1, len(values) // eta)
    return value <= sorted(values)[keep - 1]


def _linear_quantile(at: Callable[[int], float], n: int, q: float) -> float:
    """numpy's default (``linear``) quantile of n sorted values read through ``at``, with
    numpy's own float steps (virtual index (n-1)q, the two-sided lerp), so it equals
    ``np.quantile`` bit for bit without copying or partitioning the values."""
    index = (n - 1) * q
    lo = math.floor(index)
    gamma = index - lo
    a = at(lo)
    b = at(min(lo + 1, n - 1))
    diff = b - a
    return b - diff * (1 - gamma) if gamma >= 0.5 else a + diff * gamma


def _ray_q(eta: int) -> float:
    return (100.0 / eta) / 100  # np.percentile divides the percentage by 100 itself


Order = list[tuple[float, int]]  # (value, trial) entries, sorted
Sorted = Order | SortedKeys  # a rung's entries: a sorted list or the rung's own index


def _rank(order: Sorted, key: tuple[float, int]) -> int:
    return order.bisect_left(key) if isinstance(order, SortedKeys) else bisect.bisect_left(
        order, key)


def in_top_sorted(rule: str, tid: int, value: float, order: Sorted, eta: int) -> bool:
    """:func:`in_top` over a rung's sorted entries, in O(log n): the same answers."""
    n = len(order)
    if rule == "asha_floor":
        return _rank(order, (value, tid)) < n // eta
    if n < 2:
        return False
    if rule == "linear_quantile":
        return value <= _linear_quantile(lambda i: order[i][0], n, 1.0 / eta)
    skip = _rank(order, (value, tid))  # the entry itself is not an "other"
    return value <= _linear_quantile(lambda i: order[i + (i >= skip)][0], n - 1, _ray_q(eta))


def continues_sorted(rule: str, previous: Sorted, value: float, eta: int) -> bool:
    """:func:`continues` over the milestone's sorted earlier entries, in O(log n)."""
    n = len(previous)
    if rule == "ray_percentile":
        return not n or value <= _linear_quantile(lambda i: previous[i][0], n, _ray_q(eta))
    at = _rank(previous, (value, -1))  # where value sorts among the values

    def merged(i: int) -> float:  # the i-th smallest of previous values plus ``value``
        return previous[i][0] if i < at else value if i == at else previous[i - 1][0]

    if rule == "linear_quantile":
        return n + 1 < 2 or value <= _linear_quantile(merged, n + 1, 1.0 / eta)
    keep = max(1, (n + 1) // eta)
    return value <= merged(keep - 1)


# --- synchronous successive halving ------------------------------------------------------


def bracket_size(s_max: int, s: int, eta: int) -> int:
    """n = ceil((B/R) * eta**s / (s+1)) with B/R = s_max+1, in integers (the paper's n)."""
    return -(-((s_max + 1) * eta**s) // (s + 1))


def hyperband_table(max_resource: Fraction, r_min: Fraction, eta: int) -> list[Bracket]:
    """Hyperband(R, eta)'s brackets in the paper convention, s = s_max .. 0, as floats."""
    return [Bracket(b.s, tuple(Rung(n, float(r)) for n, r in b.rungs))
            for b in bracket_table(max_resource, eta, r_min)]


def table_cost(brackets: Sequence[Bracket]) -> tuple[float, float]:
    """(no-reuse cost, checkpoint-resume cost) of a bracket table."""
    full = sum(b.budget for b in brackets)
    incremental = sum(r.n * (r.r - (b.rungs[i - 1].r if i else 0.0))
                      for b in brackets for i, r in enumerate(b.rungs))
    return full, incremental


def rank(losses: Mapping[int, float]) -> list[int]:
    """Successive halving's order: lowest loss first, ties by trial id (a failed trial's
    +inf ranks last)."""
    return [t for _, t in sorted((v, t) for t, v in losses.items())]
