"""The ``mfgp`` sampler (server/algorithms/mfgp.py): it finds a known function's minimum with
few trials, its joint model lets a level that ranks like R speak for R and keeps one that
ranks backwards from doing so, parallel asks spread out, and it restores exactly."""

from __future__ import annotations

import random

import numpy as np
from hpod.server.algorithms import Context, Resource, SearchSpace, build
from hpod.server.algorithms.base import SuggestContext, rng_for
from hpod.server.algorithms.mfgp import MultiFidelityGP, Posterior
from hpod.server.algorithms.mfkde import spearman, to_raw
from hpod.server.algorithms.space import Categorical, Float, Int
from test_persist import drive, replay_from_snapshot

SPACE = SearchSpace((Float("x", 0.0, 1.0), Float("y", 0.0, 1.0)))


def bowl(c: dict) -> float:
    return (c["x"] - 0.3) ** 2 + (c["y"] - 0.6) ** 2


def sampler(resource: Resource, seed: int = 0, space: SearchSpace = SPACE) -> MultiFidelityGP:
    return MultiFidelityGP(Context(space, resource, seed, {}, 100), rng_for(seed, 99))


def test_finds_a_bowls_minimum_with_few_trials() -> None:
    """Single fidelity, 24 trials in 2-D: the model's proposals get far closer than uniform
    draws do (the expected best of 24 uniform draws is about 1/(24 pi) = 0.013)."""
    for seed in range(3):
        s = sampler(Resource(1, 1, 3), seed)
        best = np.inf
        for t in range(24):
            c = s.suggest(SuggestContext(t))
            s.observe(t, c, 1.0, bowl(c))
            best = min(best, bowl(c))
        assert best < 1e-3, (seed, best)
        assert s.last_fit["model"]


def _told(sign: float, seed: int = 0) -> tuple[MultiFidelityGP, list[dict]]:
    """40 configurations at level 1 (value 1 + sign*f), the first 12 of them also at R = 9."""
    s = sampler(Resource(9, 1, 3), seed)
    rng = np.random.default_rng(seed)
    configs = [{"x": float(a), "y": float(b)} for a, b in rng.random((40, 2))]
    for t, c in enumerate(configs):
        s.observe(t, c, 1.0, 1.0 + sign * bowl(c))
        if t < 12:
            s.observe(t, c, 9.0, bowl(c))
    s.suggest(SuggestContext(40))  # fits the hyperparameters
    return s, configs


def _predicted_at_top(s: MultiFidelityGP, configs: list[dict]) -> np.ndarray:
    x, y, _, _ = s._training_rows()
    assert s.hyper is not None
    raw = np.array([to_raw(s.space, c) for c in configs])
    return Posterior(x, y, s.hyper).predict(s._at_top(raw))[0]


def test_a_level_that_ranks_like_r_speaks_for_r_and_a_backwards_one_does_not() -> None:
    reversed_fits = 0
    for seed in range(5):
        for sign in (1.0, -1.0):
            s, configs = _told(sign, seed)
            unseen = configs[12:]  # known only at level 1
            pred = _predicted_at_top(s, unseen)
            rho = spearman(pred, np.array([bowl(c) for c in unseen]))
            corr = s._top_correlation()[0]  # the learned correlation of level 1 with R
            if sign > 0:
                assert rho > 0.9, (seed, rho)  # level 1 carries R's ranking to new points
                assert corr > 0.8, (seed, corr)
            else:
                assert rho > 0.0, (seed, rho)  # never the reversed ranking of level 1
                assert corr < 0.05, (seed, corr)
                reversed_fits += corr < -0.8
    # A backwards level is mostly learned as R reversed (it then still informs R); the rest of
    # the time its own part explains it and it says nothing about R.
    assert reversed_fits >= 4, reversed_fits


def test_parallel_asks_spread_out() -> None:
    """While the model is unsure, a second worker asking before the first reports gets a
    configuration away from the first one (the pending trial is believed to reach its
    predicted value, so nothing near it promises an improvement)."""
    s = sampler(Resource(1, 1, 3))
    for t in range(6):
        c = s.suggest(SuggestContext(t))
        s.observe(t, c, 1.0, bowl(c))
    first = s.suggest(SuggestContext(6))
    second = s.suggest(SuggestContext(7, pending=(first,)))
    assert abs(first["x"] - second["x"]) + abs(first["y"] - second["y"]) > 0.03


