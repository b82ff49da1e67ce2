"""Which replica owns which study: leases in Redis, renewed, taken and given back.

Several ``hpod server`` replicas share one Redis. Each study is owned by one replica at a time,
the one holding its lease (``store/leases.py``); only the owner keeps the study in memory,
applies its worker events, dispatches its jobs and reaps its jobs' leases, and every write of
the study is fenced by the lease (``RedisStore.commit``). Every ``period`` (a third of the
lease) each replica:

1. heartbeats in the replica registry (id -> address, for forwarding);
2. renews the leases it holds; a lease it could not renew is lost: the study leaves memory at
   once (its writes would be refused anyway);
3. counts the live replicas and the studies, and aims at a fair share, ``ceil(studies /
   replicas)``: it takes free studies (no live lease: new, or their owner died or left) while
   it has fewer, and gives back the surplus when it has more (another replica joined). A study
   seen free two passes in a row is taken whatever the share, so none waits on a rounding.

A taken study is rebuilt (snapshot + log replay) exactly as after a restart; it answers
UNAVAILABLE until it is ready. A drained replica (SIGTERM) gives every study back at once, so
the others take them within one period instead of one lease.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable

from redis.exceptions import RedisError

from .store.leases import Leases, replica_of

log = logging.getLogger("hpod.server")


class Ownership:
    def __init__(self, leases: Leases, replica: str, address: str, lease_s: float,
                 study_ids: Callable[[], Awaitable[list[str]]],
                 adopt: Callable[[str, str], Awaitable[None]],
                 give_up: Callable[[str], Awaitable[None]],
                 lost: Callable[[str], None]) -> None:
        self.leases = leases
        self.replica = replica
        self.address = address
        self.lease_s = lease_s
        self.period = lease_s / 3
        self._study_ids = study_ids
        self._adopt = adopt  # rebuild a study just taken (owner value given)
        self._give_up = give_up  # drop a study from memory before its lease is released
        self._lost = lost  # drop a study whose lease is gone
        self.held: dict[str, str] = {}  # study -> owner value (the fencing token) we hold
        self.live_replicas = 1
        self.draining = False
        self._seen_free: set[str] = set()
        self._renewed_at = -math.inf  # time.monotonic() of the last renewal of every lease

    def fresh(self) -> bool:
        """Whether this replica renewed its leases less than half a lease ago. A replica that
        was paused (SIGSTOP, a long GC, a frozen VM) past its leases is not fresh when it
        wakes (the monotonic clock ran on): until its next renewal tells it which studies it
        lost, it must not read their events, or another owner would see them out of order."""
        return time.monotonic() - self._renewed_at < self.lease_s / 2

    # ---------------------------------------------------------------- one pass

    async def step(self) -> None:
        await self.leases.heartbeat(self.replica, self.address)
        started = time.monotonic()
        for sid in await self.leases.renew(dict(self.held), self.lease_s):
            log.warning("study %s: lease lost (another replica owns it now)", sid,
                        extra={"study_id": sid})
            self.held.pop(sid, None)
            self._lost(sid)
        self._renewed_at = started
        if self.draining:
            return
        replicas = await self.leases.live_replicas(self.lease_s)
        self.live_replicas = max(1, len(replicas) + (self.replica not in replicas))
        sids = await self._study_ids()
        owners = await self.leases.owners(sids)
        # Studies created here while this pass read the ids count too: else they would look
        # like a surplus, and a lone replica would give a study away to no one.
        target = math.ceil(len(set(sids) | set(self.held)) / self.live_replicas)
        # Leases this replica id held in an earlier life (a restart): taken back at once.
        for sid, value in owners.items():
            if replica_of(value) == self.replica and sid not in self.held:
                await self.take(sid)
        free = [s for s in sids if s not in owners and s not in self.held]
        overdue = [s for s in free if s in self._seen_free]
        self._seen_free = set(free)
        for sid in overdue + [s for s in free if s not in overdue]:
            if len(self.held) >= target and sid not in overdue:
                break
            await self.take(sid)
        surplus = len(self.held) - target
        if surplus > 0:
            for sid in sorted(self.held)[:surplus]:
                await self.give_back(sid)

    async def take(self, sid: str) -> str | None:
        """Take a free study (or one this replica id held before a restart) and rebuild it."""
        value = await self.leases.acquire(sid, self.replica, self.lease_s)
        if value is None:
            return None
        self.held[sid] = value
        self._seen_free.discard(sid)
        log.info("study %s: taken by replica %s (fencing token %s)", sid, self.replica,
                 value.partition("|")[0], extra={"study_id": sid})
        await self._adopt(sid, value)
        return value

    async def take_new(self, sid: str) -> str:
        """The lease of a study being created here: its creator owns it."""
        value = await self.leases.acquire(sid, self.replica, self.lease_s)
        if value is None:  # ids are random: only a collision gets here
            raise RuntimeError(f"study id {sid} is already owned by another replica")
        self.held[sid] = value
        return value

    async def give_back(self, sid: str) -> None:
        """Hand a study to whichever replica takes it next: out of memory first, then free."""
        value = self.held.pop(sid, None)
        if value is None:
            return
        await self._give_up(sid)
        try:
            await self.leases.release(sid, value)
        except RedisError:  # it expires on its own within one lease
            log.warning("study %s: releasing its lease failed", sid, exc_info=True)
        log.info("study %s: given back by replica %s", sid, self.replica,
                 extra={"study_id": sid})

    def forget(self, sid: str) -> None:
        """The study is gone (deleted) or its lease was refused: stop renewing it."""
        self.held.pop(sid, None)

    async def owner_of(self, sid: str) -> tuple[str, str] | None:
        """(replica id, address) of the study's owner, or None when no lease is live."""
        value = (await self.leases.owners([sid])).get(sid)
        if not value:
            return None
        rid = replica_of(value)
        return rid, await self.leases.address(rid)

    async def peers(self) -> list[tuple[str, str]]:
        """(replica id, address) of every other live replica."""
        out = []
        for rid in await self.leases.live_replicas(self.lease_s):
            if rid != self.replica:
                address = await self.leases.address(rid)
                if address:
                    out.append((rid, address))
        return out

    # ---------------------------------------------------------------- loop and drain

    async def run(self) -> None:
        while True:
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:  # Redis away: the leases expire on their own if this persists
                log.warning("study ownership pass failed; retrying", exc_info=True)
            await asyncio.sleep(self.period)

    async def drain(self) -> None:
        """Give every study back and leave the registry (SIGTERM: a rolling restart)."""
        self.draining = True
        for sid in list(self.held):
            await self.give_back(sid)
        try:
            await self.leases.leave(self.replica)
        except RedisError:
            log.warning("leaving the replica registry failed", exc_info=True)
