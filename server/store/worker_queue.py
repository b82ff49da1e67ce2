"""The worker's side of the job protocol (sync ``redis-py``; a worker is a plain process).

A job is an entry of its trainer's stream, read through the ``workers`` consumer group; while
the worker holds it, it sits in the group's pending list, and that pending list is the lease
table: the worker heartbeats by re-claiming its own entry (``XCLAIM ... JUSTID`` resets the
idle time), and the server treats an entry idle for longer than the lease as lost. Events go to
the study's event stream; every report is one round trip that also reads the stop flag.

Besides its trainers' shared streams a worker reads its own handoff streams, where the server
puts the next segment of a trial this worker trained last (it may still hold the model). A
handoff job is taken before a shared one.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from . import keys


@dataclass
class Lease:
    trainer: str
    entry_id: str
    job: dict[str, Any]
    stream: str = ""  # the stream it came from: the trainer's, or this worker's handoff

    def __post_init__(self) -> None:
        self.stream = self.stream or keys.jobs(self.trainer)

    @property
    def handed_off(self) -> bool:
        return self.stream != keys.jobs(self.trainer)

    @property
    def study_id(self) -> str:
        return self.job["study_id"]

    @property
    def job_id(self) -> str:
        return self.job["job_id"]


class WorkerQueue:
    def __init__(self, url: str, worker_id: str, trainers: list[str]) -> None:
        # Retry through Redis restarts: a re-sent report after a lost reply is a duplicate the
        # server recognises and ignores, so retrying is safe for every call the worker makes.
        self.r = redis.Redis.from_url(
            url, decode_responses=True,
            retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=60),
            retry_on_error=[redis.ConnectionError, redis.TimeoutError])
        self.worker_id = worker_id
        self.trainers = trainers

    def register(self, status: str = "idle", job: str = "") -> None:
        with self.r.pipeline(transaction=True) as p:
            p.hset(keys.worker(self.worker_id), mapping={
                "trainers": ",".join(self.trainers), "status": status, "job": job,
                "host": socket.gethostname(), "pid": str(os.getpid())})
            p.zadd(keys.workers(), {self.worker_id: time.time()})
            p.execute()

    def unregister(self) -> None:
        with self.r.pipeline(transaction=True) as p:
            p.zrem(keys.workers(), self.worker_id)
            # HDEL of every field rather than DEL: the worker's Redis user may write its hash's
            # fields but not delete keys (server/store/acl.py).
            p.hdel(keys.worker(self.worker_id), "trainers", "status", "job", "host", "pid")
            p.execute()

    def ensure_streams(self) -> None:
        for t in self.trainers:
            for stream in (keys.jobs(t), keys.handoff(t, self.worker_id)):
                try:
                    self.r.xgroup_create(stream, keys.WORKER_GROUP, id="0", mkstream=True)
                except redis.ResponseError as e:
                    if "BUSYGROUP" not in str(e):
                        raise
            self.r.sadd(keys.handoffs(), keys.handoff_member(t, self.worker_id))

    def take(self, block_ms: int = 1000) -> Lease | None:
        """The next job for one of this worker's trainers, or None after ``block_ms``; a
        handoff before a shared job. Jobs of stopped or deleted studies are dropped here
        instead of being trained."""
        # Handoff streams first: with entries waiting in several streams, one XREADGROUP
        # returns one of each (COUNT is per stream); the rest go back to their shared stream.
        streams = {keys.handoff(t, self.worker_id): ">" for t in self.trainers}
        stream_trainer = {s: t for s, t in zip(streams, self.trainers, strict=True)}
        for t in self.trainers:
            streams[keys.jobs(t)] = ">"
            stream_trainer[keys.jobs(t)] = t
        resp = self.r.xreadgroup(keys.WORKER_GROUP, self.worker_id, streams, count=1,
                                 block=block_ms)
        got = [Lease(stream_trainer[stream], eid, json.loads(fields["j"]), stream)
               for stream, entries in resp or [] for eid, fields in entries]
        got.sort(key=lambda lease: not lease.handed_off)
        chosen = None
        for lease in got:
            if not self._still_wanted(lease):
                self._drop(lease)
            elif chosen is None:
                chosen = lease
            else:
                self._requeue(lease)
        return chosen

    def _requeue(self, lease: Lease) -> None:
        """Put a job read but not wanted now back at the end of its trainer's shared stream."""
        with self.r.pipeline(transaction=True) as p:
            p.xadd(keys.jobs(lease.trainer), {"j": json.dumps(lease.job, allow_nan=False)})
            p.xack(lease.stream, keys.WORKER_GROUP, lease.entry_id)
            p.xdel(lease.stream, lease.entry_id)
            p.execute()

    def _still_wanted(self, lease: Lease) -> bool:
        # Stopping or deleting a study puts every outstanding job in its stop set, so the set
        # alone answers; the worker needs no read of the study itself (its ACL user has none).
        return not self.r.sismember(keys.stopped_jobs(lease.study_id), lease.job_id)

    def _drop(self, lease: Lease) -> None:
        with self.r.pipeline(transaction=True) as p:
            p.xack(lease.stream, keys.WORKER_GROUP, lease.entry_id)
            p.xdel(lease.stream, lease.entry_id)
            p.execute()

    def _event(self, p: Any, lease: Lease, op: str, **fields: Any) -> None:
        body = {"op": op, "job_id": lease.job_id, **fields}
        p.xadd(keys.events(lease.study_id), {"e": json.dumps(body, allow_nan=False)})

    def start(self, lease: Lease) -> None:
        with self.r.pipeline(transaction=True) as p:
            self._event(p, lease, "start", worker=self.worker_id)
            p.hset(keys.worker(self.worker_id), mapping={"status": "busy", "job": lease.job_id})
            p.zadd(keys.workers(), {self.worker_id: time.time()})
            p.execute()

    def progress(self, lease: Lease, resource: float, value: float) -> bool:
        """Report one learning-curve point; True when the job must stop. One round trip."""
        with self.r.pipeline(transaction=False) as p:
            self._event(p, lease, "progress", resource=resource, value=value)
            p.sismember(keys.stopped_jobs(lease.study_id), lease.job_id)
            self._heartbeat(p, lease)
            out = p.execute()
        return bool(out[1])

    def heartbeat(self, lease: Lease | None) -> None:
        with self.r.pipeline(transaction=False) as p:
            self._heartbeat(p, lease)
            p.execute()

    def _heartbeat(self, p: Any, lease: Lease | None) -> None:
        p.zadd(keys.workers(), {self.worker_id: time.time()})
        if lease is not None:
            p.xclaim(lease.stream, keys.WORKER_GROUP, self.worker_id, 0,
                     [lease.entry_id], justid=True)

    def finish(self, lease: Lease, op: str, **fields: Any) -> None:
        """Report the job's end (``complete`` or ``fail``) and release the lease, atomically."""
        with self.r.pipeline(transaction=True) as p:
            self._event(p, lease, op, **fields)
            p.xack(lease.stream, keys.WORKER_GROUP, lease.entry_id)
            p.xdel(lease.stream, lease.entry_id)
            p.hset(keys.worker(self.worker_id), mapping={"status": "idle", "job": ""})
            p.zadd(keys.workers(), {self.worker_id: time.time()})
            p.execute()

    def release(self, lease: Lease) -> None:
        """Give a job back unfinished (SIGTERM drain): the server sees it as lost at once and
        hands it on, resuming from the segment's start checkpoint."""
        with self.r.pipeline(transaction=True) as p:
            # An idle time far beyond any lease makes the reaper take it on its next pass.
            p.xclaim(lease.stream, keys.WORKER_GROUP, self.worker_id, 0,
                     [lease.entry_id], idle=10**9, justid=True)
            p.hset(keys.worker(self.worker_id), mapping={"status": "idle", "job": ""})
            p.execute()