def test_handles_every_parameter_kind_and_restores_exactly() -> None:
    space = SearchSpace((Float("lr", 1e-4, 1.0, log=True), Categorical("act", ("a", "b", "c")),
                         Int("width", 8, 512, log=True), Int("depth", 1, 6)))
    ctx = Context(space, Resource(9, 1, 3), 1, {"sampler": "mfgp"}, 300)
    live, log = build("asha", ctx), []
    drive(live, random.Random(1), 150, log)
    for trial in live.trials.values():
        c = trial.config
        assert c["act"] in ("a", "b", "c") and 1e-4 <= c["lr"] <= 1.0
        assert isinstance(c["width"], int) and 8 <= c["width"] <= 512 and 1 <= c["depth"] <= 6
    assert live.sampler.last_fit.get("model") is True
    replay_from_snapshot(live, lambda: build("asha", ctx), log, random.Random(2), 80)


def test_kept_rows_hold_the_best_exactly_and_a_repeatable_sample_of_the_rest() -> None:
    from hpod.server.algorithms.mfgp import KeptRows

    values = np.random.default_rng(3).random(500)
    a, b = KeptRows(10, 20, salt=1), KeptRows(10, 20, salt=1)
    for t, v in enumerate(values[:250]):
        a.add(t, float(v))
        b.add(t, float(v))
    b.restore(json_roundtrip(b.state()))  # as a snapshot carries it
    for t, v in enumerate(values[250:], 250):
        a.add(t, float(v))
        b.add(t, float(v))
    kept = a.by_value()
    assert kept == b.by_value() and len(kept) == 30
    best = sorted(range(500), key=lambda t: values[t])[:10]
    assert [t for t, _ in kept[:10]] == best
    # The sample is spread over the rest, not stuck on the first results seen.
    assert max(t for t, _ in kept[10:]) >= 250 and min(t for t, _ in kept[10:]) < 250


def json_roundtrip(state):
    import json

    return json.loads(json.dumps(state))


def test_a_suggestion_conditions_on_a_bounded_set_of_rows_at_any_study_size() -> None:
    """Every result is used while they fit in ``max_rows``; past it the rows stay at
    ``max_rows``, the highest levels first, each level's best result always among them."""
    s = sampler(Resource(9, 1, 3))
    rng = np.random.default_rng(0)
    n = 0

    def tell(k: int, resource: float) -> None:
        nonlocal n
        for c in rng.random((k, 2)):
            s.observe(n, {"x": float(c[0]), "y": float(c[1])}, resource, float(c.sum()))
            n += 1

    tell(100, 1.0)
    tell(60, 3.0)
    tell(20, 9.0)
    x, _, _, _ = s._training_rows()
    assert len(x) == 100 + 2 * 60 + 3 * 20  # every result at every level it passed
    tell(2000, 1.0)
    tell(400, 3.0)
    tell(100, 9.0)
    x, y, _, trials = s._training_rows()
    levels = x[:, -1].astype(int)
    assert len(x) == 300 and len(trials) <= 300
    assert (levels == 2).sum() == 120  # every result at R
    assert (levels == 0).sum() == 150  # half of the rows for the many cheap results
    for level in s.levels:
        best_trial = min(s.values[level], key=s.values[level].get)
        assert best_trial in trials, (level, best_trial)


def test_a_state_saved_before_rows_were_kept_per_level_restores_to_the_same_rows() -> None:
    s = sampler(Resource(9, 1, 3))
    rng = np.random.default_rng(1)
    for t, c in enumerate(rng.random((80, 2))):
        s.observe(t, {"x": float(c[0]), "y": float(c[1])}, 3.0 if t % 3 else 9.0, float(c[0]))
    old = json_roundtrip(s.state())
    del old["kept"]  # as the previous version saved it
    again = sampler(Resource(9, 1, 3))
    again.restore(old)
    for a, b in zip(s._training_rows(), again._training_rows(), strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_a_fit_saved_before_levels_had_own_parts_still_predicts_and_refits() -> None:
    """A study saved with the shared-part-only hyperparameters restores: its model predicts
    with them as they were (no own parts) and the next fit adds the own parts."""
    s, configs = _told(1.0)
    old = json_roundtrip(s.state())
    # As the previous version saved it: the encoded map without the own parts' entries.
    old["hyper"]["v"] = [kv for kv in old["hyper"]["v"] if not kv[0].startswith("own")]
    again = sampler(Resource(9, 1, 3))
    again.restore(old)
    assert again.hyper is not None and "own" not in again.hyper
    shared_only = _predicted_at_top(again, configs[:5])
    assert np.all(np.isfinite(shared_only))
    # A quarter more results than at the last fit: the next model-based suggestion refits.
    for t, (a, b) in enumerate(np.random.default_rng(5).random((16, 2)), 40):
        again.observe(t, {"x": float(a), "y": float(b)}, 9.0, bowl({"x": a, "y": b}))
    again.suggest(SuggestContext(56))
    assert again.last_fit["model"]
    assert again.hyper is not None and len(again.hyper["own"]) == len(again.levels)
