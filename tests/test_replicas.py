"""Several server replicas on one Redis: study leases with fencing, failover on kill -9,
rolling restarts. Real Redis, real server and worker processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
import redis
import redis.asyncio as aioredis
from helpers import wait_for
from hpod.client.local import LocalCluster, free_port
from hpod.client.sdk import Client
from hpod.client.spec import build_spec
from hpod.server.manager import Settings, StudyManager
from hpod.server.routing import MOVING_NOTE
from hpod.server.service.convert import config_from_spec
from hpod.server.store import keys
from hpod.server.store.leases import replica_of
from hpod.server.store.redis_store import Batch, LeaseLost, RedisStore
from hpod.v1 import hpod_pb2 as pb
from test_faults import assert_nothing_lost_or_doubled, slow_spec

LEASE = 3.0  # study leases and job leases in these tests, seconds


# ---------------------------------------------------------------- fencing, on a real Redis


def test_a_stale_owner_can_never_commit(redis_server) -> None:
    async def scenario() -> None:
        a, b = RedisStore(redis_server.url), RedisStore(redis_server.url)
        try:
            sid = "sfence"
            held_a = await a.leases.acquire(sid, "replica-a", 0.2)
            assert held_a is not None and replica_of(held_a) == "replica-a"
            await a.create_study(sid, {"x": 1}, "fenced", held_a)
            # B cannot take a study whose lease is live...
            assert await b.leases.acquire(sid, "replica-b", 5.0) is None
            await asyncio.sleep(0.4)  # ...A stalls past its lease: B takes it
            held_b = await b.leases.acquire(sid, "replica-b", 5.0)
            assert held_b is not None and held_b != held_a
            assert int(held_b.partition("|")[0]) > int(held_a.partition("|")[0])
            # A, waking up, still believes it owns the study: its commit writes nothing.
            with pytest.raises(LeaseLost):
                await a.commit(sid, Batch(inputs=[{"op": "stale"}],
                                          study_fields={"state": "stale"}), held_a)
            assert await a.r.lrange(keys.log(sid), 0, -1) == []
            assert await a.r.hget(keys.study(sid), "state") == "active"
            await b.commit(sid, Batch(inputs=[{"op": "fresh"}], study_fields={"state": "x"}),
                           held_b)
            assert await b.r.lrange(keys.log(sid), 0, -1) == ['{"op":"fresh"}']
            # A renewing finds the lease gone; releasing it does not free B's.
            assert await a.leases.renew({sid: held_a}, 5.0) == {sid}
            assert not await a.leases.release(sid, held_a)
            assert await b.leases.renew({sid: held_b}, 5.0) == set()
            # A replica restarted under the same id takes its study back, with a new token.
            again = await b.leases.acquire(sid, "replica-b", 5.0)
            assert again is not None and again != held_b
            with pytest.raises(LeaseLost):
                await b.commit(sid, Batch(inputs=[{"op": "old copy"}]), held_b)
        finally:
            await a.close()
            await b.close()

    asyncio.run(scenario())


def test_large_commits_are_split_into_bounded_commands(redis_server) -> None:
    async def scenario() -> None:
        store = RedisStore(redis_server.url)
        try:
            sid = "sbig"
            held = await store.leases.acquire(sid, "r", 5.0)
            await store.create_study(sid, {}, "big", held)
            trials = {i: f'{{"id":{i}}}' for i in range(3000)}
            inputs = [{"op": "n", "i": i} for i in range(2500)]
            await store.commit(sid, Batch(inputs=inputs, trials=trials), held)
            assert await store.r.llen(keys.log(sid)) == 2500
            assert await store.r.hlen(keys.trials(sid)) == 3000
        finally:
            await store.close()

    asyncio.run(scenario())


class _NoPeers:
    async def peers(self) -> list:
        return []


class _Call:
    """The little of a gRPC context the listing merge reads."""

    def invocation_metadata(self) -> tuple:
        return ()

    def time_remaining(self) -> None:
        return None


def test_studies_no_replica_holds_are_listed_from_redis_page_by_page(redis_server) -> None:
    """The merge of ``Router.list_studies`` (server/routing.py) on a real Redis, with no replica
    holding any study: each page of every size lists the next studies from their hashes,
    marked as moving, and the last page is the only one without a next page token."""
    from types import SimpleNamespace

    from hpod.client.spec import build_spec
    from hpod.server.routing import Router
    from hpod.server.service.convert import config_from_spec

    async def scenario() -> None:
        store = RedisStore(redis_server.url)
        try:
            config = config_from_spec(build_spec(external_spec(1))).to_dict()
            sids = [f"smove{i}" for i in range(7)]
            for sid in sids:
                await store.create_study(sid, config, sid)
            router = Router(SimpleNamespace(store=store, ownership=_NoPeers(),
                                            settings=SimpleNamespace(consumer="r1")))
            for size in (1, 2, 3, 7, 100):
                got, token, pages_seen = [], "", 0
                while True:
                    req = pb.ListStudiesRequest(page_size=size, page_token=token)
                    resp = await router.list_studies(req, _Call(), pb.ListStudiesResponse())
                    pages_seen += 1
                    assert len(resp.studies) <= size
                    got += resp.studies
                    token = resp.next_page_token
                    if not token:
                        break
                assert [st.id for st in got] == sids, size
                assert pages_seen == -(-len(sids) // size), size
                assert all(list(st.plan.notes) == [MOVING_NOTE] for st in got)
                assert all(st.state == pb.STUDY_STATE_ACTIVE for st in got)
            await router.close()
        finally:
            await store.close()

    asyncio.run(scenario())


# ------------------------------------------- taking a study over, in process on a real Redis


TAKEOVER_SPEC = {"name": "takeover", "trainer": "analytic", "seed": 3,
                 "resource": {"max_resource": 9, "eta": 3}, "algorithm": {"name": "hyperband"}}


@contextlib.asynccontextmanager
async def replica(url: str, rid: str,
                  patch: Callable[[StudyManager], None] = lambda m: None
                  ) -> AsyncIterator[StudyManager]:
    """One server replica's study manager, started and (on leaving) drained."""
    m = StudyManager(Settings(redis_url=url, consumer=rid, fit_processes=0,
                              study_lease_seconds=60.0, lease_seconds=60.0))
    patch(m)
    await m.start()
    try:
        yield m
    finally:
        await m.drain()  # its studies are free at once (as at SIGTERM)
        await m.stop()


