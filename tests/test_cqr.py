"""CQR search: reference/algorithms.md §3.6 items 1-7, and hpod's own guarantees (seeded
determinism, save/restore, pending trials, settings errors).

Models are kept small (few trees, few candidates) so the file runs in seconds: the properties
tested do not depend on the model's size."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pytest
from hpod.server.algorithms import (
    Context,
    Outcome,
    Resource,
    SearchSpace,
    SettingsError,
    Status,
    build,
)
from hpod.server.algorithms.base import SAMPLERS, SuggestContext, rng_for
from hpod.server.algorithms.cqr import (
    CQRSampler,
    CQRSettings,
    conformal_correction,
    fit_quantile_model,
    n_calibration,
    pair_coverages,
    quantile_levels,
    thompson_pick,
)
from hpod.server.algorithms.samplers import make_sampler
from hpod.server.algorithms.space import Categorical, Float, Int
from sklearn.model_selection import train_test_split

SMALL = {"num_candidates": 200, "n_estimators": 15, "learning_rate": 0.2}

BRANIN_SPACE = SearchSpace((
    Float("x1", -5.0, 10.0), Float("x2", 0.0, 15.0), Categorical("shift", ("a", "b", "c")),
))


def branin(c: Mapping[str, Any]) -> float:
    x1, x2 = c["x1"], c["x2"]
    v = ((x2 - 5.1 / (4 * math.pi**2) * x1**2 + 5 / math.pi * x1 - 6) ** 2
         + 10 * (1 - 1 / (8 * math.pi)) * math.cos(x1) + 10)
    return v + {"a": 0.0, "b": 2.0, "c": 5.0}[c["shift"]]


def ctx(space: SearchSpace = BRANIN_SPACE, seed: int = 0, max_trials: int | None = 20,
        **cqr: Any) -> Context:
    return Context(space, Resource(max_resource=1.0), seed, {"cqr": {**SMALL, **cqr}},
                   max_trials)


def sampler(space: SearchSpace = BRANIN_SPACE, seed: int = 0, **cqr: Any) -> CQRSampler:
    return CQRSampler(ctx(space, seed, **cqr), rng_for(seed, 0))


def feed(s: CQRSampler, f: Callable[[Mapping[str, Any]], float], n: int,
         start: int = 0) -> list[dict[str, Any]]:
    """Ask and tell ``n`` trials one after another; returns the configurations."""
    out = []
    for tid in range(start, start + n):
        config = s.suggest(SuggestContext(tid, pending=[]))
        s.observe(tid, config, 1.0, f(config))
        out.append(config)
    return out


QUAD_SPACE = SearchSpace((
    Float("a", -1.0, 1.0), Float("b", -1.0, 1.0), Float("lr", 1e-4, 1e-1, log=True),
    Categorical("opt", ("sgd", "adam", "rms")),
))


def quad(c: Mapping[str, Any]) -> float:
    """A bowl with its minimum 0 at a = 0.3, b = -0.5, lr = 10^-2.5, opt = adam."""
    return ((c["a"] - 0.3) ** 2 + 2 * (c["b"] + 0.5) ** 2
            + (math.log10(c["lr"]) + 2.5) ** 2 / 4
            + {"sgd": 0.3, "adam": 0.0, "rms": 0.1}[c["opt"]])


def run_search(algorithm: str, seed: int, n: int, settings: Mapping[str, Any],
               space: SearchSpace = BRANIN_SPACE,
               f: Callable[[Mapping[str, Any]], float] = branin) -> float:
    """Best value after ``n`` sequential trials of ``algorithm``."""
    alg = build(algorithm, Context(space, Resource(1.0), seed, settings, n))
    best = math.inf
    while not alg.done():
        (job,) = alg.next_jobs(1)
        value = f(job.config)
        best = min(best, value)
        alg.on_job_end(job, Outcome(Status.COMPLETED, value, 1.0))
    return best


# --- §3.6.1 quantile levels -----------------------------------------------------------------


def test_quantile_levels_and_pairs() -> None:
    levels = quantile_levels(5)
    assert levels == [0.17, 0.33, 0.5, 0.67, 0.83]
    assert pair_coverages(levels) == [0.66, 0.34]
    assert quantile_levels(3) == [0.25, 0.5, 0.75]


# --- §3.6.2 conformal switch at 32/33 samples -------------------------------------------------


def test_conformal_switch_at_33_samples() -> None:
    cfg = CQRSettings(n_estimators=5)
    rng = np.random.default_rng(0)
    x, y = rng.random((33, 2)), rng.random(33)
    at_32 = fit_quantile_model(x[:32], y[:32], cfg, np.random.default_rng(1))
    assert len(at_32.calibration_rows) == 0
    assert np.all(at_32.corrections == 0.0)
    at_33 = fit_quantile_model(x, y, cfg, np.random.default_rng(1))
    assert len(at_33.calibration_rows) == n_calibration(33, 0.1) == 4
    assert len(train_test_split(np.arange(33), test_size=0.1)[1]) == 4
    assert np.any(at_33.corrections != 0.0)


# --- §3.6.3 correction values ---------------------------------------------------------------


def test_correction_values_by_hand() -> None:
    e = np.array([0.5, -0.2, 0.3, 0.1])  # sorted: -0.2, 0.1, 0.3, 0.5; n = 4
    # syne_compat, c = 0.66: level 0.66 / 1.25 = 0.528, position 0.528·3 = 1.584 between
    # 0.1 and 0.3: 0.1 + 0.584·0.2 = 0.2168.
    assert conformal_correction(e, 0.66, "syne_compat") == pytest.approx(0.2168)
    assert conformal_correction(e, 0.66, "syne_compat") == pytest.approx(np.quantile(e, 0.528))
    # standard: the ⌈(4+1)·0.66⌉ = ⌈3.3⌉ = 4th smallest = 0.5 (= the spec's "higher" form).
    assert conformal_correction(e, 0.66, "standard") == 0.5
    assert np.quantile(e, min(1.0, 0.66 * 1.25), method="higher") == 0.5
    # c = 0.34: syne 0.34 / 1.25 = 0.272, position 0.816: -0.2 + 0.816·0.3 = 0.0448;
    # standard: ⌈5·0.34⌉ = ⌈1.7⌉ = 2nd smallest = 0.1.
    assert conformal_correction(e, 0.34, "syne_compat") == pytest.approx(0.0448)
    assert conformal_correction(e, 0.34, "standard") == 0.1
    # Beyond the data the standard rule takes the largest score.
    assert conformal_correction(e, 0.9, "standard") == 0.5


@pytest.mark.parametrize("mode", ["standard", "syne_compat"])
def test_model_corrections_follow_from_calibration_rows(mode: str) -> None:
    rng = np.random.default_rng(3)
    x = rng.random((40, 2))
    y = x[:, 0] + 0.3 * rng.standard_normal(40)
    model = fit_quantile_model(x, y, CQRSettings(n_estimators=5, conformal=mode),
                               np.random.default_rng(4))
    cal = model.calibration_rows
    assert len(cal) == 4
    raw = model.predict_raw(x[cal])
    for j, c in enumerate([0.66, 0.34]):
        scores = np.maximum(raw[:, j] - y[cal], y[cal] - raw[:, 4 - j])
        assert model.corrections[j] == pytest.approx(conformal_correction(scores, c, mode))
    corrected = model.predict(x[cal])
    assert np.allclose(corrected[:, 0], raw[:, 0] - model.corrections[0])
    assert np.allclose(corrected[:, 4], raw[:, 4] + model.corrections[0])
    assert np.allclose(corrected[:, 2], raw[:, 2])  # the median is never corrected


# --- §3.6.4 coverage --------------------------------------------------------------------------


def hetero(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    x = rng.uniform(-3.0, 3.0, n)
    return x[:, None], np.sin(x) + (0.1 + np.abs(x)) * rng.standard_normal(n)


def coverage(n: int, seeds: range, cfg: CQRSettings) -> float:
    """Mean coverage of the (0.17, 0.83) interval on 5000 fresh points, over ``seeds``."""
    x_new, y_new = hetero(5000, np.random.default_rng(99))
    out = []
    for seed in seeds:
        x, y = hetero(n, np.random.default_rng(seed))
        q = fit_quantile_model(x, y, cfg, np.random.default_rng(seed)).predict(x_new)
        out.append(np.mean((q[:, 0] <= y_new) & (y_new <= q[:, 4])))
    return float(np.mean(out))


def test_standard_mode_covers_nominal() -> None:
    # The guarantee is marginal over calibration sets: average a few seeds, and hold out 30 %
    # so that one calibration set's own spread (±2.7 %) does not decide the outcome.
    cfg = CQRSettings(n_estimators=30, valid_fraction=0.3)
    assert abs(coverage(1000, range(4), cfg) - 0.66) < 0.03


def test_raw_quantiles_undercover_where_conformal_does_not() -> None:
    # With n = 1000 on one feature the raw GBM quantiles happen to be near nominal too; on
    # fewer points they overfit and their interval is too narrow, which the correction fixes.
    raw = coverage(200, range(10), CQRSettings(n_estimators=30, conformal="none"))
    corrected = coverage(200, range(10), CQRSettings(n_estimators=30, valid_fraction=0.3))
    assert raw < 0.64
    assert corrected > raw + 0.02 and abs(corrected - 0.66) < 0.03


# --- §3.6.5 acquisition -------------------------------------------------------------------------


def test_thompson_picks_b_two_times_in_five() -> None:
    preds = np.array([[1.0] * 5, [0.0, 0.5, 2.0, 3.0, 4.0]])
    rng = np.random.default_rng(0)
    picks = [thompson_pick(preds, rng) for _ in range(10_000)]
    assert np.mean(picks) == pytest.approx(0.4, abs=0.015)


# --- §3.6.6 multi-fidelity target ---------------------------------------------------------------


def test_last_value_target() -> None:
    s = sampler()
    a = {"x1": 0.0, "x2": 1.0, "shift": "a"}
    b = {"x1": 1.0, "x2": 2.0, "shift": "b"}
    s.observe(0, a, 1.0, 0.9)
    s.observe(0, a, 3.0, 0.7)  # then stopped
    s.observe(1, b, 1.0, 0.5)
    configs, y = s.training_data()
    assert configs == [a, b]
    assert list(y) == [0.7, 0.5]


def test_highest_rung_target() -> None:
    a = {"x1": 0.0, "x2": 1.0, "shift": "a"}
    b = {"x1": 1.0, "x2": 2.0, "shift": "b"}
    s = sampler(fit_on="highest_rung", highest_rung_min_points=2)
    for r, v in ((1.0, 0.9), (3.0, 0.7), (9.0, 0.4)):
        s.observe(0, a, r, v)
    s.observe(1, b, 1.0, 0.5)
    assert list(s.training_data()[1]) == [0.9, 0.5]  # two trials reached r = 1 only
    s.observe(1, b, 3.0, 0.6)
    assert list(s.training_data()[1]) == [0.7, 0.6]
    s.observe(1, b, 9.0, 0.3)
    assert list(s.training_data()[1]) == [0.4, 0.3]
    s.observe(2, a, 1.0, 0.8)  # a third trial below the level is left out
    assert list(s.training_data()[1]) == [0.4, 0.3]


# --- §3.6.7 start-up ----------------------------------------------------------------------------


def test_random_until_five_results_then_fitted() -> None:
    s = sampler()
    feed(s, branin, 4)
    s.suggest(SuggestContext(4, pending=[]))
    assert s._model is None  # 4 results: still random
    s.observe(4, s.space.sample(np.random.default_rng(0)), 1.0, 3.0)
    s.suggest(SuggestContext(5, pending=[]))
    assert s._model is not None
    assert len(s._model[3]) == 5  # fitted at the first suggestion after 5 results


# --- better than random ---------------------------------------------------------------------


def test_beats_random_search_on_a_quadratic() -> None:
    # Tiny models (10 trees) keep this fast; with the defaults the margin is wider.
    n, seeds = 30, range(7)
    settings = {"cqr": {**SMALL, "n_estimators": 10, "learning_rate": 0.3}}
    cqr = [run_search("cqr", s, n, settings, QUAD_SPACE, quad) for s in seeds]
    rnd = [run_search("random", s, n, {}, QUAD_SPACE, quad) for s in seeds]
    assert np.median(cqr) < 0.5 * np.median(rnd), (cqr, rnd)


# --- pending trials -------------------------------------------------------------------------


SMALL_DISCRETE = SearchSpace((Int("a", 0, 2), Categorical("b", ("x", "y", "z"))))


def bowl(c: Mapping[str, Any]) -> float:
    return (c["a"] - 1) ** 2 + {"x": 0.0, "y": 1.0, "z": 2.0}[c["b"]]


@pytest.mark.parametrize("penalty", [True, False])
def test_pending_configuration_is_not_proposed_again(penalty: bool) -> None:
    # Three levels make this small model confident enough that the reference repeats its
    # pick; with five, the ties among flat low quantiles already scatter the picks.
    s = sampler(SMALL_DISCRETE, pending_penalty=penalty, quantiles=3)
    feed(s, bowl, 10)
    duplicates = 0
    for tid in range(10, 30, 2):  # two workers ask before either reports, ten times
        first = s.suggest(SuggestContext(tid, pending=[]))
        duplicates += s.suggest(SuggestContext(tid + 1, pending=[first])) == first
    if penalty:
        assert duplicates == 0
    else:
        assert duplicates > 5  # the reference: nothing stops a duplicate


def test_four_workers_get_four_configurations() -> None:
    s = sampler(SMALL_DISCRETE)
    feed(s, bowl, 6)
    pending: list[dict[str, Any]] = []
    for tid in range(6, 10):
        pending.append(s.suggest(SuggestContext(tid, pending=pending)))
    assert len({json.dumps(c, sort_keys=True) for c in pending}) == 4


def test_startup_avoids_pending_duplicates() -> None:
    s = sampler(SearchSpace((Categorical("c", ("p", "q")),)))
    first = s.suggest(SuggestContext(0, pending=[]))
    assert s.suggest(SuggestContext(1, pending=[first])) != first


# --- determinism and persistence --------------------------------------------------------------


def test_same_seed_same_suggestions() -> None:
    runs = [feed(sampler(seed=7, local_fraction=0.5), branin, 12) for _ in range(2)]
    assert runs[0] == runs[1]
    assert feed(sampler(seed=8, local_fraction=0.5), branin, 12) != runs[0]


def test_state_round_trip_continues_identically() -> None:
    a = sampler(seed=3, local_fraction=0.3)
    feed(a, branin, 8)
    saved = json.loads(json.dumps(a.state()))
    b = sampler(seed=3, local_fraction=0.3)
    b.restore(saved)
    pending = [{"x1": 1.0, "x2": 2.0, "shift": "b"}]
    ask = SuggestContext(8, pending=pending)
    assert a.suggest(ask) == b.suggest(ask)
    assert feed(a, branin, 4, start=9) == feed(b, branin, 4, start=9)


def test_algorithm_round_trip_mid_study() -> None:
    def drive(alg: Any, jobs: int) -> list[dict[str, Any]]:
        out = []
        for _ in range(jobs):
            (job,) = alg.next_jobs(1)
            alg.on_progress(job.trial_id, 0.5, 99.0)  # partial points are not fitted
            alg.on_job_end(job, Outcome(Status.COMPLETED, branin(job.config), 1.0))
            out.append(job.config)
        return out

    settings = {"cqr": SMALL}
    a = build("cqr", Context(BRANIN_SPACE, Resource(1.0), 5, settings, 14))
    drive(a, 8)
    b = build("cqr", Context(BRANIN_SPACE, Resource(1.0), 5, settings, 14))
    b.restore(json.loads(json.dumps(a.state())))
    assert drive(a, 6) == drive(b, 6)
    assert a.done() and b.done()
    assert all(y != 99.0 for y in a.sampler.training_data()[1])


# --- registration and settings ------------------------------------------------------------


def test_registered_as_sampler_for_any_scheduler() -> None:
    assert SAMPLERS["cqr"] is CQRSampler
    c = Context(BRANIN_SPACE, Resource(1.0), 0, {"sampler": "cqr", "cqr": {"quantiles": 3}})
    s = make_sampler(c, rng_for(0, 0))
    assert isinstance(s, CQRSampler) and s.cfg.quantiles == 3


def test_struct_numbers_are_accepted() -> None:
    cfg = CQRSettings.from_settings({"cqr": {"num_candidates": 500.0, "pending_penalty": False}})
    assert cfg.num_candidates == 500 and isinstance(cfg.num_candidates, int)
    assert CQRSettings.from_settings({}) == CQRSettings()


@pytest.mark.parametrize(("cqr", "field"), [
    ({"quantiles": 4}, "algorithm.settings.cqr.quantiles"),
    ({"quantiles": 5.5}, "algorithm.settings.cqr.quantiles"),
    ({"conformal": "romano"}, "algorithm.settings.cqr.conformal"),
    ({"fit_on": "first"}, "algorithm.settings.cqr.fit_on"),
    ({"num_candidates": 0}, "algorithm.settings.cqr.num_candidates"),
    ({"num_candidates": True}, "algorithm.settings.cqr.num_candidates"),
    ({"local_fraction": 1.5}, "algorithm.settings.cqr.local_fraction"),
    ({"valid_fraction": 0.0}, "algorithm.settings.cqr.valid_fraction"),
    ({"pending_penalty": "yes"}, "algorithm.settings.cqr.pending_penalty"),
    ({"num_init_random_draws": 1}, "algorithm.settings.cqr.num_init_random_draws"),
    ({"highest_rung_min_points": 1}, "algorithm.settings.cqr.highest_rung_min_points"),
    ({"max_fit_samples": 1}, "algorithm.settings.cqr.max_fit_samples"),
    ({"quantile": 5}, "algorithm.settings.cqr.quantile"),
    ("five", "algorithm.settings.cqr"),
])
def test_settings_errors_name_the_field(cqr: Any, field: str) -> None:
    with pytest.raises(SettingsError) as err:
        build("cqr", Context(BRANIN_SPACE, Resource(1.0), 0, {"cqr": cqr}, 10))
    assert err.value.field == field


def test_algorithm_settings_errors() -> None:
    with pytest.raises(SettingsError) as err:
        build("cqr", Context(BRANIN_SPACE, Resource(1.0), 0, {"sampler": "random"}, 10))
    assert err.value.field == "algorithm.settings.sampler"
    with pytest.raises(SettingsError) as err:
        build("cqr", Context(BRANIN_SPACE, Resource(1.0), 0, {"eta": 3}, 10))
    assert err.value.field == "algorithm.settings.eta"
    with pytest.raises(SettingsError) as err:
        build("cqr", Context(BRANIN_SPACE, Resource(1.0), 0, {}, None))
    assert err.value.field == "max_trials"


MIXED_SPACE = SearchSpace((
    Float("lr", 1e-5, 1.0, log=True), Int("width", 1, 512, log=True), Int("depth", 1, 4),
    Categorical("act", ("relu", "tanh", 1, True)),
))


def test_local_candidates_and_subsampling_give_valid_configurations() -> None:
    def f(c: Mapping[str, Any]) -> float:
        return abs(math.log10(c["lr"]) + 3) + abs(c["depth"] - 2) + (c["act"] == "tanh")

    s = sampler(MIXED_SPACE, local_fraction=1.0, local_scale=0.3, max_fit_samples=6)
    for config in feed(s, f, 12):
        MIXED_SPACE.validate_config(config)
        assert type(config["width"]) is int and type(config["lr"]) is float
