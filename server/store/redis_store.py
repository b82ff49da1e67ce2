"""The server's side of Redis: studies, their input logs and snapshots, trial views, job
streams, event streams and the lease table. Async (``redis.asyncio``).

The invariant that makes crashes safe: the inputs an engine applied, the effects they had
(jobs enqueued, trials rewritten, jobs told to stop) and the acknowledgement of the worker
events they came from are written in one MULTI/EXEC. Either all of it happened or none did,
and a restarted server rebuilds each study from its snapshot and the log tail.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from . import keys

SNAPSHOT_EVERY = 200  # inputs between snapshots: bounds replay time after a crash


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)


@dataclass
class Batch:
    """What one study's transaction writes."""

    inputs: list[Mapping[str, Any]] = field(default_factory=list)
    trials: dict[int, str] = field(default_factory=dict)  # trial id -> JSON
    jobs: list[tuple[str, str]] = field(default_factory=list)  # (trainer, job JSON)
    stop_jobs: list[str] = field(default_factory=list)
    study_fields: dict[str, str] = field(default_factory=dict)
    ack_ids: list[str] = field(default_factory=list)
    job_acks: list[tuple[str, str]] = field(default_factory=list)  # (trainer, entry id)
    snapshot: str | None = None

    def empty(self) -> bool:
        return not (self.inputs or self.trials or self.jobs or self.stop_jobs
                    or self.study_fields or self.ack_ids or self.job_acks)


class RedisStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self.r = aioredis.from_url(url, decode_responses=True)

    async def close(self) -> None:
        await self.r.aclose()

    async def ping(self) -> bool:
        return bool(await self.r.ping())

    # ---------------------------------------------------------------- studies

    async def create_study(self, sid: str, config: Mapping[str, Any], name: str) -> None:
        async with self.r.pipeline(transaction=True) as p:
            p.hset(keys.study(sid), mapping={"config": dumps(config), "state": "active",
                                             "created": repr(time.time()), "name": name})
            p.sadd(keys.studies(), sid)
            p.xgroup_create(keys.events(sid), keys.SERVER_GROUP, id="0", mkstream=True)
            await p.execute()

    async def study_ids(self) -> list[str]:
        return sorted(await self.r.smembers(keys.studies()))

    async def load_study(self, sid: str) -> tuple[dict[str, str], dict | None, list[dict]]:
        """(study hash, snapshot or None, log inputs after the snapshot)."""
        meta = await self.r.hgetall(keys.study(sid))
        raw = await self.r.get(keys.snapshot(sid))
        snap = json.loads(raw) if raw else None
        start = snap["inputs"] if snap else 0
        tail = await self.r.lrange(keys.log(sid), start, -1)
        return meta, snap, [json.loads(x) for x in tail]

    async def delete_study(self, sid: str) -> None:
        async with self.r.pipeline(transaction=True) as p:
            p.srem(keys.studies(), sid)
            p.delete(*keys.study_keys(sid))
            await p.execute()

    async def ensure_job_stream(self, trainer: str) -> None:
        try:
            await self.r.xgroup_create(keys.jobs(trainer), keys.WORKER_GROUP, id="0",
                                       mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
        await self.r.sadd(keys.trainers(), trainer)

    async def ensure_event_group(self, sid: str) -> None:
        try:
            await self.r.xgroup_create(keys.events(sid), keys.SERVER_GROUP, id="0",
                                       mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    # ---------------------------------------------------------------- the one write path

    async def commit(self, sid: str, batch: Batch) -> None:
        if batch.empty():
            return
        async with self.r.pipeline(transaction=True) as p:
            if batch.inputs:
                p.rpush(keys.log(sid), *[dumps(i) for i in batch.inputs])
            if batch.trials:
                p.hset(keys.trials(sid), mapping={str(k): v for k, v in batch.trials.items()})
            for trainer, job in batch.jobs:
                p.xadd(keys.jobs(trainer), {"j": job})
            if batch.stop_jobs:
                p.sadd(keys.stopped_jobs(sid), *batch.stop_jobs)
            if batch.study_fields:
                p.hset(keys.study(sid), mapping=batch.study_fields)
            if batch.ack_ids:
                p.xack(keys.events(sid), keys.SERVER_GROUP, *batch.ack_ids)
                p.xdel(keys.events(sid), *batch.ack_ids)
            for trainer, eid in batch.job_acks:
                p.xack(keys.jobs(trainer), keys.WORKER_GROUP, eid)
                p.xdel(keys.jobs(trainer), eid)
            if batch.snapshot is not None:
                p.set(keys.snapshot(sid), batch.snapshot)
            await p.execute()

    # ---------------------------------------------------------------- worker events

    async def read_events(self, sids: Sequence[str], consumer: str, count: int,
                          block_ms: int, pending: bool = False
                          ) -> list[tuple[str, list[tuple[str, dict]]]]:
        """Worker events per study. ``pending=True`` re-reads this consumer's unacknowledged
        entries (after a restart) instead of new ones."""
        if not sids:
            return []
        streams = {keys.events(s): ("0" if pending else ">") for s in sids}
        resp = await self.r.xreadgroup(keys.SERVER_GROUP, consumer, streams, count=count,
                                       block=None if pending else block_ms)
        out = []
        prefix_len = len(keys.PREFIX) + 2
        for stream, entries in resp or []:
            sid = stream[prefix_len:stream.index("}")]
            parsed = [(eid, json.loads(fields["e"])) for eid, fields in entries if fields]
            out.append((sid, parsed))
        return out

    # ---------------------------------------------------------------- workers and leases

    async def idle_workers(self, lease_s: float) -> dict[str, int]:
        """Live idle workers per trainer name."""
        ids = await self.r.zrangebyscore(keys.workers(), time.time() - lease_s, "+inf")
        if not ids:
            return {}
        async with self.r.pipeline(transaction=False) as p:
            for wid in ids:
                p.hmget(keys.worker(wid), "trainers", "status")
            rows = await p.execute()
        idle: dict[str, int] = {}
        for trainers, status in rows:
            if status == "idle" and trainers:
                for t in trainers.split(","):
                    idle[t] = idle.get(t, 0) + 1
        return idle

    async def worker_status(self, lease_s: float) -> dict[str, int]:
        """Live workers by status (``idle`` | ``busy``), for the metrics."""
        ids = await self.r.zrangebyscore(keys.workers(), time.time() - lease_s, "+inf")
        if not ids:
            return {}
        async with self.r.pipeline(transaction=False) as p:
            for wid in ids:
                p.hget(keys.worker(wid), "status")
            rows = await p.execute()
        out: dict[str, int] = {}
        for status in rows:
            if status:
                out[status] = out.get(status, 0) + 1
        return out

    async def worker_count(self, lease_s: float) -> int:
        return int(await self.r.zcount(keys.workers(), time.time() - lease_s, "+inf"))

    async def expired_jobs(self, lease_s: float) -> list[tuple[str, str, dict]]:
        """Jobs whose worker stopped heartbeating: (trainer, entry id, job)."""
        out = []
        for trainer in await self.r.smembers(keys.trainers()):
            stream = keys.jobs(trainer)
            try:
                pend = await self.r.xpending_range(stream, keys.WORKER_GROUP, min="-", max="+",
                                                   count=100, idle=int(lease_s * 1000))
            except ResponseError:
                continue
            for entry in pend:
                eid = entry["message_id"]
                rows = await self.r.xrange(stream, eid, eid)
                job = json.loads(rows[0][1]["j"]) if rows else None
                out.append((trainer, eid, job))
        return out

    async def trial_views(self, sid: str) -> dict[int, dict]:
        raw = await self.r.hgetall(keys.trials(sid))
        return {int(k): json.loads(v) for k, v in raw.items()}
