"""The server's side of Redis: studies, their input logs and snapshots, trial views, job
streams, event streams and the lease table. Async (``redis.asyncio``).

The invariant that makes crashes safe: the inputs an engine applied, the effects they had
(jobs enqueued, trials rewritten, jobs told to stop) and the acknowledgement of the worker
events they came from are written in one MULTI/EXEC. Either all of it happened or none did,
and a restarted server rebuilds each study from its snapshot and the log tail.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import (
    BusyLoadingError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)

from . import keys
from .connect import async_client, is_cluster
from .leases import Leases, run_script, run_scripts

log = logging.getLogger("hpod.server")

SNAPSHOT_EVERY = 200  # the least number of inputs between snapshots
STOP_SET_TTL = 7 * 86400  # seconds a deleted study's stop set is kept for late workers

# A job waiting in a worker's handoff stream goes back to its trainer's shared stream once it
# is older than ARGV[2] ms and still unread, or at once when that worker is gone (ARGV[3] is
# 1); an empty stream of a gone worker is removed. One script, so the check "not yet
# delivered" (after the group's last-delivered id) and the move are atomic: a worker can never
# read an entry that is also being moved. A stream with no group (re-created by a late XADD
# after its worker left) has delivered nothing. Both streams carry the trainer's hash tag.
# KEYS: handoff stream, shared stream. ARGV: group, age ms, gone (0 | 1).
# Returns {entries moved, 1 if the handoff stream is gone now}.
_RETURN_HANDOFFS = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local gone = ARGV[3] == '1'
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {0, 1}
end
local last = '0-0'
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local name, id
  for i = 1, #g, 2 do
    if g[i] == 'name' then name = g[i + 1] end
    if g[i] == 'last-delivered-id' then id = g[i + 1] end
  end
  if name == ARGV[1] then last = id end
end
local upto = '+'
if not gone then upto = tostring(now_ms - tonumber(ARGV[2])) end
local moved = redis.call('XRANGE', KEYS[1], '(' .. last, upto)
for _, e in ipairs(moved) do
  redis.call('XADD', KEYS[2], '*', unpack(e[2]))
  redis.call('XDEL', KEYS[1], e[1])
end
if gone and redis.call('XLEN', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[1])
  return {#moved, 1}
end
return {#moved, 0}
"""

# A job copied from a study's outbox into its job stream, at most once: the "sent" mark and
# the XADD are one step in the trainer's slot, and a copy whose mark exists adds nothing.
# KEYS: sent mark, job stream. ARGV: mark ttl (s), job JSON. Returns 1 if added.
_SEND_JOB = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  redis.call('XADD', KEYS[2], '*', 'j', ARGV[2])
  return 1
end
return 0
"""
# How long a "sent" mark lives: far beyond any time a job waits in the outbox (it leaves it
# once a worker started it or the study dropped it).
SENT_TTL = 7 * 86400


# Runs ARGV[3..] as commands, each given as its length then its words, only while the study's
# owner key (KEYS[1]) holds ARGV[1] and, unless ARGV[2] is -1, its log (KEYS[2]) holds ARGV[2]
# entries: the checks and the writes are one atomic step.
# KEYS: owner, log. ARGV: owner value, log length or -1, then (n, word1 .. wordn)*.
_FENCED = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('FENCED the study is owned by another replica now')
end
local want = tonumber(ARGV[2])
if want >= 0 then
  local n = redis.call('LLEN', KEYS[2])
  if n ~= want then
    return redis.error_reply('HPODSTALE its log has ' .. n .. ' entries where ' .. want ..
                             ' were expected: Redis lost writes, or another copy wrote')
  end
end
local i = 3
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  redis.call(unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
return 1
"""
# How long a read of the event streams waits on a cluster when none had anything (ms).
CLUSTER_POLL_MS = 20
# Words per command at most: Lua's unpack has a bounded stack; longer RPUSH, HSET, SADD,
# XACK and XDEL are split (the script runs them all at once anyway).
MAX_WORDS = 1000


class LeaseLost(RedisError):
    """A write of a study this replica no longer owns: refused inside Redis, nothing written."""

    def __init__(self, sid: str) -> None:
        super().__init__(f"study {sid}: its lease is held by another replica now")
        self.sid = sid


