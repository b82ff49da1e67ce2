"""``python -m hpod.trainers.healthcheck``: exit 0 when a worker of this host (this container)
has heartbeated to Redis in the last ``HPOD_HEALTH_MAX_AGE`` seconds (default 60). Used by the
worker image's HEALTHCHECK and the Kubernetes liveness probe.

A worker's heartbeat thread stamps the ``workers`` registry every quarter lease, training or
idle, and its id starts with the host name (``<host>-<pid>-...``). So this checks what matters:
the worker process runs, reaches Redis with its own credentials (``HPOD_REDIS_URL``, the worker
ACL user needs only ZRANGEBYSCORE on the registry for this) and keeps its leases alive. It
imports neither torch nor the trainers.
"""

from __future__ import annotations

import os
import socket
import sys
import time

import redis
from hpod.server.store import keys
from hpod.server.store.connect import sync_client


def main() -> int:
    url = os.environ.get("HPOD_REDIS_URL", "redis://127.0.0.1:6379/0")
    max_age = float(os.environ.get("HPOD_HEALTH_MAX_AGE", "60"))
    host = socket.gethostname()
    try:
        r = sync_client(url, decode_responses=True, socket_timeout=5,
                        socket_connect_timeout=5)  # one Redis or a Redis Cluster
        fresh = r.zrangebyscore(keys.workers(), time.time() - max_age, "+inf")
    except redis.RedisError as e:
        print(f"unhealthy: Redis: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    mine = [w for w in fresh if w.startswith(f"{host}-")]
    if not mine:
        print(f"unhealthy: no worker of host {host} heartbeated in the last {max_age:g} s",
              file=sys.stderr)
        return 1
    print(f"healthy: {', '.join(sorted(mine))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
