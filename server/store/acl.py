"""Redis ACL users for workers: a worker authenticates to Redis as a user that may run the job
protocol (``worker_queue.py``) and nothing else, instead of with the server's password.

``worker_rules`` lists, for each kind of key the worker protocol touches, its key patterns (from
``keys.py``) and the commands the worker runs on them; change it together with
``worker_queue.py`` (``tests/test_redis_acl.py`` runs real workers as this user, so a command
missing here fails it). From the rules:

- **Redis 7** (and Valkey): one selector per rule, ``(~pattern +command ...)``, so each command
  is allowed on its own keys only: a worker can XADD to a study's event stream but not read it.
- **Redis 6.2** has no selectors: the user gets every rule's commands on every rule's patterns.
  What that leaves a worker beyond the protocol is ``RESIDUAL_REDIS6`` (and deploy/README.md).

Either way the user has no other keys (the study hash, log, snapshot, trial views, the study
index), no DEL of any key, no keyless command beyond PING and MULTI/EXEC (no KEYS, SCAN,
FLUSHALL, CONFIG, ACL, EVAL, MONITOR, CLIENT, DEBUG) and no Pub/Sub channels.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

from . import keys

DEFAULT_USER = "hpod-worker"


@dataclass(frozen=True)
class Rule:
    what: str
    patterns: tuple[str, ...]
    commands: tuple[str, ...]


def worker_rules(trainers: Sequence[str] | None = None) -> list[Rule]:
    """What the worker protocol runs, key by key. ``trainers`` narrows the job streams to those
    trainers' (their shared streams and their workers' handoff streams)."""
    if trainers:
        jobs = tuple(p for t in trainers for p in (keys.jobs(t), keys.jobs(t) + ":*"))
    else:
        jobs = (keys.job_streams_pattern(),)
    return [
        Rule("job streams: take, heartbeat (XCLAIM), finish, drop, hand back, requeue", jobs,
             ("xgroup|create", "xreadgroup", "xclaim", "xack", "xdel", "xadd")),
        Rule("handoff streams index", (keys.handoffs(),), ("sadd",)),
        Rule("study event streams: report", (keys.events("*"),), ("xadd",)),
        Rule("stop sets: STOP decisions", (keys.stopped_jobs("*"),), ("sismember",)),
        Rule("worker registry: heartbeats, the worker health check", (keys.workers(),),
             ("zadd", "zrem", "zrangebyscore")),
        Rule("worker hashes: status", (keys.worker("*"),), ("hset", "hdel")),
    ]


# Commands without keys: redis-py's PING and transactions (pipelines with transaction=True).
# redis-py also sends CLIENT SETINFO after AUTH and ignores the refusal.
KEYLESS = ("ping", "multi", "exec", "discard")

# What a Redis 6.2 worker user can do beyond the protocol (every command on every pattern).
RESIDUAL_REDIS6 = (
    "XACK/XDEL/XCLAIM/XREADGROUP on a study's event stream: drop or take unapplied reports",
    "SADD to a stop set: stop any job",
)

# What a Redis 7 worker user can do beyond its own work, inherent in the protocol.
RESIDUAL_REDIS7 = (
    "XADD a report or a job for any study it can name (the server refuses reports for jobs "
    "it did not hand out or that ended)",
    "XACK/XDEL/XCLAIM entries of the job streams it may read (drop or hold queued jobs)",
    "HSET/HDEL other workers' hashes and ZADD/ZREM their heartbeats",
)


# What a worker's Redis Cluster client runs besides the protocol, none of it on keys: the slot
# map, the command table (to find a command's keys) and the redirect during a slot migration.
CLUSTER_KEYLESS = ("cluster|slots", "command", "asking")


def hash_password(password: str) -> str:
    """The ``#<sha256>`` form of a password for ACL rules: the rule never holds the password."""
    return "#" + hashlib.sha256(password.encode()).hexdigest()


def new_password() -> str:
    return secrets.token_urlsafe(32)


def acl_rules(password_rule: str, redis_major: int = 7, trainers: Sequence[str] | None = None,
              select: bool = False, cluster: bool = False) -> list[str]:
    """The rules of a worker user, as ``ACL SETUSER <user> <rules...>`` takes them and as a
    ``user <name> <rules...>`` line of redis.conf (or ``redis-server --user``) does.

    ``password_rule`` is ``#<sha256 hex>`` (``hash_password``) or ``><password>``; ``select``
    allows SELECT, which redis-py sends for a URL with a database other than 0; ``cluster``
    allows what a cluster client runs (``CLUSTER_KEYLESS``). On a cluster the user must exist
    on every node, masters and replicas (``hpod redis-acl --apply`` does that)."""
    out = ["reset", "on", password_rule, "resetchannels", "-@all"]
    out += [f"+{c}" for c in KEYLESS + (("select",) if select else ())
            + (CLUSTER_KEYLESS if cluster else ())]
    rules = worker_rules(trainers)
    if redis_major >= 7:
        for r in rules:
            out.append("(" + " ".join([f"~{p}" for p in r.patterns]
                                      + [f"+{c}" for c in r.commands]) + ")")
    else:
        out += [f"+{c}" for c in dict.fromkeys(c for r in rules for c in r.commands)]
        out += [f"~{p}" for p in dict.fromkeys(p for r in rules for p in r.patterns)]
    return out


def redis_major_version(r: object) -> int:
    """The major version of a connected Redis (Valkey reports a Redis-compatible one)."""
    info = r.info("server")  # type: ignore[attr-defined]
    return int(str(info.get("redis_version", "7")).split(".")[0])


def url_db(url: str) -> int:
    path = urlsplit(url).path.strip("/")
    return int(path) if path.isdigit() else 0


def worker_url(admin_url: str, user: str, password: str, cluster: bool = False) -> str:
    """``admin_url`` (the server's) with the worker's credentials: same scheme (``rediss`` keeps
    TLS), host, port, database and options; on a cluster the scheme says so
    (``redis+cluster``), so the worker does not ask (INFO, which its user may not run)."""
    parts = urlsplit(admin_url)
    scheme = parts.scheme or "redis"
    if cluster and "+cluster" not in scheme:
        scheme += "+cluster"
    host = parts.hostname or "127.0.0.1"
    if ":" in host:  # IPv6
        host = f"[{host}]"
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((scheme, netloc, parts.path or "/0", parts.query, ""))


def quote_arg(arg: str) -> str:
    """One argument as redis-cli reads it (double quotes around one with a space)."""
    if not arg or any(c in arg for c in " \"'\\"):
        return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return arg
