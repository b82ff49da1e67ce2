"""Ranking a rung with near-identical configurations counted once.

Successive halving keeps the top 1/eta of a rung. When a model proposes many configurations
within a hair of each other (local moves around its incumbent), those near-copies can fill the
top 1/eta on their own: where a low level is biased near the optimum (the augmented Branin,
whose optimum below the maximum resource sits a few per cent of the range away from the one
at it), every rung then keeps the cheap level's favourite and loses the configurations that
would win at the top. Counting a group of near-copies as one entry keeps the top 1/eta about
distinct configurations, and promotes the members of a good group as well (they differ only
by what the top level can tell apart).

A *group* is formed greedily in rank order: an entry starts a new group unless it lies within
``radius`` (in every parameter, on the unit scale of the search space; a different category is
always apart: points are :func:`~.mfkde.to_raw`'s, a category as its choice's index) of an
earlier group's first entry. An entry's *distinct rank* is the number of
groups started before it. Only the rung's best ``WINDOW`` entries are grouped: beyond them
each entry counts as its own group, so the cost of a ranking is bounded whatever the rung's
size (and the rule can only be stricter there, never looser).
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import islice

import numpy as np

from .ordered import SortedKeys

# Entries of a rung that are grouped; the rest count one each (bounded cost per ranking).
WINDOW = 300


def group_starts(points: np.ndarray, radius: float) -> np.ndarray:
    """For points in rank order, whether each starts a new group (see the module docstring)."""
    n = len(points)
    apart = np.zeros((n, n))
    for j in range(points.shape[1]):  # the largest coordinate difference, one column at a time
        np.maximum(apart, np.abs(points[:, j, None] - points[None, :, j]), out=apart)
    near = apart < radius
    starts = np.zeros(n, dtype=bool)
    for i in range(n):
        starts[i] = not (near[i, :i] & starts[:i]).any()
    return starts


class DistinctRanks:
    """The distinct ranks of one rung's entries, recomputed only when the rung has grown."""

    def __init__(self) -> None:
        self.size = -1
        self.groups_before = np.zeros(1, dtype=int)  # [i]: groups started before rank i

    def rank(self, order: SortedKeys, position: int,
             point: Callable[[int], np.ndarray], radius: float) -> int:
        """The distinct rank of the entry at ``position`` of ``order`` (the rung's sorted
        (value, trial) entries); ``point(trial)`` gives a trial's unit point."""
        if len(order) != self.size:
            top = [tid for _, tid in islice(iter(order), WINDOW)]
            starts = group_starts(np.array([point(t) for t in top]), radius) if top else []
            self.groups_before = np.concatenate([[0], np.cumsum(starts, dtype=int)])
            self.size = len(order)
        window = len(self.groups_before) - 1
        if position <= window:
            return int(self.groups_before[position])
        return int(self.groups_before[window]) + position - window