def _chunked(head: list[Any], words: list[Any], unit: int = 1) -> list[list[Any]]:
    """``head + words`` as one or more commands of at most MAX_WORDS words each, never
    splitting a group of ``unit`` words (a field and its value)."""
    step = max(unit, (MAX_WORDS - len(head)) // unit * unit)
    return [head + words[i:i + step] for i in range(0, len(words), step)]


def _job_id(job: str) -> str:
    return str(json.loads(job)["job_id"])


def _outbox_entries(jobs: Sequence[tuple[str, str, str]]) -> list[tuple[str, str]]:
    """(job id, entry JSON) of each job, numbered in the order the study created them."""
    base = time.time_ns()
    return [(_job_id(j), dumps({"t": t, "w": w, "j": j, "n": base + i}))
            for i, (t, w, j) in enumerate(jobs)]


def _stream_replies(reply: Any) -> list[Any]:
    """XREADGROUP's reply as [(stream, entries)]."""
    return list(reply or [])


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False, default=_to_json)


def _to_json(obj: Any) -> Any:
    """Compact containers (the engine's learning curves) say how they are written."""
    to_json = getattr(obj, "to_json", None)
    if to_json is None:
        raise TypeError(f"{type(obj).__name__} is not JSON serialisable")
    return to_json()


@dataclass
class Batch:
    """What one study's transaction writes."""

    inputs: list[Mapping[str, Any]] = field(default_factory=list)
    trials: dict[int, str] = field(default_factory=dict)  # trial id -> JSON
    # (trainer, worker id or "" for the trainer's shared stream, job JSON): written to the
    # study's outbox with the rest, then copied to the job streams (RedisStore.send_jobs)
    jobs: list[tuple[str, str, str]] = field(default_factory=list)
    stop_jobs: list[str] = field(default_factory=list)
    ready: list[str] = field(default_factory=list)  # ask/tell jobs waiting for a client
    study_fields: dict[str, str] = field(default_factory=dict)
    ack_ids: list[str] = field(default_factory=list)
    # (queue key, entry id): job entries acknowledged once the rest is written (another slot)
    job_acks: list[tuple[str, str]] = field(default_factory=list)
    # The engine state after every input so far (this batch's included). Written with it, the
    # log is emptied: everything it held is in the snapshot, and ``log_base`` records that
    # the log now starts at input number ``snapshot_inputs``.
    snapshot: str | None = None
    snapshot_inputs: int = 0

    def empty(self) -> bool:
        return not (self.inputs or self.trials or self.jobs or self.stop_jobs or self.ready
                    or self.study_fields or self.ack_ids or self.job_acks)


class StaleLog(Exception):
    """The study's log in Redis is not the one this copy of the study extends."""


def _script_error(e: ResponseError) -> ResponseError:
    """The error a command inside a script met, as redis-py would have raised it outside a
    script (out of memory, a read-only replica, a loading server are transient)."""
    found = re.search(r"-(OOM|READONLY|LOADING|BUSY|MASTERDOWN|TRYAGAIN|CLUSTERDOWN) ", str(e))
    kind = {"OOM": OutOfMemoryError, "READONLY": ReadOnlyError, "LOADING": BusyLoadingError,
            }.get(found.group(1) if found else "")
    if kind is not None:
        return kind(str(e))
    if found:  # transient too, but with no class of its own: the code leads the message
        return ResponseError(f"{found.group(1)} {e}")
    return e


