"""Continuation affinity: a trial's next segment goes to the idle worker that trained its last
one, which continues from the model it kept in memory; any other worker takes it from the
checkpoint when that worker does not come for it. Real Redis, and real server and workers for
the study."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from hpod.client.local import LocalCluster
from hpod.server.store import keys
from hpod.server.store.embedded import EmbeddedRedis
from hpod.server.store.redis_store import Batch, RedisStore
from hpod.server.store.worker_queue import WorkerQueue

TRAINER = "analytic"


def job(job_id: str, study: str = "s1") -> str:
    return json.dumps({"study_id": study, "job_id": job_id, "trial_id": 0})


def queues(redis_server: EmbeddedRedis, *wids: str) -> list[WorkerQueue]:
    out = []
    for wid in wids:
        q = WorkerQueue(redis_server.url, wid, [TRAINER])
        q.ensure_streams()
        q.register()
        out.append(q)
    q.r.hset(keys.study("s1"), "state", "active")
    return out


def commit(store: RedisStore, *jobs: tuple[str, str]) -> None:
    """Enqueue jobs as the server does: (worker id or "" for the shared stream, job id)."""
    asyncio.run(_commit(store.url, [(TRAINER, wid, job(jid)) for wid, jid in jobs]))


async def _commit(url: str, jobs: list[tuple[str, str, str]]) -> None:
    store = RedisStore(url)
    try:
        await store.commit("s1", Batch(jobs=jobs))
    finally:
        await store.close()


def return_handoffs(url: str, max_age: float, lease: float = 10.0) -> int:
    async def go() -> int:
        store = RedisStore(url)
        try:
            return await store.return_handoffs(max_age, lease)
        finally:
            await store.close()
    return asyncio.run(go())


def test_a_handoff_is_taken_before_shared_jobs_and_the_shared_one_stays_for_others(
        redis_server: EmbeddedRedis) -> None:
    a, b = queues(redis_server, "wa", "wb")
    store = RedisStore(redis_server.url)
    commit(store, ("", "shared"), ("wa", "mine"))
    lease = a.take(block_ms=100)
    assert lease is not None and lease.job_id == "mine" and lease.handed_off
    # The shared job read in the same call went back to the shared stream for anyone.
    other = b.take(block_ms=100)
    assert other is not None and other.job_id == "shared" and not other.handed_off
    assert a.take(block_ms=50) is None
    # Finishing a handoff acknowledges it in the stream it came from.
    a.finish(lease, "complete", value=1.0)
    assert a.r.xlen(keys.handoff(TRAINER, "wa")) == 0
    assert a.r.xpending(keys.handoff(TRAINER, "wa"), keys.WORKER_GROUP)["pending"] == 0


def test_an_unclaimed_handoff_goes_back_to_the_shared_stream_in_time(
        redis_server: EmbeddedRedis) -> None:
    a, b = queues(redis_server, "wa", "wb")
    store = RedisStore(redis_server.url)
    commit(store, ("wa", "j1"))
    assert b.take(block_ms=50) is None  # not b's
    assert return_handoffs(redis_server.url, max_age=5.0) == 0  # too young to move
    time.sleep(0.25)
    assert return_handoffs(redis_server.url, max_age=0.2) == 1
    lease = b.take(block_ms=100)
    assert lease is not None and lease.job_id == "j1" and not lease.handed_off
    assert a.take(block_ms=50) is None  # moved, not copied


def test_a_handoff_already_read_is_never_moved(redis_server: EmbeddedRedis) -> None:
    (a,) = queues(redis_server, "wa")
    store = RedisStore(redis_server.url)
    commit(store, ("wa", "j1"))
    lease = a.take(block_ms=100)
    assert lease is not None
    time.sleep(0.1)
    assert return_handoffs(redis_server.url, max_age=0.0) == 0
    assert a.r.xlen(keys.jobs(TRAINER)) == 0
    # Its lease lives in the handoff stream's pending list, where the reaper looks for it.
    expired = asyncio.run(_expired(redis_server.url))
    assert [(s, e) for s, e, _ in expired] == [(keys.handoff(TRAINER, "wa"), lease.entry_id)]


async def _expired(url: str) -> list:
    store = RedisStore(url)
    try:
        return await store.expired_jobs(0.0)
    finally:
        await store.close()


def test_handoffs_of_a_gone_worker_move_at_once_and_its_stream_is_removed(
        redis_server: EmbeddedRedis) -> None:
    a, b = queues(redis_server, "wa", "wb")
    store = RedisStore(redis_server.url)
    commit(store, ("wa", "j1"))
    a.unregister()
    assert return_handoffs(redis_server.url, max_age=3600) == 1
    assert not a.r.exists(keys.handoff(TRAINER, "wa"))
    assert keys.handoff_member(TRAINER, "wa") not in a.r.smembers(keys.handoffs())
    lease = b.take(block_ms=100)
    assert lease is not None and lease.job_id == "j1"
    # A late handoff to the gone worker (a server that saw it idle a moment ago) re-creates
    # its stream without a group; it is found and moved all the same.
    commit(store, ("wa", "j2"))
    assert return_handoffs(redis_server.url, max_age=3600) == 1
    lease = b.take(block_ms=100)
    assert lease is not None and lease.job_id == "j2"


# ---------------------------------------------------------------- through the service


@pytest.fixture(scope="module")
def affinity_cluster(tmp_path_factory) -> LocalCluster:
    workdir = tmp_path_factory.mktemp("affinity")
    with LocalCluster(workers=2, trainers=(TRAINER,), workdir=str(workdir), lease_seconds=3.0,
                      worker_args=("--keep-models", "16")) as c:
        yield c


def test_promoted_trials_continue_in_the_memory_of_their_worker(
        affinity_cluster: LocalCluster) -> None:
    with affinity_cluster.client() as client:
        study = client.create_study({
            "trainer": TRAINER, "resource": {"max_resource": 9, "eta": 3},
            "algorithm": {"name": "idhb"}, "seed": 2})
        assert study.wait(timeout=180).state == 2
        study.raise_max_resource()
        info = study.wait(timeout=180)
        assert info.state == 2
        trials = study.trials()
        # Every step trained exactly once, whether a segment continued in memory or from disk.
        for t in trials:
            assert [r for r, _ in t.curve] == list(range(1, int(t.resource) + 1))
        assert info.resource_used == pytest.approx(sum(t.resource for t in trials))
        assert sum(t.warm_resumes for t in trials) > 0
