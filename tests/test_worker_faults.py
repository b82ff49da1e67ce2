"""Workers survive Redis hiccups: a handoff stream removed under them (NOGROUP), Redis
refusing writes (OOM), Redis hanging (SIGSTOP); transient errors are retried inside a bound,
only the trainer's own exceptions fail a trial, and shutdown never waits on Redis. Real Redis,
real server, real worker processes."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis
from helpers import wait_for
from hpod.client.local import LocalCluster
from hpod.server.store import keys
from hpod.server.store.embedded import EmbeddedRedis
from hpod.server.store.worker_queue import (
    QueueUnavailable,
    WorkerQueue,
    is_nogroup,
    is_transient,
)


@contextmanager
def paused(proc: subprocess.Popen) -> Iterator[None]:
    """A process stopped (SIGSTOP) for the duration; always continued afterwards."""
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(proc.pid, signal.SIGCONT)


@contextmanager
def refusing_writes(r: redis.Redis) -> Iterator[None]:
    """Redis at its memory limit with no eviction: every write that needs memory is refused
    with OOM (reads, acknowledgements and claims still work)."""
    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", "1")
    try:
        yield
    finally:
        r.config_set("maxmemory", "0")


# ---------------------------------------------------------------- the queue alone


def test_errors_are_told_apart_from_real_redis_replies(redis_server: EmbeddedRedis) -> None:
    r = redis.Redis.from_url(redis_server.url, decode_responses=True)
    with pytest.raises(redis.ResponseError) as nogroup:
        r.xreadgroup(keys.WORKER_GROUP, "c", {"no-such-stream": ">"}, count=1)
    assert is_nogroup(nogroup.value) and not is_transient(nogroup.value)
    with refusing_writes(r), pytest.raises(redis.ResponseError) as oom:
        r.xadd("s", {"a": 1})
    assert is_transient(oom.value)
    with refusing_writes(r), pytest.raises(redis.ResponseError) as oom_in_multi:
        with r.pipeline(transaction=True) as p:
            p.xadd("s", {"a": 1})
            p.execute()
    assert is_transient(oom_in_multi.value)
    with pytest.raises(redis.ResponseError) as wrong:
        r.set("k", "v")
        r.sadd("k", "x")
    assert not is_transient(wrong.value)
    assert is_transient(redis.ConnectionError("gone")) and is_transient(redis.TimeoutError())


def test_a_missing_group_is_recreated_and_the_call_goes_on(
        redis_server: EmbeddedRedis) -> None:
    q = WorkerQueue(redis_server.url, "w1", ["analytic"])
    q.ensure_streams()
    q.r.delete(keys.handoff("analytic", "w1"))  # as the server does for a worker it thinks gone
    q.r.srem(keys.handoffs(), keys.handoff_member("analytic", "w1"))
    assert q.take(block_ms=10) is None  # NOGROUP inside: recreated, read again
    assert q.r.xinfo_groups(keys.handoff("analytic", "w1"))[0]["name"] == keys.WORKER_GROUP
    assert q.r.sismember(keys.handoffs(), keys.handoff_member("analytic", "w1"))
    assert q.r.hget(keys.worker("w1"), "trainers") == "analytic"  # said it is here again


def test_writes_refused_for_a_while_are_retried_until_they_pass(
        redis_server: EmbeddedRedis) -> None:
    q = WorkerQueue(redis_server.url, "w1", ["analytic"], retry_seconds=60)
    admin = redis.Redis.from_url(redis_server.url)
    with refusing_writes(admin):
        threading.Timer(1.0, lambda: admin.config_set("maxmemory", "0")).start()
        q.register()  # refused (OOM) until the timer lifts the limit
    assert q.r.hget(keys.worker("w1"), "trainers") == "analytic"


def test_retries_stop_at_the_bound_and_at_close(redis_server: EmbeddedRedis) -> None:
    q = WorkerQueue(redis_server.url, "w1", ["analytic"], retry_seconds=1.0,
                    socket_timeout=0.5)
    with paused(redis_server.proc):
        with pytest.raises(QueueUnavailable, match="Redis unavailable"):
            q.register()  # timeouts, retried for about a second, then given up
        q.close()
        with pytest.raises(QueueUnavailable):
            q.unregister()  # after close: one attempt, no retries
    q2 = WorkerQueue(redis_server.url, "w2", ["analytic"], retry_seconds=60,
                     socket_timeout=0.5)
    with paused(redis_server.proc):
        threading.Timer(2.0, q2.close).start()
        with pytest.raises(QueueUnavailable):
            q2.register()  # retrying (bound 60 s) until close() ends it


def test_a_redis_that_comes_back_within_the_bound_is_waited_for(
        redis_server: EmbeddedRedis) -> None:
    q = WorkerQueue(redis_server.url, "w1", ["analytic"], retry_seconds=60,
                    socket_timeout=0.5)
    os.kill(redis_server.proc.pid, signal.SIGSTOP)
    threading.Timer(1.5, lambda: os.kill(redis_server.proc.pid, signal.SIGCONT)).start()
    q.register()
    assert q.r.hget(keys.worker("w1"), "trainers") == "analytic"


# ---------------------------------------------------------------- real processes

SLOW = {"step_seconds": 0.05}


def spec(seed: int) -> dict:
    return {"trainer": "analytic", "trainer_settings": SLOW, "seed": seed,
            "resource": {"max_resource": 9, "eta": 3}, "algorithm": {"name": "hyperband"}}


def assert_all_completed(study, info) -> None:
    assert info.state == 2, info
    trials = study.trials()
    assert len(trials) == info.plan.max_trials
    assert {t.state for t in trials} == {"completed"}, [t.error for t in trials if t.error]
    for t in trials:
        assert [r for r, _ in t.curve] == list(range(1, int(t.resource) + 1))


# Deletes a handoff stream only while it is empty, as the server does for a worker it thinks
# is gone: atomically, so no job is ever lost with it.
_DELETE_IF_EMPTY = """
if redis.call('XLEN', KEYS[1]) == 0 then return redis.call('DEL', KEYS[1]) end
return 0
"""


@pytest.mark.slow
def test_workers_survive_their_handoff_streams_being_removed(tmp_path) -> None:
    with LocalCluster(workers=2, trainers=("analytic",), workdir=str(tmp_path)) as cluster, \
            cluster.client() as client:
        r = redis.Redis.from_url(cluster.redis_url, decode_responses=True)
        delete = r.register_script(_DELETE_IF_EMPTY)
        study = client.create_study(spec(seed=4))
        removed = 0
        while study.refresh().state == 1 and removed < 8:  # ACTIVE
            for member in r.smembers(keys.handoffs()):
                stream = keys.handoff(*keys.parse_handoff_member(member))
                removed += int(delete(keys=[stream]))
            time.sleep(0.5)
        assert removed > 0
        assert_all_completed(study, study.wait(timeout=120))
        assert all(w.poll() is None for w in cluster.workers), "a worker exited"
        logs = "".join((tmp_path / f"worker{i}.log").read_text() for i in range(2))
        assert "re-creating this worker's streams" in logs


@pytest.mark.slow
@pytest.mark.parametrize("retry_seconds", ["60", "0.5"])
def test_workers_ride_out_redis_refusing_writes(tmp_path, monkeypatch, retry_seconds) -> None:
    # 60: the reports wait the refusal out. 0.5: they give up, and the jobs are abandoned
    # (handed back through the lease), not failed.
    monkeypatch.setenv("HPOD_REDIS_RETRY_SECONDS", retry_seconds)
    with LocalCluster(workers=2, trainers=("analytic",), workdir=str(tmp_path),
                      lease_seconds=3.0) as cluster, cluster.client() as client:
        r = redis.Redis.from_url(cluster.redis_url, decode_responses=True)
        # Steps slow enough that the workers are busy while Redis refuses writes.
        study = client.create_study({**spec(seed=5), "trainer_settings": {"step_seconds": 0.2}})
        wait_for(lambda: study.refresh().trials_finished >= 2, what="two finished trials")
        def logs() -> str:
            return "".join((tmp_path / f"worker{i}.log").read_text() for i in range(2))

        # A worker must be training when the refusals start: an idle one has no report to
        # give up (Hyperband's rungs wait for their last job, and under load both can idle).
        wait_for(lambda: any(r.hget(keys.worker(w), "status") == "busy"
                             for w in r.zrange(keys.workers(), 0, -1)), what="a busy worker")
        with refusing_writes(r):
            time.sleep(4.0)
            # On a loaded machine the workers may not have written yet: refuse until they met
            # it (and, with a short retry budget, gave a job up).
            seen = "abandoned, Redis unreachable" if retry_seconds == "0.5" else "OutOfMemoryError"
            wait_for(lambda: seen in logs(), timeout=40, what=seen)
        info = study.wait(timeout=180)
        assert_all_completed(study, info)
        assert all(w.poll() is None for w in cluster.workers), "a worker exited"
        logs = logs()
        assert "OutOfMemoryError" in logs  # the refusals reached the workers
        if retry_seconds == "0.5":
            assert "abandoned, Redis unreachable" in logs
            assert sum(t.lost_jobs for t in study.trials()) >= 1


@pytest.mark.slow
def test_sigterm_with_redis_hung_exits(tmp_path) -> None:
    with LocalCluster(workers=1, trainers=("analytic",), workdir=str(tmp_path)) as cluster, \
            cluster.client() as client:
        r = redis.Redis.from_url(cluster.redis_url, decode_responses=True)
        client.create_study({**spec(seed=6), "trainer_settings": {"step_seconds": 0.3}})
        wait_for(lambda: any(r.hget(keys.worker(w), "status") == "busy"
                             for w in r.zrange(keys.workers(), 0, -1)), what="a busy worker")
        (worker,) = cluster.workers
        with paused(cluster.redis.proc):
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=120)  # exits on its own: not killed, not hung
        assert worker.returncode is not None