class RedisStore:
    def __init__(self, url: str, cluster: bool | None = None) -> None:
        self.url = url
        self.cluster = is_cluster(url) if cluster is None else cluster
        self.r = async_client(url, self.cluster, decode_responses=True)
        self._return_handoffs = self.r.register_script(_RETURN_HANDOFFS)
        self._fenced = self.r.register_script(_FENCED)
        self._send_job = self.r.register_script(_SEND_JOB)
        self.leases = Leases(self.r, self.cluster)

    async def close(self) -> None:
        await self.r.aclose()

    async def ping(self) -> bool:
        return bool(await self.r.ping())

    # ---------------------------------------------------------------- studies

    async def create_study(self, sid: str, config: Mapping[str, Any], name: str,
                           fence: str | None = None) -> None:
        # The id joins the global set first (another slot on a cluster): an id without a
        # study hash is skipped at load, a study hash without its id would be invisible.
        await self.r.sadd(keys.studies(), sid)
        await self.execute(sid, [
            ["HSET", keys.study(sid), "config", dumps(config), "state", "active",
             "created", repr(time.time()), "name", name],
            ["XGROUP", "CREATE", keys.events(sid), keys.SERVER_GROUP, "0", "MKSTREAM"]], fence)

    async def study_ids(self) -> list[str]:
        return sorted(await self.r.smembers(keys.studies()))

    async def created_times(self, sids: Sequence[str]) -> dict[str, float]:
        """Study -> creation time, for the studies whose hash exists."""
        async with self.r.pipeline(transaction=False) as p:
            for sid in sids:
                p.hget(keys.study(sid), "created")
            got = await p.execute()
        return {sid: float(v) for sid, v in zip(sids, got, strict=True) if v}

    async def study_hashes(self, sids: Sequence[str]) -> dict[str, dict[str, str]]:
        """What a listing shows of studies no replica holds in memory (being moved or
        rebuilt): the fields every commit keeps current, by study; a study gone is left out."""
        fields = ("config", "state", "error", "created", "summary")
        async with self.r.pipeline(transaction=False) as p:
            for sid in sids:
                p.hmget(keys.study(sid), fields)
            rows = await p.execute()
        return {sid: {f: v for f, v in zip(fields, row, strict=True) if v is not None}
                for sid, row in zip(sids, rows, strict=True) if row[0] is not None}

    async def load_study(self, sid: str) -> tuple[dict[str, str], dict | None, list[dict]]:
        """(study hash, snapshot or None, log inputs after the snapshot)."""
        async with self.r.pipeline(transaction=True) as p:  # one consistent read
            p.hgetall(keys.study(sid))
            p.get(keys.snapshot(sid))
            p.lrange(keys.log(sid), 0, -1)
            meta, raw, log = await p.execute()
        snap = json.loads(raw) if raw else None
        # The log starts at input ``log_base`` (the last snapshot that trimmed it); a study
        # written before logs were trimmed has no base and a full log.
        start = (snap["inputs"] if snap else 0) - int(meta.get("log_base", 0) or 0)
        if start < 0:
            raise ValueError(f"study {sid}: its log starts after its snapshot")
        return meta, snap, [json.loads(x) for x in log[start:]]

    async def ready_jobs(self, sid: str) -> list[str]:
        """The study's ask/tell jobs made ready and not handed to a client yet, oldest first."""
        return list(await self.r.lrange(keys.ready(sid), 0, -1))

    async def claim_ready(self, sid: str, job_id: str) -> bool:
        """Take ``job_id`` off the study's ready list (before it is handed to a client, so a
        restart never hands it out twice); False if it was not on it."""
        return bool(await self.r.lrem(keys.ready(sid), 1, job_id))

    async def run_id(self) -> str:
        """Redis's run id: it changes when Redis restarts (and may then have lost writes). On
        a cluster, the ids of its live masters: they change when a replica takes over from a
        master (which may have died before its last writes reached the replica)."""
        if not self.cluster:
            return str((await self.r.info("server")).get("run_id", ""))
        nodes = await self.r.execute_command("CLUSTER NODES")
        return ",".join(sorted(node["node_id"] for node in nodes.values()
                               if "master" in node["flags"] and "fail" not in node["flags"]))

    async def log_lengths(self, sids: Sequence[str]) -> list[int]:
        async with self.r.pipeline(transaction=False) as p:
            for sid in sids:
                p.llen(keys.log(sid))
            return [int(n) for n in await p.execute()]

    async def mark_study(self, sid: str, state: str, error: str,
                         fence: str | None = None) -> None:
        """Record a state the server decided outside an engine commit (quarantine)."""
        await self.execute(sid, [["HSET", keys.study(sid), "state", state, "error", error]],
                           fence)

    async def delete_study(self, sid: str, fence: str | None = None) -> None:
        # The stop set outlives the study for a while: it names every job the study had out,
        # and is how a worker holding one of them learns to drop or stop it. The lease keys go
        # last, in the same step, so no other replica can take the study half-deleted.
        stop = keys.stopped_jobs(sid)
        await self.execute(sid, [["DEL", *[k for k in keys.study_keys(sid) if k != stop]],
                                 ["EXPIRE", stop, str(STOP_SET_TTL)]], fence)
        await self.r.srem(keys.studies(), sid)

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

    async def commit(self, sid: str, batch: Batch, fence: str | None = None,
                     log_len: int | None = None) -> None:
        """Write ``batch`` atomically. With ``fence`` (the owner value the study's copy was
        loaded under) one script checks the study's lease and writes, so a replica that lost
        the study writes nothing (``LeaseLost``); without it (a job entry of no study) a plain
        MULTI/EXEC. With ``log_len`` (what the caller knows the study's log holds) the same
        script also checks the log's length: a Redis that came back without its last writes,
        or another writer, makes it raise :class:`StaleLog` with nothing written."""
        if batch.empty():
            return
        await self.execute(sid, self._commands(sid, batch), fence, log_len)
        # Then what lives in other slots on a cluster; both are safe to repeat, so a failure
        # here loses nothing: the outbox is copied again (the owner's reaper), and a job entry
        # left pending is reaped again (its study refuses a second "lost").
        if batch.jobs:
            try:
                await self.send_jobs(sid, batch.jobs)
            except RedisError:
                log.warning("study %s: copying new jobs from its outbox failed; retried "
                            "shortly", sid, exc_info=True, extra={"study_id": sid})
        if batch.job_acks:
            await self.ack_jobs(batch.job_acks)

    async def ack_jobs(self, entries: Sequence[tuple[str, str]]) -> None:
        """Acknowledge and delete job entries (each in its trainer's slot). Repeating it is
        harmless, so it follows the study's commit instead of being part of it."""
        async with self.r.pipeline(transaction=False) as p:
            for stream, eid in entries:
                p.xack(stream, keys.WORKER_GROUP, eid)
                p.xdel(stream, eid)
            await p.execute()

    def _commands(self, sid: str, batch: Batch) -> list[list[Any]]:
        cmds: list[list[Any]] = []
        if batch.inputs:
            cmds += _chunked(["RPUSH", keys.log(sid)], [dumps(i) for i in batch.inputs])
        if batch.trials:
            cmds += _chunked(["HSET", keys.trials(sid)],
                             [x for k, v in batch.trials.items() for x in (str(k), v)], 2)
        if batch.jobs:
            cmds += _chunked(["HSET", keys.outbox(sid)],
                             [x for job in _outbox_entries(batch.jobs) for x in job], 2)
        if batch.stop_jobs:
            cmds += _chunked(["SADD", keys.stopped_jobs(sid)], batch.stop_jobs)
        if batch.ready:
            cmds += _chunked(["RPUSH", keys.ready(sid)], batch.ready)
        if batch.study_fields:
            cmds.append(["HSET", keys.study(sid),
                         *[x for kv in batch.study_fields.items() for x in kv]])
        if batch.ack_ids:
            cmds += _chunked(["XACK", keys.events(sid), keys.SERVER_GROUP], batch.ack_ids)
            cmds += _chunked(["XDEL", keys.events(sid)], batch.ack_ids)
        if batch.snapshot is not None:
            cmds.append(["SET", keys.snapshot(sid), batch.snapshot])
            cmds.append(["DEL", keys.log(sid)])
            cmds.append(["HSET", keys.study(sid), "log_base", str(batch.snapshot_inputs)])
        return cmds

    async def execute(self, sid: str, cmds: list[list[Any]], fence: str | None,
                      log_len: int | None = None) -> None:
        """Run ``cmds`` as one atomic step; with ``fence``, only while the study's owner key
        holds exactly that value (and, with ``log_len``, its log that many entries)."""
        if not cmds:
            return
        if fence is None:
            async with self.r.pipeline(transaction=True) as p:
                for cmd in cmds:
                    p.execute_command(*cmd)
                await p.execute()
            return
        args: list[Any] = [fence, -1 if log_len is None else log_len]
        for cmd in cmds:
            args += [len(cmd), *cmd]
        try:
            await run_script(self._fenced, [keys.owner(sid), keys.log(sid)], args)
        except ResponseError as e:
            if str(e).startswith("FENCED"):
                raise LeaseLost(sid) from None
            if str(e).startswith("HPODSTALE"):
                raise StaleLog(f"study {sid}: {str(e).removeprefix('HPODSTALE ')}") from None
            raise _script_error(e) from None

    # ---------------------------------------------------------------- the outbox

    async def send_jobs(self, sid: str, jobs: Sequence[tuple[str, str, str]]) -> int:
        """Copy jobs of the study's outbox (``Batch.jobs``) into their job streams, each at
        most once whoever copies it and however often (the owner right after its commit, and
        again after a crash or a failover: ``outbox``). Returns how many were added now."""
        if not jobs:
            return 0
        handoffs = {keys.handoff_member(t, w) for t, w, _ in jobs if w}
        if handoffs:  # first, so the reaper finds the stream even if its worker just left
            await self.r.sadd(keys.handoffs(), *handoffs)
        calls = [(self._send_job, [keys.sent(t, sid, _job_id(j)), keys.queue(t, w)],
                  [SENT_TTL, j]) for t, w, j in jobs]
        return sum(int(n) for n in await run_scripts(self.r, calls, self.cluster))

    async def outbox(self, sids: Sequence[str]) -> dict[str, dict[str, tuple[str, str, str]]]:
        """Study -> job id -> (trainer, worker, job JSON) for every job in its outbox."""
        if not sids:
            return {}
        async with self.r.pipeline(transaction=False) as p:
            for sid in sids:
                p.hgetall(keys.outbox(sid))
            rows = await p.execute()
        out: dict[str, dict[str, tuple[str, str, str]]] = {}
        for sid, row in zip(sids, rows, strict=True):
            parsed = sorted((json.loads(v) | {"id": k} for k, v in row.items()),
                            key=lambda e: e["n"])
            out[sid] = {e["id"]: (e["t"], e["w"], e["j"]) for e in parsed}
        return out

    async def clear_outbox(self, sid: str, entries: Mapping[str, tuple[str, str, str]],
                           fence: str | None) -> None:
        """Drop outbox entries (job id -> entry) of jobs no longer queued (started, ended,
        dropped), then their "sent" marks: nothing copies them again."""
        if not entries:
            return
        await self.execute(sid, _chunked(["HDEL", keys.outbox(sid)], list(entries)), fence)
        async with self.r.pipeline(transaction=False) as p:
            for job_id, (trainer, _, _) in entries.items():
                p.delete(keys.sent(trainer, sid, job_id))
            await p.execute()

    # ---------------------------------------------------------------- worker events

    async def read_events(self, sids: Sequence[str], consumer: str, count: int,
                          block_ms: int, pending: bool = False
                          ) -> list[tuple[str, list[tuple[str, dict]]]]:
        """Worker events per study. ``pending=True`` re-reads this consumer's unacknowledged
        entries (after a restart) instead of new ones."""
        if not sids:
            return []
        if self.cluster:
            resp = await self._read_events_cluster(sids, consumer, count, block_ms, pending)
        else:
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

    async def _read_events_cluster(self, sids: Sequence[str], consumer: str, count: int,
                                   block_ms: int, pending: bool) -> list[Any]:
        """One XREADGROUP reads streams of one slot only: on a cluster each study's stream is
        read on its own (a pipeline per master, the masters at once), without blocking; when
        none has anything the caller waits a little, as a blocking read would have. A master
        that does not answer (failing over) holds up only its own studies."""
        async def read(group: list[str]) -> list[Any]:
            async with self.r.pipeline(transaction=False) as p:
                for sid in group:
                    p.xreadgroup(keys.SERVER_GROUP, consumer,
                                 {keys.events(sid): "0" if pending else ">"}, count=count)
                return await p.execute(raise_on_error=False)

        groups = self._by_node([keys.events(s) for s in sids], sids)
        results = await asyncio.gather(*[read(g) for g in groups], return_exceptions=True)
        resp: list[Any] = []
        for group, replies in zip(groups, results, strict=True):
            if isinstance(replies, BaseException):
                log.warning("reading the events of studies %s failed: %s", group, replies)
                continue
            for reply in replies:
                if isinstance(reply, Exception):
                    if "NOGROUP" in str(reply):
                        continue  # a study deleted meanwhile
                    raise reply
                resp += _stream_replies(reply)
        if not resp and not pending:
            await asyncio.sleep(min(block_ms, CLUSTER_POLL_MS) / 1000)
        return resp

    def _by_node(self, keys_: Sequence[str], items: Sequence[str]) -> list[list[str]]:
        """``items`` grouped by the cluster node that serves the matching key."""
        groups: dict[str, list[str]] = {}
        for key, item in zip(keys_, items, strict=True):
            try:
                name = self.r.get_node_from_key(key).name
            except Exception:  # no node known for its slot now: a group of its own
                name = key
            groups.setdefault(name, []).append(item)
        return list(groups.values())

    async def reclaim_events(self, sids: Sequence[str], consumer: str, min_idle_ms: int,
                             count: int) -> list[tuple[str, list[tuple[str, dict]]]]:
        """Events this server's group delivered more than ``min_idle_ms`` ago and never
        acknowledged (a lost read reply, a failed commit), claimed again for ``consumer``."""
        if not sids:
            return []
        async with self.r.pipeline(transaction=False) as p:
            for sid in sids:
                p.xautoclaim(keys.events(sid), keys.SERVER_GROUP, consumer, min_idle_ms,
                             start_id="0-0", count=count)
            replies = await p.execute(raise_on_error=False)
        out = []
        for sid, reply in zip(sids, replies, strict=True):
            if isinstance(reply, Exception) or not reply or not reply[1]:
                continue
            out.append((sid, [(eid, json.loads(fields["e"]))
                              for eid, fields in reply[1] if fields]))
        return out

    async def take_pending(self, sid: str, consumer: str) -> int:
        """Claim for ``consumer`` every event of the study that the group delivered and nobody
        acknowledged (a previous owner read them, then died or gave the study back); they are
        then read again in stream order. Returns how many."""
        taken, cursor = 0, "0-0"
        while True:
            reply = await self.r.xautoclaim(keys.events(sid), keys.SERVER_GROUP, consumer, 0,
                                            start_id=cursor, count=1000)
            cursor = reply[0]
            taken += len(reply[1])
            if cursor == "0-0":
                return taken

    async def forget_study_id(self, sid: str) -> None:
        await self.r.srem(keys.studies(), sid)

    async def study_tenant(self, sid: str) -> str | None:
        """The tenant owning a stored study, or None when there is no such study."""
        raw = await self.r.hget(keys.study(sid), "config")
        if raw is None:
            return None
        return str(json.loads(raw).get("tenant", "") or "")

    async def study_exists(self, sid: str) -> bool:
        return bool(await self.r.sismember(keys.studies(), sid))

    # ---------------------------------------------------------------- workers and leases

    async def _live_workers(self, lease_s: float, *fields: str
                            ) -> tuple[list[str], list[list[str | None]]]:
        """Ids of the workers that heartbeated within ``lease_s``, and those fields of each."""
        ids = await self.r.zrangebyscore(keys.workers(), time.time() - lease_s, "+inf")
        if not ids:
            return [], []
        async with self.r.pipeline(transaction=False) as p:
            for wid in ids:
                p.hmget(keys.worker(wid), *fields)
            return ids, await p.execute()

    async def idle_workers(self, lease_s: float) -> dict[str, list[str]]:
        """Ids of the live idle workers, per trainer name."""
        ids, rows = await self._live_workers(lease_s, "trainers", "status")
        idle: dict[str, list[str]] = {}
        for wid, (trainers, status) in zip(ids, rows, strict=True):
            if status == "idle" and trainers:
                for t in trainers.split(","):
                    idle.setdefault(t, []).append(wid)
        return idle

    async def worker_status(self, lease_s: float) -> dict[str, int]:
        """Live workers by status (``idle`` | ``busy``), for the metrics."""
        _, rows = await self._live_workers(lease_s, "status")
        out: dict[str, int] = {}
        for (status,) in rows:
            if status:
                out[status] = out.get(status, 0) + 1
        return out

    async def worker_count(self, lease_s: float) -> int:
        return int(await self.r.zcount(keys.workers(), time.time() - lease_s, "+inf"))

    async def _job_streams(self) -> list[str]:
        shared = [keys.jobs(t) for t in await self.r.smembers(keys.trainers())]
        return shared + [keys.handoff(*keys.parse_handoff_member(m))
                         for m in await self.r.smembers(keys.handoffs())]

    async def expired_jobs(self, lease_s: float) -> list[tuple[str, str, dict]]:
        """Jobs whose worker stopped heartbeating: (queue key, entry id, job)."""
        out = []
        for stream in await self._job_streams():
            try:
                pend = await self.r.xpending_range(stream, keys.WORKER_GROUP, min="-", max="+",
                                                   count=100, idle=int(lease_s * 1000))
            except ResponseError:
                continue
            for entry in pend:
                eid = entry["message_id"]
                rows = await self.r.xrange(stream, eid, eid)
                job = json.loads(rows[0][1]["j"]) if rows else None
                out.append((stream, eid, job))
        return out

    async def return_handoffs(self, max_age_s: float, lease_s: float) -> int:
        """Move handoff jobs their worker has not taken within ``max_age_s`` (or ever: it is
        gone) back to the trainer's shared stream, where any worker takes them from the
        checkpoint. Returns how many moved."""
        moved = 0
        dead_before = time.time() - lease_s
        for member in await self.r.smembers(keys.handoffs()):
            trainer, wid = keys.parse_handoff_member(member)
            seen = await self.r.zscore(keys.workers(), wid)
            gone = seen is None or float(seen) < dead_before
            n, removed = await run_script(
                self._return_handoffs, [keys.handoff(trainer, wid), keys.jobs(trainer)],
                [keys.WORKER_GROUP, int(max_age_s * 1000), int(gone)])
            moved += int(n)
            if int(removed) and gone:
                await self.r.srem(keys.handoffs(), member)
        return moved

    async def trial_views(self, sid: str) -> dict[int, dict]:
        raw = await self.r.hgetall(keys.trials(sid))
        return {int(k): json.loads(v) for k, v in raw.items()}

    # ---------------------------------------------------------------- health and trainers

    async def probe(self, timeout: float) -> bool:
        """Whether Redis answers a PING within ``timeout`` seconds. A connection of its own,
        with socket timeouts, so a stalled Redis fails the probe instead of hanging it and the
        study connections are never disturbed."""
        if getattr(self, "_probe", None) is None:
            extra = {} if self.cluster else {"single_connection_client": True}
            self._probe = async_client(self.url, self.cluster, socket_timeout=timeout,
                                       socket_connect_timeout=timeout, **extra)
        try:
            return bool(await asyncio.wait_for(self._probe.ping(), timeout * 2))
        except (RedisError, OSError, asyncio.TimeoutError):
            # A half-finished exchange leaves the connection unusable: start afresh next time.
            probe, self._probe = self._probe, None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(probe.aclose(), timeout)
            return False

    async def close_probe(self) -> None:
        probe, self._probe = getattr(self, "_probe", None), None
        if probe is not None:
            await probe.aclose()

    async def declared_trainers(self, lease_s: float) -> dict[str, list[str] | None]:
        """Trainers the live workers have: name -> the settings they declared in their
        ``trainer_specs`` field (JSON ``{name: {"settings": [...]}}``), or None when none of
        its workers published any."""
        _, rows = await self._live_workers(lease_s, "trainers", "trainer_specs")
        out: dict[str, list[str] | None] = {}
        for trainers, specs in rows:
            for t in (trainers or "").split(","):
                if t:
                    out.setdefault(t, None)
            try:
                parsed = json.loads(specs) if specs else {}
            except ValueError:
                parsed = {}
            for t, spec in parsed.items() if isinstance(parsed, dict) else ():
                settings = spec.get("settings") if isinstance(spec, dict) else None
                if isinstance(settings, list):
                    out[t] = sorted({*(out.get(t) or []), *map(str, settings)})
        return out
