"""Which ended studies stay in server memory.

A study that has ended (completed, stopped, failed, quarantined) changes only if someone
raises its maximum resource, yet its engine (every trial, every learning curve, the algorithm's
state) would otherwise stay in memory for the server's lifetime. Once its final snapshot is in
Redis (nothing left to replay) and nobody has read it for ``rest_after`` seconds, or more than
``keep_ended`` ended studies are in memory (the least recently used go first), the manager
drops its engine and keeps a *resting* entry: the owner's tenant, its creation time and its
``Study`` message as the last engine rendered it, which is all ``ListStudies`` needs, and its
trials' count by state, which is all the metrics need. Any other
call loads the study again from its snapshot first (``StudyManager.wake``), so every answer is
the one the engine gives.

The same message is written to the study hash (field ``listing``, with the engine's input
count), so that a restarted server takes a resting study back without rebuilding it: the
listing is trusted only while the snapshot it was written with is still the study's last
(``log_base`` equal to its input count and an empty log).
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .engine import ACTIVE, StudyEngine
from .store import keys

ENDED_STATES = frozenset({"completed", "stopped", "failed", "quarantined"})


@dataclass
class Resting:
    """An ended study whose engine is not in memory."""

    created: float
    tenant: str
    listing: bytes  # the serialized ``hpod.v1.Study`` of its last engine
    inputs: int  # the engine's input count when it was put to rest
    state: str  # how it ended (one of ENDED_STATES), for the metrics
    trials: dict[str, int] = field(default_factory=dict)  # its trials by state, for the metrics


@dataclass
class Residency:
    rest_after: float = 60.0  # seconds an ended study stays in memory after its last use
    keep_ended: int = 32  # ended studies kept in memory at most (least recently used go)
    resting: dict[str, Resting] = field(default_factory=dict)
    used: dict[str, float] = field(default_factory=dict)  # sid -> monotonic time of last use
    ended: dict[str, float] = field(default_factory=dict)  # sid -> when first seen ended
    _waking: dict[str, asyncio.Lock] = field(default_factory=dict)

    def touch(self, sid: str) -> None:
        self.used[sid] = time.monotonic()

    def forget(self, sid: str) -> None:
        self.resting.pop(sid, None)
        self.used.pop(sid, None)
        self.ended.pop(sid, None)

    def lock(self, sid: str) -> asyncio.Lock:
        """One load at a time per study: concurrent reads of a resting study wait for it."""
        return self._waking.setdefault(sid, asyncio.Lock())

    def due(self, studies: Mapping[str, Any], now: float | None = None) -> list[str]:
        """Ended studies that may rest now: idle longer than ``rest_after``, or the least
        recently used beyond ``keep_ended``. Only a study with nothing to replay (its last
        snapshot holds every input), no watcher and nothing in flight is named."""
        now = time.monotonic() if now is None else now
        ended = []
        for sid, live in studies.items():
            if not restable(live) or live.lock.locked():
                self.ended.pop(sid, None)  # active again (a raise), or busy: a fresh start
                continue
            # Idle since its last use or since it ended, whichever is later.
            ended.append((max(self.used.get(sid, -math.inf), self.ended.setdefault(sid, now)),
                          sid))
        ended.sort()
        over = max(0, len(ended) - self.keep_ended)
        return [sid for i, (used, sid) in enumerate(ended)
                if i < over or now - used >= self.rest_after]


def restable(live: Any) -> bool:
    """Ended, with its final snapshot holding every input, and nobody attached."""
    eng: StudyEngine = live.engine
    return (eng.state != ACTIVE and not live.stale and not live.busy and not live.watchers
            and not eng.jobs and live.log_len == 0 and live.snapshot_at == eng.inputs
            and live.fence is not None)


def trial_states(eng: StudyEngine) -> dict[str, int]:
    """How many of a study's trials are in each state."""
    out: dict[str, int] = {}
    for t in list(eng.trials.values()):  # list: the metrics read it from their own thread
        out[t.state] = out.get(t.state, 0) + 1
    return out


def listing_command(sid: str, rest: Resting) -> list[Any]:
    """The write of the ``listing`` field of the study hash."""
    return ["HSET", keys.study(sid), "listing", json.dumps(
        {"inputs": rest.inputs, "created": rest.created, "trials": rest.trials,
         "study": base64.b64encode(rest.listing).decode()})]


async def stored_resting(r: Any, sid: str) -> Resting | None:
    """The resting entry a restarted server may keep for ``sid`` instead of rebuilding it,
    or None (the study is active, or changed since its listing was written)."""
    async with r.pipeline(transaction=True) as p:
        p.hmget(keys.study(sid), "state", "listing", "log_base", "config")
        p.llen(keys.log(sid))
        (state, listing, base, config), log_len = await p.execute()
    if state not in ENDED_STATES or not listing or int(log_len or 0) != 0 or not config:
        return None
    try:
        saved = json.loads(listing)
        inputs = int(saved["inputs"])
        if int(base or -1) != inputs:
            return None
        # The creation time the study was listed with, so that it is listed the same after
        # a restart (the study hash holds one taken a moment before it).
        # A listing written before trial counts were kept has none: the study's trials then
        # go uncounted by the metrics until it is next loaded.
        trials = {str(k): int(v) for k, v in (saved.get("trials") or {}).items()}
        return Resting(float(saved["created"]), str(json.loads(config).get("tenant", "") or ""),
                       base64.b64decode(saved["study"]), inputs, state, trials)
    except (ValueError, KeyError, TypeError):
        return None