async def until(what: str, check: Callable[[], Any]) -> None:
    for _ in range(1200):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_new_owner_applies_what_its_predecessor_left_pending_before_newer_events(
        redis_server) -> None:
    """The previous owner read a job's start and first points and died before applying them;
    the worker reported on. The new owner must apply those first: applied after the later
    points, they would be refused as duplicates and leave a gap in the curve."""
    async def go() -> None:
        async with replica(redis_server.url, "replica-a") as a:
            sid = (await a.create(config_from_spec(build_spec(TAKEOVER_SPEC)))).engine.study_id
            asked = await a.submit(sid, {"op": "ask", "free": 20})
            job = max(asked, key=lambda j: j.to_resource - j.from_resource)
        # a drained: the study is free. The worker's events, of which a dead replica read
        # (and never acknowledged) the first three.
        points = range(int(job.from_resource) + 1, int(job.to_resource) + 1)
        assert len(points) >= 3
        r = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
        events = [{"op": "start", "job_id": job.job_id, "worker": "w1"},
                  *({"op": "progress", "job_id": job.job_id, "resource": float(p),
                     "value": 1.0 / p} for p in points),
                  {"op": "complete", "job_id": job.job_id, "value": 1.0 / points[-1],
                   "resource": float(points[-1]), "cost": 1.0}]
        for ev in events:
            await r.xadd(keys.events(sid), {"e": json.dumps(ev)})
        await r.xreadgroup(keys.SERVER_GROUP, "replica-dead", {keys.events(sid): ">"}, count=3)
        await r.aclose()

        def apply_loop_runs_first(m: StudyManager) -> None:
            # The apply loop may run in the moment between the rebuilt study going live and
            # its predecessor's events being claimed: here it always does.
            take_pending = m.store.take_pending

            async def racing(study: str, consumer: str) -> int:
                await m._apply_once()
                return await take_pending(study, consumer)
            m.store.take_pending = racing  # type: ignore[method-assign]

        async with replica(redis_server.url, "replica-b", apply_loop_runs_first) as b:
            async def ended() -> bool:
                live = b.studies.get(sid)
                return live is not None and job.job_id not in live.engine.jobs
            await until("the trial's job to end", ended)
            trial = b.studies[sid].engine.trials[job.trial_id]
            assert trial.state in ("completed", "paused")
            assert [p[0] for p in trial.curve] == [float(p) for p in points]

    asyncio.run(go())


