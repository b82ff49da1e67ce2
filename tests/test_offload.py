"""The fits the service runs in another process give the very proposals an in-process run
gives: the functions sent there are pure, and a generator they draw from travels back."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

import pytest
from hpod.server.algorithms import offload

from tests.test_carbs import make, run
from tests.test_cqr import run_search


@pytest.fixture
def process_runner() -> Iterator[list[str]]:
    """Installs a spawn-context process pool as the runner; yields the names of the
    functions it ran, so a test can see the work really went there."""
    calls: list[str] = []
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                               initializer=offload.fit_process_started, initargs=(5,))

    def runner(fn, *args):
        calls.append(fn.__name__)
        return pool.submit(fn, *args).result()

    offload.set_runner(runner)
    try:
        yield calls
    finally:
        offload.set_runner(None)
        pool.shutdown()


def test_carbs_proposals_are_the_same_in_a_fit_process(process_runner: list[str]) -> None:
    remote = run(make(seed=3, trials=14, num_random_samples=4))
    assert "predict_candidates" in process_runner
    offload.set_runner(None)
    assert remote == run(make(seed=3, trials=14, num_random_samples=4))


def test_cqr_proposals_are_the_same_in_a_fit_process(process_runner: list[str]) -> None:
    settings = {"cqr": {"n_estimators": 10, "num_init_random_draws": 4}}
    remote = run_search("cqr", 2, 14, settings)
    assert "fit_quantile_model" in process_runner
    offload.set_runner(None)
    assert remote == run_search("cqr", 2, 14, settings)
