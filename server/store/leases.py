"""Study leases and the replica registry in Redis (the server's side of ownership).

A study is owned by the replica whose value sits in its ``owner`` key (``<token>|<replica>``,
with an expiry the owner renews). Taking a study that is free, or that the same replica id
held in an earlier life, draws the next number of the study's ``fence`` counter: the
*fencing token*. Every write of the study checks, inside the same script that writes, that the
owner key still holds exactly the value its copy was loaded with (``RedisStore.commit``), so a
replica that lost its lease (a pause, a partition, a slow shutdown) can never write again,
whatever it still believes. All keys of one script carry the study's hash tag: one slot.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript
from redis.exceptions import OutOfMemoryError, ReadOnlyError, ResponseError

from . import keys

# KEYS: owner, fence. ARGV: replica id, lease ms. Returns the owner value now held, or nil
# when another replica holds a live lease.
_ACQUIRE = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local sep = string.find(cur, '|', 1, true)
  if string.sub(cur, sep + 1) ~= ARGV[1] then return false end
end
local token = redis.call('INCR', KEYS[2])
local value = token .. '|' .. ARGV[1]
redis.call('SET', KEYS[1], value, 'PX', ARGV[2])
return value
"""

# KEYS: owner. ARGV: value held, lease ms. 1 if still ours (and renewed), else 0.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# KEYS: owner. ARGV: value held. Frees the study only if it is still ours.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


async def run_script(script: AsyncScript, keys: list[str], args: list[Any],
                     client: Pipeline | None = None) -> Any:
    """Run a Lua script. A write refused inside it for a passing reason (out of memory, a
    read-only replica) comes back from Redis wrapped as a script error; it is raised as the
    error it is, so callers treat it as retryable like the same refusal outside a script."""
    try:
        return await script(keys=keys, args=args, client=client)
    except ResponseError as e:
        text = str(e)
        if "OOM command not allowed" in text:
            raise OutOfMemoryError(text) from None
        if "READONLY" in text:
            raise ReadOnlyError(text) from None
        raise


async def run_scripts(r: aioredis.Redis, calls: Sequence[tuple[AsyncScript, list[str], list[Any]]],
                      cluster: bool, raise_on_error: bool = True) -> list[Any]:
    """Run several scripts: in one pipeline on a single Redis (one round trip); on a cluster,
    where redis-py pipelines no scripts, concurrently, each to the node of its keys. With
    ``raise_on_error=False`` a failed call's exception is its reply."""
    if not calls:
        return []
    if cluster:
        replies = await asyncio.gather(*[run_script(s, k, a) for s, k, a in calls],
                                       return_exceptions=True)
        for reply in replies:  # as a pipeline would: only a refused command is a reply
            if isinstance(reply, Exception) and (
                    raise_on_error or not isinstance(reply, ResponseError)):
                raise reply
        return list(replies)
    async with r.pipeline(transaction=False) as p:
        for script, k, a in calls:
            await script(keys=k, args=a, client=p)
        return list(await p.execute(raise_on_error=raise_on_error))


def replica_of(value: str | None) -> str:
    """The replica id in an owner value (``""`` for none)."""
    return (value or "").partition("|")[2]


class Leases:
    def __init__(self, r: aioredis.Redis, cluster: bool = False) -> None:
        self.r = r
        self.cluster = cluster
        self._acquire = r.register_script(_ACQUIRE)
        self._renew = r.register_script(_RENEW)
        self._release = r.register_script(_RELEASE)

    async def acquire(self, sid: str, replica: str, lease_s: float) -> str | None:
        """Take the study if it is free or was this replica's: the owner value, else None."""
        got = await run_script(self._acquire, [keys.owner(sid), keys.fence(sid)],
                               [replica, int(lease_s * 1000)])
        return got or None

    async def renew(self, held: dict[str, str], lease_s: float) -> set[str]:
        """Renew every lease in ``held`` (study -> owner value); returns the studies lost."""
        if not held:
            return set()
        # A script per key, not one for all: on a Redis Cluster each is in its own slot.
        replies = await run_scripts(
            self.r, [(self._renew, [keys.owner(sid)], [value, int(lease_s * 1000)])
                     for sid, value in held.items()], self.cluster, raise_on_error=False)
        return {sid for sid, ok in zip(held, replies, strict=True) if ok != 1}

    async def release(self, sid: str, value: str) -> bool:
        return bool(await run_script(self._release, [keys.owner(sid)], [value]))

    async def owners(self, sids: list[str]) -> dict[str, str]:
        """Study -> owner value, for the studies that have a live lease."""
        if not sids:
            return {}
        async with self.r.pipeline(transaction=False) as p:
            for sid in sids:
                p.get(keys.owner(sid))
            values = await p.execute()
        return {sid: v for sid, v in zip(sids, values, strict=True) if v}

    # ---------------------------------------------------------------- replica registry

    async def heartbeat(self, replica: str, address: str) -> None:
        now = time.time()
        async with self.r.pipeline(transaction=False) as p:
            p.zadd(keys.replicas(), {replica: now})
            p.hset(keys.replica(replica), mapping={"address": address, "seen": repr(now)})
            await p.execute()

    async def leave(self, replica: str) -> None:
        async with self.r.pipeline(transaction=False) as p:
            p.zrem(keys.replicas(), replica)
            p.delete(keys.replica(replica))
            await p.execute()

    async def live_replicas(self, lease_s: float) -> list[str]:
        return sorted(await self.r.zrangebyscore(keys.replicas(), time.time() - lease_s, "+inf"))

    async def address(self, replica: str) -> str:
        return await self.r.hget(keys.replica(replica), "address") or ""