def test_a_study_given_back_is_released_only_after_a_read_of_its_events_returns(
        redis_server) -> None:
    """A read of a study's events already sent to Redis lands on this replica's pending list;
    the next owner claims that list once, when it takes the study, so the lease must not be
    released before the read has returned (however long that takes)."""
    async def go() -> None:
        reading, let_go = asyncio.Event(), asyncio.Event()

        def slow_reads(m: StudyManager) -> None:
            read_events = m.store.read_events

            async def held(*args: Any, **kw: Any) -> Any:
                got = await read_events(*args, **kw)
                if not kw.get("pending") and len(args) > 3 and args[3] == 100:
                    reading.set()
                    await let_go.wait()
                return got
            m.store.read_events = held  # type: ignore[method-assign]

        async with replica(redis_server.url, "replica-a", slow_reads) as a:
            sid = (await a.create(config_from_spec(build_spec(TAKEOVER_SPEC)))).engine.study_id
            await asyncio.wait_for(reading.wait(), 60)  # the apply loop's read is under way
            giving = asyncio.create_task(a.ownership.give_back(sid))
            await asyncio.sleep(0.5)
            assert not giving.done()
            assert (await a.store.leases.owners([sid])).get(sid)  # still held
            let_go.set()
            await asyncio.wait_for(giving, 60)
            assert not (await a.store.leases.owners([sid])).get(sid)

    asyncio.run(go())


# ---------------------------------------------------------------- real processes


def owners(r: redis.Redis, sids: list[str]) -> dict[str, str]:
    return {sid: replica_of(r.get(keys.owner(sid))) for sid in sids}


def spread(r: redis.Redis, sids: list[str], replicas: int) -> bool:
    got = owners(r, sids)
    return all(got.values()) and len(set(got.values())) == replicas


class AppliedBy(threading.Thread):
    """Samples each study's ``applied_by`` field (replica and time of its last applied worker
    events): the failover time is the first time a new owner applied an event minus the last
    time the dead replica did."""

    def __init__(self, r: redis.Redis, sids: list[str]) -> None:
        super().__init__(daemon=True)
        self.r, self.sids = r, sids
        self.seen: dict[str, list[tuple[str, float]]] = {s: [] for s in sids}
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            for sid in self.sids:
                raw = self.r.hget(keys.study(sid), "applied_by")
                if raw:
                    rid, _, at = raw.rpartition(" ")
                    if not self.seen[sid] or self.seen[sid][-1] != (rid, float(at)):
                        self.seen[sid].append((rid, float(at)))
            time.sleep(0.02)

    def failover(self, sid: str, dead: str) -> float | None:
        seen = self.seen[sid]
        last_dead = max((t for rid, t in seen if rid == dead), default=None)
        after = [t for rid, t in seen if rid != dead and last_dead is not None and t > last_dead]
        return None if last_dead is None or not after else min(after) - last_dead


def replica_cluster(tmp_path, workers: int) -> LocalCluster:
    return LocalCluster(workers=workers, trainers=("analytic",), workdir=str(tmp_path),
                        lease_seconds=LEASE, server_args=("--study-lease-seconds", str(LEASE)))


