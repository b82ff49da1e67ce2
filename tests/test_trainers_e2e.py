"""Trainers through the whole service: one worker process with two slots (two jobs
at once, each its own worker to the server), samples per second on every trial, and a
grokking-transformer study on CPU workers reporting validation-accuracy curves."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator

import pytest
import redis
from hpod.client.local import LocalCluster
from hpod.server.store import keys


@pytest.fixture(scope="module")
def slotted(tmp_path_factory) -> Iterator[LocalCluster]:
    """Embedded Redis, the server and ONE worker process running two slots."""
    workdir = tmp_path_factory.mktemp("slots")
    with LocalCluster(workers=1, slots=2, trainers=("analytic", "mlp", "grokking"),
                      workdir=str(workdir), lease_seconds=10.0) as c:
        yield c


class BusyWatch:
    """Polls the workers' Redis records while a study runs: which worker ids were ever busy,
    and the most that were busy at the same moment."""

    def __init__(self, url: str) -> None:
        self.r = redis.Redis.from_url(url, decode_responses=True)
        self.busy_ids: set[str] = set()
        self.max_busy = 0
        self.pids: set[str] = set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self.stop.is_set():
            ids = self.r.zrange(keys.workers(), 0, -1)
            busy = []
            for wid in ids:
                status, pid = self.r.hmget(keys.worker(wid), "status", "pid")
                if pid:
                    self.pids.add(pid)
                if status == "busy":
                    busy.append(wid)
            self.busy_ids.update(busy)
            self.max_busy = max(self.max_busy, len(busy))
            time.sleep(0.02)

    def __enter__(self) -> BusyWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)


def test_one_process_with_two_slots_runs_two_jobs_at_once(slotted: LocalCluster) -> None:
    # Each job sleeps 0.4 s per epoch, so two running at once cannot be missed by the poll.
    spec = {"name": "slots", "trainer": "analytic", "seed": 1, "max_trials": 4,
            "resource": {"max_resource": 3, "eta": 3}, "algorithm": {"name": "random"},
            "trainer_settings": {"step_seconds": 0.4}}
    with slotted.client() as client, BusyWatch(str(slotted.redis_url)) as watch:
        study = client.create_study(spec)
        info = study.wait(timeout=120)
    assert info.state == 2  # COMPLETED
    assert len(slotted.workers) == 1 and len(watch.pids) == 1  # one process ...
    assert len(watch.busy_ids) == 2  # ... seen by the server as two workers ...
    assert watch.max_busy == 2  # ... both busy at the same moment


def test_mlp_trials_report_samples_per_second(slotted: LocalCluster) -> None:
    spec = {"name": "sps", "trainer": "mlp", "seed": 5, "objective": {"metric": "val_error"},
            "resource": {"max_resource": 3, "eta": 3}, "algorithm": {"name": "hyperband"}}
    with slotted.client() as client:
        study = client.create_study(spec)
        info = study.wait(timeout=180)
        trials = study.trials()
    assert info.state == 2 and trials
    for t in trials:
        assert t.samples_per_second > 0, t
        assert t.cost > 0


def test_grokking_study_reports_validation_accuracy_curves(slotted: LocalCluster) -> None:
    # A small modular-addition task (p=31: 961 equations) so that a CPU study takes seconds;
    # learning rates where 300 steps are enough to rise clearly above chance (1/31).
    spec = {
        "name": "grok", "trainer": "grokking", "seed": 3,
        "objective": {"metric": "val_error", "direction": "minimize"},
        "resource": {"name": "100 steps", "max_resource": 3, "eta": 3},
        "algorithm": {"name": "hyperband"},
        "trainer_settings": {"p": 31, "width": 32, "heads": 4, "layers": 1,
                             "operation": "x+y", "batch_size": 64},
        "search_space": {
            "lr": {"type": "float", "low": 3e-3, "high": 1e-2, "log": True},
            "weight_decay": {"type": "float", "low": 0.1, "high": 1.0, "log": True},
        },
    }
    with slotted.client() as client:
        study = client.create_study(spec)
        info = study.wait(timeout=120)
        trials = study.trials()
        best = study.best_trial()
    assert info.state == 2
    assert len(trials) == info.plan.max_trials
    for t in trials:
        # One validation point per 100 steps, resumed trials continuing their curve.
        assert [r for r, _ in t.curve] == list(range(1, int(t.resource) + 1))
        accuracy = [1.0 - v for _, v in t.curve]
        assert all(math.isfinite(a) and 0.0 <= a <= 1.0 for a in accuracy)
        assert t.samples_per_second > 0
    assert any(t.resource == 3 and t.bracket == 1 for t in trials), "a promoted trial"
    assert best is not None and 1.0 - best.value > 3 / 31  # well above chance
