"""Every Redis key name hpod uses. Nothing else in the code base spells a key.

Keys of one study carry the study id as a hash tag (``{<study>}``) so that everything one
study's transaction touches lives in one slot of a Redis Cluster. The job streams are per
trainer, shared by studies: a trainer's shared stream, its workers' handoff streams and the
"sent" marks of its jobs carry the trainer's name as their hash tag (``{<trainer>}``), so a
move between them is one step too. A study's commit writes its new jobs into its own outbox;
they are copied into the job streams afterwards, each once (``RedisStore.send_jobs``). The
global keys (study index, worker and replica registries) are only ever used one key per
command, so they need no common slot.
"""

from __future__ import annotations

PREFIX = "hpod:v1"

SERVER_GROUP = "server"  # consumer group of the server on each study's event stream
WORKER_GROUP = "workers"  # consumer group of the workers on each trainer's job stream


def studies() -> str:
    """SET of study ids."""
    return f"{PREFIX}:studies"


def study(sid: str) -> str:
    """HASH: config (JSON), state, created, name, summary (JSON), log_base, applied_by
    (``<replica> <unix time>`` of the last commit that applied worker events)."""
    return f"{PREFIX}:{{{sid}}}:study"


def log(sid: str) -> str:
    """LIST of the study's engine inputs (JSON), in the order they were applied."""
    return f"{PREFIX}:{{{sid}}}:log"


def snapshot(sid: str) -> str:
    """STRING: JSON {"inputs": n, "state": engine state after the first n inputs}."""
    return f"{PREFIX}:{{{sid}}}:snapshot"


def trials(sid: str) -> str:
    """HASH trial id -> trial JSON: a readable view of the trials, rewritten as they change."""
    return f"{PREFIX}:{{{sid}}}:trials"


def events(sid: str) -> str:
    """STREAM of worker events for the study, read by the server's consumer group."""
    return f"{PREFIX}:{{{sid}}}:events"


def stopped_jobs(sid: str) -> str:
    """SET of job ids a worker must stop (STOP decision, lost lease, stopped study)."""
    return f"{PREFIX}:{{{sid}}}:stop"


def jobs(trainer: str) -> str:
    """STREAM of jobs for workers that have ``trainer``; the pending list is the lease table."""
    return f"{PREFIX}:jobs:{{{trainer}}}"


def job_streams_pattern() -> str:
    """Every trainer's shared and handoff streams (an ACL key pattern)."""
    return f"{PREFIX}:jobs:*"


def outbox(sid: str) -> str:
    """HASH job id -> ``{"t": trainer, "w": worker or "", "j": job JSON, "n": order}``: jobs
    the study's commits created, kept until the job is no longer queued; each is copied into
    its job stream once (``sent``)."""
    return f"{PREFIX}:{{{sid}}}:outbox"


def sent(trainer: str, sid: str, job_id: str) -> str:
    """STRING with an expiry, in the trainer's slot: the job was added to a job stream (so a
    second copy from the outbox is not)."""
    return f"{PREFIX}:sent:{{{trainer}}}:{sid}:{job_id}"


def handoff(trainer: str, wid: str) -> str:
    """STREAM of jobs for one worker only: a trial's next segment handed to the idle worker
    that trained its last one (it still holds the model). Same consumer group as the trainer's
    stream; entries its worker has not read in time go back to the trainer's stream."""
    return f"{jobs(trainer)}:to:{wid}"


def queue(trainer: str, wid: str = "") -> str:
    """The stream a job sits in: its trainer's shared stream, or one worker's handoff stream."""
    return handoff(trainer, wid) if wid else jobs(trainer)


def handoffs() -> str:
    """SET of ``<trainer>|<worker id>`` for every handoff stream (for the lease reaper)."""
    return f"{PREFIX}:handoffs"


def handoff_member(trainer: str, wid: str) -> str:
    return f"{trainer}|{wid}"


def parse_handoff_member(member: str) -> tuple[str, str]:
    trainer, _, wid = member.partition("|")
    return trainer, wid


def trainers() -> str:
    """SET of trainer names that have had a job stream (for the lease reaper)."""
    return f"{PREFIX}:trainers"


def workers() -> str:
    """ZSET worker id -> last heartbeat (unix seconds)."""
    return f"{PREFIX}:workers"


def worker(wid: str) -> str:
    """HASH: trainers (comma separated), status (idle | busy), job, host, pid."""
    return f"{PREFIX}:worker:{wid}"


def ready(sid: str) -> str:
    """LIST of job ids: ask/tell jobs made ready for the study's next clients (suggested in
    the background, or retries of lost ones) and not handed to a client yet."""
    return f"{PREFIX}:{{{sid}}}:ready"


def owner(sid: str) -> str:
    """STRING ``<fencing token>|<replica id>`` with an expiry: the replica that owns the study
    while it renews the lease (``server/ownership.py``). Every commit of the study checks it."""
    return f"{PREFIX}:{{{sid}}}:owner"


def fence(sid: str) -> str:
    """STRING counter: the study's last fencing token; each new lease takes the next one."""
    return f"{PREFIX}:{{{sid}}}:fence"


def replicas() -> str:
    """ZSET server replica id -> last heartbeat (unix seconds)."""
    return f"{PREFIX}:replicas"


def replica(rid: str) -> str:
    """HASH: address (host:port where peers forward calls), pid, started."""
    return f"{PREFIX}:replica:{rid}"


def study_keys(sid: str) -> list[str]:
    return [study(sid), log(sid), snapshot(sid), trials(sid), events(sid), stopped_jobs(sid),
            ready(sid), outbox(sid), owner(sid), fence(sid)]