def all_addresses(cluster: LocalCluster) -> str:
    """One target naming every replica: the channel moves to another when one goes away,
    as behind a Kubernetes Service."""
    return "ipv4:" + ",".join(f"127.0.0.1:{p}" for p in [cluster.port, *cluster.replicas])


def wait_all(client: Client, sids: list[str], timeout: float) -> dict[str, pb.Study]:
    deadline = time.time() + timeout
    done: dict[str, pb.Study] = {}
    while len(done) < len(sids):
        assert time.time() < deadline, f"studies still running: {set(sids) - set(done)}"
        for sid in sids:
            if sid not in done:
                info = client.study(sid).info
                if info.state != pb.STUDY_STATE_ACTIVE:
                    done[sid] = info
        time.sleep(0.3)
    return done


@pytest.mark.slow
def test_kill_9_of_the_busiest_replica_moves_its_studies_and_loses_nothing(tmp_path) -> None:
    with replica_cluster(tmp_path, workers=4) as cluster:
        for _ in range(2):
            cluster.add_replica(free_port())
        r = redis.Redis.from_url(cluster.redis_url, decode_responses=True)
        with Client(all_addresses(cluster), timeout=60) as client:
            studies = [client.create_study(slow_spec(seed=10 + i)) for i in range(6)]
            sids = [s.id for s in studies]
            wait_for(lambda: spread(r, sids, 3), timeout=60, what="studies on all 3 replicas")
            sampler = AppliedBy(r, sids)
            sampler.start()
            wait_for(lambda: sum(client.study(s).info.trials_finished for s in sids) >= 6,
                     timeout=120, what="six finished trials")
            by_owner = owners(r, sids)
            dead, _ = Counter(by_owner.values()).most_common(1)[0]
            port = int(dead.rpartition(":")[2])
            proc = cluster.server if port == cluster.port else cluster.replicas[port]
            moved = [s for s, rid in by_owner.items() if rid == dead]
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            # Until its lease expires a study of the dead replica is "moving": UNAVAILABLE (the
            # SDK retries reads), never NOT_FOUND.
            survivor = next(p for p in [cluster.port, *cluster.replicas] if p != port)
            with Client(f"127.0.0.1:{survivor}") as direct:
                for sid in moved:
                    try:
                        direct.stub.GetStudy(pb.GetStudyRequest(study_id=sid), timeout=10)
                    except grpc.RpcError as e:
                        assert e.code() == grpc.StatusCode.UNAVAILABLE, e.details()
                        assert "retry" in e.details()
            done = wait_all(client, sids, timeout=300)
            sampler.halt.set()
            sampler.join()
            for sid in sids:
                assert done[sid].state == pb.STUDY_STATE_COMPLETED, done[sid].error
                study = client.study(sid)
                assert_nothing_lost_or_doubled(study, study.info)
            assert all(rid != dead for rid in owners(r, moved).values() if rid)
            times = {sid: sampler.failover(sid, dead) for sid in moved}
            print(f"\nfailover after kill -9 of {dead} (study lease {LEASE:g}s): "
                  + ", ".join(f"{sid} {t:.2f}s" if t is not None else f"{sid} (ended before)"
                              for sid, t in times.items()))


def probe(address: str, sid: str, halt: Any, out: Any) -> None:
    """Reads through one channel to all replicas, all the time; puts (calls, {code: count})
    for every status other than OK, and what each code other than UNAVAILABLE said (when, which
    call, the details). A process of its own: a thread using gRPC while the test forks
    servers can deadlock the fork."""
    from hpod.v1 import hpod_pb2_grpc as pb_grpc

    channel = grpc.insecure_channel(address)
    stub = pb_grpc.HpodStub(channel)
    calls = [lambda: stub.GetStudy(pb.GetStudyRequest(study_id=sid), timeout=10),
             lambda: stub.ListTrials(pb.ListTrialsRequest(study_id=sid), timeout=10),
             lambda: stub.ListStudies(pb.ListStudiesRequest(), timeout=10)]
    codes: Counter = Counter()
    said: list[str] = []
    n = 0
    while not halt.is_set():
        for i, call in enumerate(calls):
            n += 1
            try:
                call()
            except grpc.RpcError as e:
                codes[e.code().name] += 1
                if e.code() != grpc.StatusCode.UNAVAILABLE:
                    said.append(f"{time.strftime('%H:%M:%S')} call {i}: {e.details()}")
        time.sleep(0.05)
    channel.close()
    out.put((n, dict(codes), said))


