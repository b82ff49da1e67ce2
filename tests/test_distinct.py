"""Near-identical configurations counted once in a rung's ranking (server/algorithms/distinct.py)
and the promotions ASHA makes with it (``duplicate_radius``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hpod.server.algorithms import Context, Resource, SearchSpace, SettingsError, build
from hpod.server.algorithms.asha import ASHA
from hpod.server.algorithms.base import Outcome, Sampler, Status, SuggestContext
from hpod.server.algorithms.distinct import WINDOW, DistinctRanks, group_starts
from hpod.server.algorithms.mfkde import to_raw
from hpod.server.algorithms.ordered import SortedKeys
from hpod.server.algorithms.space import Categorical, Float

SPACE = SearchSpace((Float("x", 0.0, 1.0), Float("y", 0.0, 10.0)))


def test_groups_start_at_the_first_entry_not_near_an_earlier_group() -> None:
    # In rank order: a, a near-copy of it, one apart, another near-copy of the first, and one
    # near the second copy only through a chain (0.04 + 0.04 from the first): its own group.
    points = np.array([[0.5, 0.5], [0.54, 0.5], [0.9, 0.1], [0.51, 0.53], [0.58, 0.5]])
    assert group_starts(points, 0.05).tolist() == [True, False, True, False, True]
    assert group_starts(points, 0.0).tolist() == [True] * 5  # radius 0: every entry its own
    # Near in one coordinate is not enough: every coordinate counts.
    assert group_starts(np.array([[0.5, 0.5], [0.5, 0.6]]), 0.05).tolist() == [True, True]


def test_unit_points_put_different_choices_apart() -> None:
    space = SearchSpace((Float("lr", 1e-4, 1.0, log=True), Categorical("opt", ("sgd", "adam"))))
    a = np.array(to_raw(space, {"lr": 1e-2, "opt": "sgd"}))
    b = np.array(to_raw(space, {"lr": 1e-2, "opt": "adam"}))
    assert a[0] == pytest.approx(0.5) and abs(a[1] - b[1]) >= 1.0
    assert group_starts(np.array([a, b]), 0.5).tolist() == [True, True]


def test_beyond_the_window_every_entry_counts_once() -> None:
    n = WINDOW + 20
    order = SortedKeys((float(i), i) for i in range(n))
    ranks = DistinctRanks()
    same = np.array([0.5, 0.5])  # every trial the same configuration
    assert ranks.rank(order, 0, lambda t: same, 0.05) == 0
    assert ranks.rank(order, WINDOW - 1, lambda t: same, 0.05) == 1  # the window: one group
    assert ranks.rank(order, WINDOW + 5, lambda t: same, 0.05) == 1 + 5


class Listed(Sampler):
    """Hands out the given configurations in order (the test chooses every configuration)."""

    name = "listed"

    def __init__(self, configs: list[dict[str, Any]]) -> None:
        self.configs = list(configs)

    def suggest(self, ctx: SuggestContext) -> dict[str, Any]:
        return self.configs[ctx.trial_id]

    def state(self) -> dict[str, Any]:
        return {}

    def restore(self, state: Any) -> None:
        pass


# A cluster of three near-copies at the top of the first rung, then one configuration apart,
# then two worse ones: six entries, so ASHA's top 1/3 is two.
RUNG = [({"x": 0.50, "y": 5.0}, 0.10), ({"x": 0.51, "y": 5.0}, 0.11),
        ({"x": 0.52, "y": 5.1}, 0.12), ({"x": 0.90, "y": 1.0}, 0.20),
        ({"x": 0.10, "y": 9.0}, 0.50), ({"x": 0.30, "y": 2.0}, 0.60)]


def promoted(**settings: Any) -> list[int]:
    """The trials promoted out of the first rung once all six have reported there."""
    alg = build("asha", Context(SPACE, Resource(9, 1, 3), 0, settings, len(RUNG)))
    assert isinstance(alg, ASHA)
    alg.sampler = Listed([c for c, _ in RUNG])
    for job in alg.next_jobs(len(RUNG)):
        alg.on_job_end(job, Outcome(Status.COMPLETED, RUNG[job.trial_id][1], job.to_resource))
    return [job.trial_id for job in alg.next_jobs(len(RUNG)) if job.rung == 1]


def test_a_cluster_of_near_copies_does_not_fill_the_top_of_a_rung() -> None:
    assert promoted() == [0, 1]  # ASHA: the top two, both copies of one configuration
    # Counted once, the copies leave room for the configuration apart, and they go on too
    # (each has a single group ahead of it).
    assert promoted(duplicate_radius=0.05) == [0, 1, 2, 3]
    assert promoted(duplicate_radius=0.005) == [0, 1]  # closer than they are: no effect


@pytest.mark.parametrize("settings", [{"duplicate_radius": 1.0}, {"duplicate_radius": -0.1},
                                      {"duplicate_radius": 0.05, "mode": "stopping"},
                                      {"duplicate_radius": 0.05,
                                       "quantile_rule": "linear_quantile"}])
def test_bad_radius_is_named(settings: dict[str, Any]) -> None:
    with pytest.raises(SettingsError) as err:
        build("asha", Context(SPACE, Resource(9, 1, 3), 0, settings, 10))
    assert err.value.field == "algorithm.settings.duplicate_radius"


def test_auto_counts_near_copies_once_by_default_and_can_turn_it_off() -> None:
    ctx = Context(SPACE, Resource(9, 1, 3), 0, {}, 10)
    assert build("auto", ctx).radius == 0.075
    off = Context(SPACE, Resource(9, 1, 3), 0, {"duplicate_radius": 0}, 10)
    assert build("auto", off).radius == 0.0
