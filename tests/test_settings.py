"""Typed algorithm settings: one coercer for every algorithm, numbers that arrive as doubles
(a protobuf Struct has no integers) at any depth, errors that name the full field path."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import pytest
from hpod.server.algorithms import Outcome, Resource, SearchSpace, SettingsError, Status
from hpod.server.algorithms.settings import parse
from hpod.server.algorithms.space import Float
from hpod.server.study import StudyConfig

SPACE = SearchSpace((Float("x", 0.0, 1.0), Float("y", 0.0, 1.0)))


@dataclass(frozen=True)
class Inner:
    count: int = 3
    scale: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Outer:
    mode: Literal["a", "b"] = "a"
    limit: int | None = None
    ratio: float = 0.5
    flag: bool = False
    inner: Inner = Inner()


def test_whole_doubles_become_ints_at_any_depth() -> None:
    got = parse(Outer, {"limit": 7.0, "ratio": 1, "inner": {"count": 50.0,
                                                             "scale": {"x": 2}}})
    assert got == Outer(limit=7, ratio=1.0, inner=Inner(50, {"x": 2.0}))
    assert type(got.limit) is int and type(got.inner.count) is int
    assert type(got.inner.scale["x"]) is float


@pytest.mark.parametrize(("raw", "where"), [
    ({"limit": 7.5}, "algorithm.settings.limit"),
    ({"limit": True}, "algorithm.settings.limit"),
    ({"mode": "c"}, "algorithm.settings.mode"),
    ({"flag": 1}, "algorithm.settings.flag"),
    ({"ratio": float("nan")}, "algorithm.settings.ratio"),
    ({"inner": {"count": 2.5}}, "algorithm.settings.inner.count"),
    ({"inner": {"bogus": 1}}, "algorithm.settings.inner.bogus"),
    ({"inner": 5}, "algorithm.settings.inner"),
    ({"inner": {"scale": {"x": "big"}}}, "algorithm.settings.inner.scale.x"),
    ({"bogus": 1}, "algorithm.settings.bogus"),
])
def test_errors_name_the_full_path(raw: dict[str, Any], where: str) -> None:
    with pytest.raises(SettingsError) as err:
        parse(Outer, raw)
    assert err.value.field == where


def _config(algorithm: str, settings: dict[str, Any]) -> StudyConfig:
    return StudyConfig(SPACE, Resource(9, 1, 3), algorithm, settings, seed=0, max_trials=12)


@pytest.mark.parametrize(("algorithm", "settings"), [
    ("asha-carbs", {"carbs": {"candidates_per_dim": 50.0, "num_random_samples": 2.0}}),
    ("hyperband", {"sampler": "carbs", "iterations": 1.0,
                   "carbs": {"candidates_per_dim": 50.0, "num_random_samples": 2.0}}),
])
def test_carbs_nested_integer_doubles_are_accepted_and_work(
        algorithm: str, settings: dict[str, Any]) -> None:
    config = _config(algorithm, settings)
    config.check()
    alg = config.build_algorithm()
    cfg = alg.sampler.core.cfg
    assert cfg.candidates_per_dim == 50 and type(cfg.candidates_per_dim) is int
    asks = 0
    for _ in range(8):  # past the random phase: the model's candidates are drawn
        for job in alg.next_jobs(1):
            asks += 1
            v = (job.config["x"] - 0.3) ** 2 + job.config["y"] / job.to_resource
            alg.on_job_end(job, Outcome(Status.COMPLETED, v, job.to_resource, cost=1.0))
    assert asks >= 6


def test_carbs_nested_fractional_integer_is_refused_by_name() -> None:
    with pytest.raises(SettingsError) as err:
        _config("asha-carbs", {"carbs": {"candidates_per_dim": 50.5}}).check()
    assert err.value.field == "algorithm.settings.carbs.candidates_per_dim"


def test_tpe_options_are_typed_too() -> None:
    config = _config("hyperband", {"sampler": "tpe", "tpe": {"n_startup_trials": 4.0}})
    config.check()
    assert config.build_algorithm().sampler.opts["n_startup_trials"] == 4
    with pytest.raises(SettingsError) as err:
        _config("hyperband", {"sampler": "tpe", "tpe": {"multivariate": 1}}).check()
    assert err.value.field == "algorithm.settings.tpe.multivariate"