def restart_each_replica_during_a_study(cluster: LocalCluster, seed: int, lease: float,
                                        label: str) -> None:
    """The server replicas restarted one by one (SIGTERM, then started again) during a
    study: reads through all of them never fail with anything but UNAVAILABLE or, as a server
    stops, CANCELLED (both retried by the SDK), and the study completes with nothing lost or
    doubled."""
    with Client(all_addresses(cluster), timeout=60) as client:
        spec = {**slow_spec(seed=seed), "trainer_settings": {"step_seconds": 0.8}}
        study = client.create_study(spec)
        ctx = multiprocessing.get_context("spawn")
        halt, out = ctx.Event(), ctx.Queue()
        prober = ctx.Process(target=probe, args=(all_addresses(cluster), study.id, halt, out))
        prober.start()
        wait_for(lambda: study.refresh().trials_finished >= 1, timeout=120,
                 what="a finished trial")
        for port in [cluster.port, *cluster.replicas]:
            proc = cluster.server if port == cluster.port else cluster.replicas[port]
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
            fresh = cluster.launch_server(port, f"server-{port}-again")
            if port == cluster.port:
                cluster.server = fresh
            else:
                cluster.replicas[port] = fresh
            time.sleep(2 * lease)  # the restarted replica takes its share back
        info = wait_all(client, [study.id], timeout=300)[study.id]
        halt.set()
        calls, codes, said = out.get(timeout=60)
        prober.join(30)
        assert info.state == pb.STUDY_STATE_COMPLETED, info.error
        # UNAVAILABLE, or CANCELLED for a call that reached a server the moment it began to
        # stop: gRPC itself cancels a call its transport took but the stopping server never
        # picked up (a bare grpc.aio health server does the same); the SDK retries both.
        assert set(codes) <= {"UNAVAILABLE", "CANCELLED"}, (codes, said)
        assert_nothing_lost_or_doubled(study, study.refresh())
        print(f"\n{label}: {calls} calls, {codes} (retried)")


@pytest.mark.slow
def test_rolling_restart_of_every_replica_during_a_study(tmp_path) -> None:
    with replica_cluster(tmp_path, workers=2) as cluster:
        for _ in range(2):
            cluster.add_replica(free_port())
        restart_each_replica_during_a_study(cluster, 21, LEASE, "rolling restart")


def external_spec(seed: int) -> dict:
    return {"seed": seed, "resource": {"max_resource": 9, "eta": 3},
            "search_space": {"x": {"type": "float", "low": 0.0, "high": 1.0}},
            "algorithm": {"name": "asha"}, "max_trials": 20}


def answers(client: Client, sid: str) -> bool:
    try:
        client.stub.GetStudy(pb.GetStudyRequest(study_id=sid), timeout=10)
        return True
    except grpc.RpcError:
        return False


