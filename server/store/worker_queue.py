"""The worker's side of the job protocol (sync ``redis-py``; a worker is a plain process).

A job is an entry of its trainer's stream, read through the ``workers`` consumer group; while
the worker holds it, it sits in the group's pending list, and that pending list is the lease
table: the worker heartbeats by re-claiming its own entry (``XCLAIM ... JUSTID`` resets the
idle time), and the server treats an entry idle for longer than the lease as lost. Events go to
the study's event stream; every report is one round trip that also reads the stop flag.

Besides its trainers' shared streams a worker reads its own handoff streams, where the server
puts the next segment of a trial this worker trained last (it may still hold the model). A
handoff job is taken before a shared one.

Redis hiccups are the queue's business, not the trainer's: every call is retried on transient
errors (lost connection, timeout, ``OOM`` while Redis refuses writes, ``BUSY``, ``LOADING``)
with capped exponential backoff for at most ``retry_seconds``, then raises
:class:`QueueUnavailable`; a stream or consumer group that disappeared (``NOGROUP``: the server
removed the handoff stream of a worker it thought gone) is created again. Re-sending after a
lost reply is safe: the server recognises a repeated event and ignores it. The client has
socket timeouts, so a Redis that hangs (SIGSTOP, a network partition) costs one timeout per
call, never an endless wait; after :meth:`WorkerQueue.close` nothing is retried, so shutdown
takes seconds whatever Redis does.

On a Redis Cluster a transaction stays within one slot: what one MULTI/EXEC does on a single
Redis becomes a few, in an order that keeps a crash between them harmless (a report first,
then the job's acknowledgement, then the registry: see :meth:`WorkerQueue.finish`), and a
worker with several trainers reads their streams (one slot per trainer) in turn.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from . import keys
from .connect import is_cluster, sync_client

# A part of a protocol step: (whether its commands must run as one MULTI/EXEC, the function
# that adds them to a pipeline). A part's keys share one slot unless it is not atomic.
Part = tuple[bool, Callable[[Any], None]]


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


log = logging.getLogger("hpod.worker")

T = TypeVar("T")


class QueueError(Exception):
    """A queue operation failed for a reason that is not the trainer's: the job is abandoned
    (its lease expires and the server hands it on), never failed."""


class QueueUnavailable(QueueError):
    """Redis kept failing with transient errors for longer than the retry bound."""


# How long a report waits for a replica to have it, on a Redis Cluster (ms).
REPLICA_WAIT_MS = 1000

_TRANSIENT_TYPES = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.OutOfMemoryError,
                    redis.exceptions.MasterDownError, redis.exceptions.TryAgainError,
                    redis.exceptions.ClusterDownError, redis.exceptions.SlotNotCoveredError)
# Error codes that mean "not now": refused writes at maxmemory, a script or module hogging the
# server, a data set still loading after a restart, a failover. Matched as whole words, since
# a pipeline or EXECABORT wraps the command's reply in text of its own (BUSYGROUP is no match).
_TRANSIENT_REPLIES = ("OOM", "BUSY", "LOADING", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN")


def _message(e: BaseException) -> str:
    return str(e.args[0]) if getattr(e, "args", None) else str(e)


def is_transient(e: BaseException) -> bool:
    if isinstance(e, _TRANSIENT_TYPES):
        return True
    if isinstance(e, redis.ResponseError):
        text = _message(e)
        words = {w.strip(".:,'\"") for w in text.split()}
        return any(r in words for r in _TRANSIENT_REPLIES) or "maxmemory" in text
    return False


def is_nogroup(e: BaseException) -> bool:
    return isinstance(e, redis.ResponseError) and "NOGROUP" in _message(e)


class WorkerQueue:
    def __init__(self, url: str, worker_id: str, trainers: list[str],
                 retry_seconds: float = 60.0, socket_timeout: float = 5.0) -> None:
        # No retries inside redis-py: :meth:`_call` retries with a bound and stops at close().
        # The socket timeout must exceed the longest XREADGROUP block (take's block_ms).
        self.url = url
        self.cluster = is_cluster(url)
        self.r = sync_client(
            url, self.cluster, decode_responses=True, socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout, retry=Retry(NoBackoff(), 0),
            **({} if self.cluster else {"retry_on_error": []}))
        self.worker_id = worker_id
        self.trainers = trainers
        self.retry_seconds = retry_seconds
        self.socket_timeout = socket_timeout
        self.closing = threading.Event()  # set on shutdown: no more retries, no more waits
        self._last_warning = 0.0

    def close(self) -> None:
        """Shutdown: calls still running give up at their next failure, new ones try once."""
        self.closing.set()

    # ---------------------------------------------------------------- retries

    def _call(self, what: str, fn: Callable[[], T], bound: float | None = None) -> T:
        """``fn()``, retried on transient Redis errors with capped exponential backoff for at
        most ``bound`` seconds (``retry_seconds``); a missing stream or group is re-created."""
        deadline = time.monotonic() + (self.retry_seconds if bound is None else bound)
        delay = 0.05
        recreated = False
        while True:
            try:
                return fn()
            except redis.RedisError as e:
                if is_nogroup(e):
                    log.warning("%s: %s; re-creating this worker's streams", what, _message(e))
                    self._recreate()
                    if not recreated:  # once at once; again only after a pause
                        recreated = True
                        continue
                elif not is_transient(e):
                    raise QueueError(f"{what}: {type(e).__name__}: {_message(e)}") from e
                if self.closing.is_set() or time.monotonic() + delay > deadline:
                    raise QueueUnavailable(
                        f"{what}: Redis unavailable ({type(e).__name__}: {_message(e)})") from e
                self._warn(what, e)
                self.closing.wait(delay)
                delay = min(delay * 2, 2.0)

    def _warn(self, what: str, e: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_warning > 5.0:  # one line per few seconds, not one per retry
            self._last_warning = now
            log.warning("%s: %s: %s; retrying", what, type(e).__name__, _message(e))

    def _recreate(self) -> None:
        """The server removed a stream of ours (it thought this worker gone): make them again
        and say we are here. One attempt; the caller's retry covers a failure."""
        try:
            self._ensure_streams()
            self._register("idle", "")
        except redis.RedisError:
            pass

    # ---------------------------------------------------------------- registry

    def _steps(self, *parts: Part) -> list[Any]:
        """Every part's commands as one MULTI/EXEC on a single Redis. On a cluster each part
        runs on its own, in order: as a MULTI/EXEC when atomic (its keys share a slot), else
        as a plain pipeline. Returns the replies of all commands, in order."""
        if not self.cluster:
            with self.r.pipeline(transaction=True) as p:
                for _, add in parts:
                    add(p)
                return p.execute()
        out: list[Any] = []
        for atomic, add in parts:
            with self.r.pipeline(transaction=atomic) as p:
                add(p)
                out += p.execute()
        return out

    def _replicated(self, key: str, add: Callable[[Any], None]) -> None:
        """On a cluster: ``add``'s commands (keys in ``key``'s slot), then ``WAIT`` for a
        replica, over one connection to the slot's master, so that a report Redis accepted
        survives a failover of that master (replication is asynchronous). The wait is best
        effort (REPLICA_WAIT_MS; a master with no replica, or a user not allowed WAIT, goes on
        without it); a slot that moved or a master that is gone refreshes the slot map and
        counts as transient, so the caller's retry finds the new master."""
        node = self.r.get_node_from_key(key)
        try:
            with self.r.get_redis_connection(node).pipeline(transaction=False) as p:
                add(p)
                p.execute_command("WAIT", 1, REPLICA_WAIT_MS)
                replies = p.execute(raise_on_error=False)
        except (redis.ConnectionError, redis.TimeoutError):
            self._refresh_slots()
            raise
        for reply in replies[:-1]:
            if isinstance(reply, redis.ResponseError) and _message(reply).startswith(
                    ("MOVED", "ASK")):
                self._refresh_slots()
                raise redis.exceptions.TryAgainError(_message(reply))
            if isinstance(reply, Exception):
                raise reply

    def _refresh_slots(self) -> None:
        try:
            self.r.nodes_manager.initialize()
        except redis.RedisError:
            pass  # the next command tries again

    def register(self, status: str = "idle", job: str = "") -> None:
        self._call("register", lambda: self._register(status, job))

    def _register(self, status: str, job: str) -> None:
        def add(p: Any) -> None:
            p.hset(keys.worker(self.worker_id), mapping={
                "trainers": ",".join(self.trainers), "status": status, "job": job,
                "host": socket.gethostname(), "pid": str(os.getpid())})
            p.zadd(keys.workers(), {self.worker_id: time.time()})
        self._steps((False, add))

    def unregister(self) -> None:
        # On shutdown, through a client with a short timeout of its own: a hung Redis then
        # delays the exit by about a second, and the registry entry simply ages out.
        r = self._short_client() if self.closing.is_set() else self.r

        def go() -> None:
            with r.pipeline(transaction=not self.cluster) as p:
                p.zrem(keys.workers(), self.worker_id)
                # HDEL of every field rather than DEL: the worker's Redis user may write its
                # hash's fields but not delete keys (server/store/acl.py).
                p.hdel(keys.worker(self.worker_id), "trainers", "status", "job", "host", "pid")
                p.execute()
        try:
            self._call("unregister", go)
        finally:
            if r is not self.r:
                r.close()

    def _short_client(self) -> Any:
        timeout = min(1.0, self.socket_timeout)
        if self.cluster:
            return sync_client(self.url, True, decode_responses=True, socket_timeout=timeout,
                               socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0))
        kwargs = self.r.connection_pool.connection_kwargs
        return redis.Redis(connection_pool=redis.ConnectionPool(
            connection_class=self.r.connection_pool.connection_class,
            **{**kwargs, "socket_timeout": timeout, "socket_connect_timeout": timeout}))

    def ensure_streams(self) -> None:
        self._call("create streams", self._ensure_streams)

    def _ensure_streams(self) -> None:
        for t in self.trainers:
            for stream in (keys.jobs(t), keys.handoff(t, self.worker_id)):
                try:
                    self.r.xgroup_create(stream, keys.WORKER_GROUP, id="0", mkstream=True)
                except redis.ResponseError as e:
                    if "BUSYGROUP" not in str(e):
                        raise
            self.r.sadd(keys.handoffs(), keys.handoff_member(t, self.worker_id))

    # ---------------------------------------------------------------- jobs

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
        # Not retried as a whole: an entry delivered in a lost reply sits in our pending list
        # and comes back to the server through the lease reaper.
        resp = self._call("take", lambda: self._read(streams, block_ms))
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

    def _read(self, streams: dict[str, str], block_ms: int) -> Any:
        """XREADGROUP of ``streams``. On a cluster one XREADGROUP reads one slot: a worker of
        several trainers reads each trainer's pair (handoff and shared stream) without
        blocking, and waits between rounds, until ``block_ms`` has passed."""
        if not self.cluster or len(self.trainers) == 1:
            return self.r.xreadgroup(keys.WORKER_GROUP, self.worker_id, streams, count=1,
                                     block=block_ms)
        deadline = time.monotonic() + block_ms / 1000
        while True:
            got: list[Any] = []
            for t in self.trainers:
                pair = {s: ">" for s in (keys.handoff(t, self.worker_id), keys.jobs(t))}
                got += self.r.xreadgroup(keys.WORKER_GROUP, self.worker_id, pair,
                                         count=1) or []
            if got or time.monotonic() >= deadline or self.closing.is_set():
                return got
            self.closing.wait(min(0.05, max(0.0, deadline - time.monotonic())))

    def _requeue(self, lease: Lease) -> None:
        """Put a job read but not wanted now back at the end of its trainer's shared stream."""
        def go() -> None:
            with self.r.pipeline(transaction=True) as p:
                p.xadd(keys.jobs(lease.trainer), {"j": json.dumps(lease.job, allow_nan=False)})
                p.xack(lease.stream, keys.WORKER_GROUP, lease.entry_id)
                p.xdel(lease.stream, lease.entry_id)
                p.execute()
        self._call("requeue", go)

    def _still_wanted(self, lease: Lease) -> bool:
        # Stopping or deleting a study puts every outstanding job in its stop set, so the set
        # alone answers; the worker needs no read of the study itself (its ACL user has none).
        return not self._call("read stop set", lambda: self.r.sismember(
            keys.stopped_jobs(lease.study_id), lease.job_id))

    def _drop(self, lease: Lease) -> None:
        def go() -> None:
            with self.r.pipeline(transaction=True) as p:
                p.xack(lease.stream, keys.WORKER_GROUP, lease.entry_id)
                p.xdel(lease.stream, lease.entry_id)
                p.execute()
        self._call("drop", go)

    def _event(self, p: Any, lease: Lease, op: str, **fields: Any) -> None:
        body = {"op": op, "job_id": lease.job_id, **fields}
        p.xadd(keys.events(lease.study_id), {"e": json.dumps(body, allow_nan=False)})

    def start(self, lease: Lease) -> None:
        def event(p: Any) -> None:
            self._event(p, lease, "start", worker=self.worker_id)

        def registry(p: Any) -> None:
            p.hset(keys.worker(self.worker_id), mapping={"status": "busy", "job": lease.job_id})
            p.zadd(keys.workers(), {self.worker_id: time.time()})
        self._call("start", lambda: self._steps((True, event), (False, registry)))

    def progress(self, lease: Lease, resource: float, value: float) -> tuple[bool, bool]:
        """Report one learning-curve point. One round trip; returns ``(stop, held)``: whether
        the job must stop, and whether this worker still holds its lease (False: the server
        took the job back, it is lost here and retried elsewhere)."""
        def go() -> tuple[bool, bool]:
            with self.r.pipeline(transaction=False) as p:
                self._event(p, lease, "progress", resource=resource, value=value)
                p.sismember(keys.stopped_jobs(lease.study_id), lease.job_id)
                self._heartbeat(p, lease)
                out = p.execute(raise_on_error=False)
            held = _claimed(out[3])
            _raise_first(out[:3])
            return bool(out[1]), held
        return self._call("report progress", go)

    def heartbeat(self, lease: Lease | None) -> bool | None:
        """Stamp the registry and renew the lease; one attempt (the next beat is the retry).
        Returns whether the lease is still held (None without a lease). Renewing needs no
        memory, so the lease survives a Redis that refuses writes (OOM) while the registry
        stamp does not."""
        with self.r.pipeline(transaction=False) as p:
            self._heartbeat(p, lease)
            out = p.execute(raise_on_error=False)
        if lease is None:
            _raise_first(out)
            return None
        return _claimed(out[1])

    def _heartbeat(self, p: Any, lease: Lease | None) -> None:
        p.zadd(keys.workers(), {self.worker_id: time.time()})
        if lease is not None:
            p.xclaim(lease.stream, keys.WORKER_GROUP, self.worker_id, 0,
                     [lease.entry_id], justid=True)

    def finish(self, lease: Lease, op: str, **fields: Any) -> bool:
        """Report the job's end (``complete`` or ``fail``) and release the lease, atomically.
        Returns whether the lease was still held (its entry still pending) when it ended."""
        # On a cluster the report goes first: a crash after it leaves the job pending, so the
        # server declares it lost and refuses that (the job ended); a crash before it leaves
        # the job pending and unreported, so it is retried. Never reported-and-forgotten.
        def event(p: Any) -> None:
            self._event(p, lease, op, **fields)

        def ack(p: Any) -> None:
            p.xack(lease.stream, keys.WORKER_GROUP, lease.entry_id)
            p.xdel(lease.stream, lease.entry_id)

        def registry(p: Any) -> None:
            p.hset(keys.worker(self.worker_id), mapping={"status": "idle", "job": ""})
            p.zadd(keys.workers(), {self.worker_id: time.time()})
        def go() -> bool:
            if not self.cluster:
                return bool(self._steps((True, event), (True, ack), (False, registry))[1])
            self._replicated(keys.events(lease.study_id), event)
            return bool(self._steps((True, ack), (False, registry))[0])
        held = self._call(f"report {op}", go)
        # The record of what Redis accepted from this worker (tests compare it with the
        # studies: no accepted result may be lost).
        log.info("job %s: %s accepted (trial %s, resource %s, value %s, lease held %s)",
                 lease.job_id, op, lease.job.get("trial_id"), lease.job.get("to_resource"),
                 fields.get("value"), held, extra={"study_id": lease.study_id,
                                                    "job_id": lease.job_id})
        return held

    def release(self, lease: Lease) -> None:
        """Give a job back unfinished (SIGTERM drain): the server sees it as lost at once and
        hands it on, resuming from the segment's start checkpoint."""
        def claim(p: Any) -> None:
            # An idle time far beyond any lease makes the reaper take it on its next pass.
            p.xclaim(lease.stream, keys.WORKER_GROUP, self.worker_id, 0,
                     [lease.entry_id], idle=10**9, justid=True)

        def registry(p: Any) -> None:
            p.hset(keys.worker(self.worker_id), mapping={"status": "idle", "job": ""})
        self._call("release", lambda: self._steps((True, claim), (False, registry)))

    def set_idle(self) -> None:
        """Mark this worker idle after a job it gave up (Redis was unreachable)."""
        def go() -> None:
            self.r.hset(keys.worker(self.worker_id), mapping={"status": "idle", "job": ""})
        self._call("set idle", go)


def _claimed(reply: Any) -> bool:
    """Whether an ``XCLAIM ... JUSTID`` of our entry found it still pending. NOGROUP (the
    stream is gone) means not; another error is not an answer."""
    if isinstance(reply, Exception):
        if is_nogroup(reply):
            return False
        raise reply
    return bool(reply)


def _raise_first(replies: list[Any]) -> None:
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
