"""Crashes lose nothing: kill -9 of a worker mid-job, kill -9 of the server mid-study."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
from helpers import wait_for
from hpod.client.local import LocalCluster
from hpod.server.store import keys

SLOW = {"step_seconds": 0.15}


def slow_spec(seed: int) -> dict:
    return {"trainer": "analytic", "trainer_settings": SLOW, "seed": seed,
            "resource": {"max_resource": 9, "eta": 3}, "algorithm": {"name": "hyperband"}}


def busy_worker_pid(r: redis.Redis) -> int | None:
    for wid in r.zrange(keys.workers(), 0, -1):
        info = r.hgetall(keys.worker(wid))
        if info.get("status") == "busy":
            return int(info["pid"])
    return None


def assert_nothing_lost_or_doubled(study, info, progress_may_be_lost: bool = False) -> None:
    """Every trial completed, each step reported once and counted once. A Redis master
    failover may lose a progress point acknowledged just before the master died (only final
    results are replicated before a worker lets go of its job): ``progress_may_be_lost``
    then allows gaps in a curve, never a repeat or a missing end."""
    trials = study.trials()
    assert len(trials) == info.plan.max_trials
    assert {t.state for t in trials} == {"completed"}
    for t in trials:
        steps = [r for r, _ in t.curve]
        whole = list(range(1, int(t.resource) + 1))
        if progress_may_be_lost:
            assert steps == sorted(set(steps)) and set(steps) <= set(whole), steps
            assert steps[-1] == t.resource
        else:
            assert steps == whole
    # Each segment counted once: a lost job's partial work is not added to the total.
    assert info.resource_used == pytest.approx(info.plan.incremental_resource)


def test_kill_9_worker_mid_job_hands_the_job_on(tmp_path) -> None:
    with LocalCluster(workers=2, trainers=("analytic",), workdir=str(tmp_path),
                      lease_seconds=2.0) as cluster, cluster.client() as client:
        r = redis.Redis.from_url(cluster.redis_url, decode_responses=True)
        study = client.create_study(slow_spec(seed=1))
        wait_for(lambda: busy_worker_pid(r) is not None, what="a busy worker")
        pid = busy_worker_pid(r)
        os.kill(pid, signal.SIGKILL)
        cluster.add_worker()  # the cluster keeps two workers, as a scheduler would
        info = study.wait(timeout=180)
        assert info.state == 2
        trials = study.trials()
        assert sum(t.lost_jobs for t in trials) >= 1
        assert_nothing_lost_or_doubled(study, info)


def test_server_killed_and_restarted_mid_study_continues(tmp_path) -> None:
    with LocalCluster(workers=2, trainers=("analytic",), workdir=str(tmp_path),
                      lease_seconds=3.0) as cluster, cluster.client() as client:
        study = client.create_study(slow_spec(seed=2))
        wait_for(lambda: study.refresh().trials_finished >= 3, what="three finished trials")
        # A client already waiting for the end rides the restart out (its watch is cut).
        waiter = ThreadPoolExecutor(1)
        waited = waiter.submit(client.study(study.id).wait, timeout=180)
        time.sleep(1.0)  # let the waiter's watch open (either way it must ride the restart)
        cluster.server.send_signal(signal.SIGKILL)
        cluster.server.wait()
        # Workers keep training and reporting into Redis while no server runs.
        time.sleep(1.5)
        cluster.start_server()
        info = study.wait(timeout=180)
        assert info.state == 2
        assert waited.result(timeout=180).state == 2
        waiter.shutdown()
        assert_nothing_lost_or_doubled(study, info)


def test_redis_killed_with_aof_loses_no_accepted_result(tmp_path) -> None:
    import time

    from hpod.server.store.embedded import EmbeddedRedis

    data = str(tmp_path / "redis")
    store = EmbeddedRedis(data, fsync_always=True).start()
    try:
        with LocalCluster(workers=2, trainers=("analytic",), redis_url=store.url,
                          workdir=str(tmp_path), lease_seconds=3.0) as cluster, \
                cluster.client() as client:
            study = client.create_study(slow_spec(seed=3))
            wait_for(lambda: study.refresh().trials_finished >= 3, what="three finished trials")
            accepted = {t.id: t.curve for t in study.trials()}
            store.proc.kill()
            store.proc.wait()
            time.sleep(1.0)
            store = EmbeddedRedis(data, port=store.port, fsync_always=True).start()
            info = study.wait(timeout=180)
            assert info.state == 2
            after = {t.id: t.curve for t in study.trials()}
            for tid, curve in accepted.items():
                assert after[tid][:len(curve)] == curve
            assert_nothing_lost_or_doubled(study, info)
    finally:
        store.stop()