@pytest.mark.slow
def test_any_replica_answers_reads_writes_listings_and_watches(tmp_path) -> None:
    with replica_cluster(tmp_path, workers=0) as cluster:
        other = free_port()
        cluster.add_replica(other)
        r = redis.Redis.from_url(cluster.redis_url, decode_responses=True)
        with Client(cluster.address, timeout=60) as a, \
                Client(f"127.0.0.1:{other}", timeout=60) as b:
            sids = [a.create_study(external_spec(seed)).id for seed in range(5)]
            wait_for(lambda: spread(r, sids, 2), timeout=60, what="studies on both replicas")
            # Until its new owner has rebuilt it a moved study is listed from Redis.
            wait_for(lambda: all(answers(a, sid) for sid in sids), timeout=60,
                     what="the moved studies rebuilt")
            for client in (a, b):
                # Paged one study at a time, merged from both replicas, in creation order.
                assert [s.id for s in client.iter_studies(page_size=1)] == sids
                assert [s.id for s in client.iter_studies(page_size=2)] == sids
            for sid in sids:  # ask/tell through each replica: half of these are forwarded
                for client in (a, b):
                    study = client.study(sid)
                    job = study.ask(wait=False)
                    assert job is not None
                    assert job.report(1.0, 0.5) is False
                    job.complete(0.5)
                    trial = study.trial(job.trial_id)
                    assert trial.curve == [(1.0, 0.5)] and trial.state != "running"
            # A watch through the replica that does not own the study relays the owner's.
            sid = next(s for s, rid in owners(r, sids).items() if rid.endswith(f":{other}"))
            stream = a.stub.WatchStudy(pb.WatchStudyRequest(study_id=sid))
            seen: list = []

            def read_one() -> None:
                for ev in stream:
                    seen.append(ev.kind)
                    return

            threading.Thread(target=read_one, daemon=True).start()
            deadline = time.time() + 60
            while not seen and time.time() < deadline:  # until the watch is open and sees one
                job = a.study(sid).ask(wait=False)
                if job is not None:
                    job.complete(0.5, resource=job.to_resource)
                time.sleep(0.2)
            stream.cancel()
            assert seen, "no event relayed by the watch"
            a.study(sid).stop()  # a write forwarded to the owner
            assert b.study(sid).info.state != pb.STUDY_STATE_ACTIVE
            with pytest.raises(Exception, match="no study"):
                b.study("s0000000000")


@pytest.mark.slow
def test_a_replica_paused_past_its_lease_never_writes_again(tmp_path) -> None:
    with replica_cluster(tmp_path, workers=3) as cluster:
        cluster.add_replica(free_port())
        r = redis.Redis.from_url(cluster.redis_url, decode_responses=True)
        with Client(all_addresses(cluster), timeout=60) as client:
            sids = [client.create_study(slow_spec(seed=30 + i)).id for i in range(4)]
            wait_for(lambda: spread(r, sids, 2), timeout=60, what="studies on both replicas")
            wait_for(lambda: sum(client.study(s).info.trials_finished for s in sids) >= 4,
                     timeout=120, what="four finished trials")
            paused = owners(r, sids)[sids[0]]
            moved = [s for s, rid in owners(r, sids).items() if rid == paused]
            port = int(paused.rpartition(":")[2])
            proc = cluster.server if port == cluster.port else cluster.replicas[port]
            os.kill(proc.pid, signal.SIGSTOP)
            try:
                wait_for(lambda: all(rid not in ("", paused)
                                     for rid in owners(r, moved).values()),
                         timeout=60, what="its studies taken by the other replica")
            finally:
                os.kill(proc.pid, signal.SIGCONT)  # it wakes up believing it owns them
            done = wait_all(client, sids, timeout=300)
            for sid in sids:
                assert done[sid].state == pb.STUDY_STATE_COMPLETED, done[sid].error
                study = client.study(sid)
                assert_nothing_lost_or_doubled(study, study.info)
            assert proc.poll() is None, "the paused replica should live on"


