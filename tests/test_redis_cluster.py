"""hpod on a real Redis Cluster: 3 masters and 3 replicas started on loopback ports, server
replicas and workers as processes, a server replica and a master killed (kill -9) mid-run
while the other replicas and the master's replica take over. Every study completes, no
accepted result is lost, no segment is counted twice."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
import redis
from helpers import wait_for
from hpod.client.local import LocalCluster, free_port
from hpod.client.sdk import Client
from hpod.server.store import keys
from hpod.server.store.connect import is_cluster, plain_url
from hpod.server.store.embedded import EmbeddedCluster
from hpod.server.store.redis_store import Batch, RedisStore
from hpod.server.store.worker_queue import WorkerQueue
from hpod.v1 import hpod_pb2 as pb
from redis.cluster import RedisCluster
from test_faults import assert_nothing_lost_or_doubled, slow_spec
from test_replicas import (
    AppliedBy,
    all_addresses,
    owners,
    restart_each_replica_during_a_study,
    spread,
    wait_all,
)

TRAINER = "analytic"
ACCEPTED = re.compile(r"job (\S+): complete accepted \(trial (\d+), resource ([\d.e+-]+), "
                      r"value (\S+), lease held True\)")


@pytest.fixture
def redis_cluster(tmp_path) -> EmbeddedCluster:
    with EmbeddedCluster(str(tmp_path / "cluster")) as cluster:
        yield cluster


def test_a_cluster_url_is_told_by_its_scheme_or_by_asking(redis_cluster, redis_server) -> None:
    port = redis_cluster.ports[1]
    assert plain_url(f"redis+cluster://127.0.0.1:{port}/0") == (f"redis://127.0.0.1:{port}/0",
                                                                 True)
    assert is_cluster(f"redis://127.0.0.1:{port}/0")  # cluster_enabled:1
    assert not is_cluster(redis_server.url)
    with pytest.raises(ValueError, match="database 0 only"):
        RedisStore(f"redis+cluster://127.0.0.1:{port}/3")


def test_jobs_leave_the_outbox_once_whoever_copies_them(redis_cluster) -> None:
    """A commit writes its jobs into the study's outbox (its slot); copying them into the job
    stream (the trainer's slot) adds each job once however often it is repeated, as after a
    crash between the commit and the copy."""
    async def scenario() -> None:
        store = RedisStore(redis_cluster.url)
        try:
            sid = "sout1"
            fence = await store.leases.acquire(sid, "r1", 30)
            await store.create_study(sid, {"x": 1}, "outbox", fence)
            jobs = [(TRAINER, "", f'{{"study_id":"{sid}","job_id":"{sid}-j{i}"}}')
                    for i in range(3)]
            await store.commit(sid, Batch(inputs=[{"op": "ask"}], jobs=jobs), fence, 0)
            assert await store.r.xlen(keys.jobs(TRAINER)) == 3
            box = (await store.outbox([sid]))[sid]
            assert list(box) == [f"{sid}-j{i}" for i in range(3)]  # in creation order
            assert await store.send_jobs(sid, list(box.values())) == 0  # a second copy: none
            assert await store.r.xlen(keys.jobs(TRAINER)) == 3
            await store.clear_outbox(sid, box, fence)
            assert (await store.outbox([sid]))[sid] == {}
            assert not await store.r.exists(keys.sent(TRAINER, sid, f"{sid}-j0"))
        finally:
            await store.close()
    asyncio.run(scenario())


def test_a_copy_lost_with_its_master_is_copied_again_from_the_outbox(redis_cluster) -> None:
    """A failed-over job stream master may come back without the last copy and its mark;
    the outbox still has the job, and copying it again adds it once; a handoff to a worker
    that is gone goes back to the shared stream (both streams in the trainer's slot)."""
    async def scenario() -> None:
        store = RedisStore(redis_cluster.url)
        try:
            sid = "sout2"
            fence = await store.leases.acquire(sid, "r1", 30)
            await store.create_study(sid, {"x": 1}, "outbox", fence)
            job = f'{{"study_id":"{sid}","job_id":"{sid}-j1"}}'
            await store.commit(sid, Batch(inputs=[{"op": "ask"}], jobs=[(TRAINER, "gone", job)]),
                               fence, 0)
            stream = keys.handoff(TRAINER, "gone")
            assert await store.r.xlen(stream) == 1
            # What a failover that lost the copy leaves: no entry, no mark.
            await store.r.delete(stream, keys.sent(TRAINER, sid, f"{sid}-j1"))
            box = (await store.outbox([sid]))[sid]
            assert await store.send_jobs(sid, list(box.values())) == 1
            assert await store.send_jobs(sid, list(box.values())) == 0
            assert await store.return_handoffs(max_age_s=60, lease_s=5) == 1  # never heartbeated
            assert await store.r.xlen(keys.jobs(TRAINER)) == 1
            assert not await store.r.exists(stream)
            assert keys.handoff_member(TRAINER, "gone") not in await store.r.smembers(
                keys.handoffs())
        finally:
            await store.close()
    asyncio.run(scenario())


def test_a_worker_takes_and_reports_across_slots(redis_cluster) -> None:
    """Job streams of two trainers (two slots), the study's event stream (a third), the
    registry: one worker reads both trainers and reports, each step in its own slot."""
    q = WorkerQueue(redis_cluster.url, "w1", ["mlp", TRAINER], retry_seconds=10)
    q.ensure_streams()
    q.register()
    r = q.r
    r.xadd(keys.jobs(TRAINER), {"j": '{"study_id":"s1","job_id":"s1-j1","trial_id":0}'})
    lease = q.take(block_ms=2000)
    assert lease is not None and lease.trainer == TRAINER and lease.job_id == "s1-j1"
    q.start(lease)
    assert q.progress(lease, 1.0, 0.5) == (False, True)
    assert q.finish(lease, "complete", value=0.25) is True
    ops = [f["e"] for _, f in r.xrange(keys.events("s1"))]
    assert [re.search(r'"op": "(\w+)"', e).group(1) for e in ops] == [
        "start", "progress", "complete"]
    assert r.xpending(keys.jobs(TRAINER), keys.WORKER_GROUP)["pending"] == 0
    assert r.hget(keys.worker("w1"), "status") == "idle"
    q.close()


class Applied(AppliedBy):
    """``AppliedBy`` that keeps sampling through the failover (a read of the dead master's
    slots fails until its replica takes over)."""

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                super().run()
            except (redis.RedisError, OSError):
                time.sleep(0.05)


def accepted_results(workdir: Path) -> dict[str, tuple[int, float, float]]:
    """job id -> (trial, resource, value) of every completion Redis accepted from a worker
    that still held the job's lease (from the workers' logs)."""
    out = {}
    for path in workdir.glob("worker*.log"):
        for m in ACCEPTED.finditer(path.read_text(errors="replace")):
            assert m.group(1) not in out, f"job {m.group(1)} completed twice"
            out[m.group(1)] = (int(m.group(2)), float(m.group(3)), float(m.group(4)))
    return out


def master_of(rc: RedisCluster, key: str) -> int:
    return int(rc.get_node_from_key(key).port)


@pytest.mark.slow
def test_studies_complete_through_a_replica_kill_and_a_master_failover(redis_cluster,
                                                                        tmp_path) -> None:
    """3 server replicas and 4 workers on the cluster, 6 studies (more if none lands in the
    victim master's slots): kill -9 of the replica owning the most studies, then kill -9 of the
    job streams' master while its replica takes over. Every study completes and every result
    Redis accepted from a worker is in its study exactly once."""
    nodes = RedisCluster(host="127.0.0.1", port=redis_cluster.ports[0], decode_responses=True)
    victim = master_of(nodes, keys.jobs(TRAINER))  # the job streams' master
    entry = next(p for p in redis_cluster.masters() if p != victim)
    # A plain redis:// URL: the server and the workers find out it is a cluster.
    url = f"redis://127.0.0.1:{entry}/0"
    workdir = tmp_path / "hpod"
    with LocalCluster(workers=4, trainers=(TRAINER,), workdir=str(workdir), redis_url=url,
                      lease_seconds=8.0, server_args=("--study-lease-seconds", "5")) as hp:
        for _ in range(2):
            hp.add_replica(free_port())
        r = RedisCluster(host="127.0.0.1", port=entry, decode_responses=True)
        with Client(all_addresses(hp), timeout=60) as client:
            sids = [client.create_study(slow_spec(seed=40 + i)).id for i in range(6)]
            # At least one study in the victim's slots too (ids are random): its commits,
            # event stream and outbox fail over with the job streams.
            while not any(master_of(r, keys.study(s)) == victim for s in sids) and len(sids) < 12:
                sids.append(client.create_study(slow_spec(seed=40 + len(sids))).id)
            on_victim = [s for s in sids if master_of(r, keys.study(s)) == victim]
            assert on_victim
            wait_for(lambda: spread(r, sids, 3), timeout=90, what="studies on all 3 replicas")
            sampler = Applied(r, sids)
            sampler.start()
            wait_for(lambda: sum(client.study(s).info.trials_finished for s in sids) >= 6,
                     timeout=180, what="six finished trials")
            by_owner = owners(r, sids)
            dead, _ = Counter(by_owner.values()).most_common(1)[0]
            moved = [s for s, rid in by_owner.items() if rid == dead]
            port = int(dead.rpartition(":")[2])
            proc = hp.server if port == hp.port else hp.replicas[port]
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            # The master dies while the replica's studies are still moving.
            time.sleep(1.0)
            killed_at = time.time()
            redis_cluster.kill(victim)
            took_over = wait_for_new_master(redis_cluster, victim, keys.jobs(TRAINER))
            done = wait_all(client, sids, timeout=400)
            sampler.halt.set()
            sampler.join()
            accepted = accepted_results(workdir)
            for sid in sids:
                assert done[sid].state == pb.STUDY_STATE_COMPLETED, done[sid].error
                study = client.study(sid)
                assert_nothing_lost_or_doubled(study, study.info,
                                               progress_may_be_lost=sid in on_victim)
                curves = {t.id: dict(t.curve) for t in study.trials()}
                for job_id, (trial, resource, value) in accepted.items():
                    if job_id.startswith(sid + "-"):
                        assert curves[trial].get(resource) == pytest.approx(value), (
                            f"{job_id}: accepted result {value} at {resource} not in the study")
            assert sum(1 for j in accepted if j.partition("-")[0] in sids) > 0
            assert all(rid != dead for rid in owners(r, moved).values() if rid)
            moves = {sid: sampler.failover(sid, dead) for sid in moved}
            seen = [x for s in sids for x in sampler.seen[s]]
            print(f"\nkill -9 of server replica {dead} (study lease 5s), its studies moved "
                  "after: " + ", ".join(f"{sid} {t:.2f}s" if t is not None else
                                        f"{sid} (ended before)" for sid, t in moves.items()))
            print(f"kill -9 of master :{victim} (job streams; studies {on_victim}): replica "
                  f"took over its slots after {took_over - killed_at:.2f}s; no event applied "
                  f"for {gap_around(seen, killed_at):.2f}s (last before the kill to first after)")


def wait_for_new_master(cluster: EmbeddedCluster, dead: int, key: str) -> float:
    """When a write to ``key``'s slot succeeded again after its master died."""
    rc = RedisCluster(host="127.0.0.1", port=next(p for p in cluster.masters() if p != dead))
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            rc.set(f"{key}:probe", "1", ex=5)
            return time.time()
        except (redis.RedisError, OSError):
            time.sleep(0.05)
    raise AssertionError(f"no replica took over the slots of master :{dead}")


def gap_around(seen: list[tuple[str, float]], at: float) -> float:
    """The time between the last event applied before ``at`` and the first after it."""
    before = [t for _, t in seen if t <= at]
    after = [t for _, t in seen if t > at]
    return (min(after) - max(before)) if before and after else 0.0



@pytest.mark.slow
def test_rolling_restart_of_every_replica_on_a_cluster(redis_cluster, tmp_path) -> None:
    """The 3 server replicas restarted one by one (SIGTERM, then started again) during a
    study on the cluster: reads through all of them never fail with anything but UNAVAILABLE
    or, as a server stops, CANCELLED (both retried), and the study completes with nothing lost
    or doubled."""
    url = f"redis+cluster://127.0.0.1:{redis_cluster.masters()[0]}/0"
    lease = 3.0
    with LocalCluster(workers=2, trainers=(TRAINER,), workdir=str(tmp_path), redis_url=url,
                      lease_seconds=lease,
                      server_args=("--study-lease-seconds", str(lease))) as hp:
        for _ in range(2):
            hp.add_replica(free_port())
        restart_each_replica_during_a_study(hp, 51, lease, "rolling restart on the cluster")