@pytest.mark.slow
def test_replicas_forward_over_mutual_tls_and_keep_tenants_apart(tmp_path, monkeypatch) -> None:
    pytest.importorskip("cryptography")
    from hpod.server.service.auth import hash_token
    from tls_certs import make_certs

    certs = make_certs(tmp_path / "certs")
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{hash_token('t-a')} team-a user\n{hash_token('t-b')} team-b user\n")
    # How a replica calls its peers: trusting the CA, presenting a client certificate.
    monkeypatch.setenv("HPOD_TLS_CA", certs["ca"])
    monkeypatch.setenv("HPOD_TLS_CLIENT_CERT", certs["client_cert"])
    monkeypatch.setenv("HPOD_TLS_CLIENT_KEY", certs["client_key"])
    mtls = {"tls_ca": certs["ca"], "tls_cert": certs["client_cert"],
            "tls_key": certs["client_key"]}
    args = ("--tls-cert", certs["server_cert"], "--tls-key", certs["server_key"],
            "--tls-client-ca", certs["ca"], "--tokens-file", str(tokens),
            "--study-lease-seconds", str(LEASE))
    with LocalCluster(workers=0, workdir=str(tmp_path), server_args=args,
                      client_options={**mtls, "token": "t-a"}) as cluster:
        cluster.add_replica(free_port())
        r = redis.Redis.from_url(cluster.redis_url, decode_responses=True)
        with Client(cluster.address, timeout=60, token="t-a", **mtls) as a, \
                Client(cluster.address, timeout=10, token="t-b", **mtls) as b:
            sids = [a.create_study(external_spec(seed)).id for seed in range(2)]
            wait_for(lambda: spread(r, sids, 2), timeout=60, what="studies on both replicas")
            wait_for(lambda: all(answers(a, sid) for sid in sids), timeout=60,
                     what="the moved studies rebuilt")
            job = a.study(sids[1]).ask(wait=False)  # one of them forwarded, over mutual TLS
            assert job is not None
            assert [s.id for s in a.list_studies()] == sids
            assert b.list_studies() == []
            for sid in sids:  # another tenant's study is missing, wherever it lives
                with pytest.raises(Exception, match="no study"):
                    b.study(sid)


@pytest.mark.slow
def test_a_study_moving_between_replicas_stays_listed(tmp_path) -> None:
    """kill -9 of a replica: until its studies' leases expire (a long lease here) no replica
    holds them in memory, yet every listing through the survivor shows them, from their hash
    in Redis, marked as moving, with the figures of their last commit; once rebuilt by the
    survivor they are listed live again."""
    lease = 30.0
    with LocalCluster(workers=0, trainers=("analytic",), workdir=str(tmp_path),
                      server_args=("--study-lease-seconds", str(lease))) as cluster:
        other = free_port()
        cluster.add_replica(other)
        r = redis.Redis.from_url(cluster.redis_url, decode_responses=True)
        with Client(f"127.0.0.1:{other}", timeout=60) as survivor:
            sids = [survivor.create_study(external_spec(seed)).id for seed in range(6)]
            wait_for(lambda: spread(r, sids, 2), timeout=120, what="studies on both replicas")
            wait_for(lambda: all(answers(survivor, sid) for sid in sids), timeout=120,
                     what="the moved studies rebuilt")
            for sid in sids:  # one finished trial each: figures to compare
                job = survivor.study(sid).ask(wait=False)
                job.complete(0.25, resource=job.to_resource)
            before = {st.id: st for st in survivor.list_studies()}
            dead = f":{cluster.port}"
            moved = [s for s, rid in owners(r, sids).items() if rid.endswith(dead)]
            assert moved
            cluster.server.kill()
            cluster.server.wait()
            for page_size in (1, 2, 100):
                listed = list(survivor.iter_studies(page_size=page_size))
                assert [s.id for s in listed] == sids  # none dropped, none twice, in order
                for st in listed:
                    if st.id in moved:
                        assert list(st.plan.notes) == [MOVING_NOTE]
                        assert st.state == pb.STUDY_STATE_ACTIVE
                        was = before[st.id]
                        assert (st.trials_total, st.trials_running, st.trials_finished) == (
                            was.trials_total, was.trials_running, was.trials_finished)
                        assert st.trials_total >= 1
                        assert st.resource_used == pytest.approx(was.resource_used)
                        assert st.resource_used > 0
                        assert st.best_trial.value == pytest.approx(0.25)
                        assert st.spec == before[st.id].spec
                    else:
                        assert MOVING_NOTE not in st.plan.notes
            assert all(owners(r, moved).values()), "the dead replica's leases ran out already"
            wait_for(lambda: all(answers(survivor, sid) for sid in moved), timeout=3 * lease,
                     what="the moved studies rebuilt by the survivor")
            listed = survivor.list_studies()
            assert [s.id for s in listed] == sids
            assert not any(MOVING_NOTE in s.plan.notes for s in listed)
