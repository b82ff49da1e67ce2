"""Redis clients for a URL that names either one Redis or a Redis Cluster.

``redis+cluster://host:port/0`` (``rediss+cluster://`` with TLS) says it is a cluster; a plain
``redis://`` URL is asked once (``INFO cluster``: ``cluster_enabled``) and a cluster found that
way is used as one too. Any node of a cluster is an entry point: the client learns the slot
map from it and follows the cluster through failovers (``MOVED`` / ``ASK``). On a cluster only
database 0 exists.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

log = logging.getLogger("hpod.server")

_CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
DETECT_TIMEOUT = 3.0  # seconds for the one INFO that tells a cluster from one Redis


def plain_url(url: str) -> tuple[str, bool]:
    """(the URL redis-py understands, whether its scheme says "cluster")."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme.lower() in _CLUSTER_SCHEMES:
        return f"{_CLUSTER_SCHEMES[scheme.lower()]}://{rest}", True
    return url, False


def is_cluster(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster: by its scheme, else by asking the server. A
    server that cannot be asked now is taken for one Redis (with a warning): the URL scheme
    ``redis+cluster://`` removes the guess."""
    plain, explicit = plain_url(url)
    if explicit:
        return True
    try:
        with redis.Redis.from_url(plain, socket_timeout=DETECT_TIMEOUT,
                                  socket_connect_timeout=DETECT_TIMEOUT) as r:
            return bool(int(r.info("cluster").get("cluster_enabled", 0) or 0))
    except redis.RedisError as e:
        log.warning("could not ask Redis whether it is a cluster (%s); using it as one Redis "
                    "(write the URL as redis+cluster://... to say it is a cluster)", e)
        return False


def _cluster_url(plain: str) -> str:
    """A cluster has database 0 only: a ``/0`` path is dropped, any other refused."""
    head, sep, path = plain.partition("://")
    host, slash, rest = path.partition("/")
    db, q, query = rest.partition("?")
    if db not in ("", "0"):
        raise ValueError(f"Redis URL {head}://{host}/{db}: a Redis Cluster has database 0 "
                         "only; drop the /<db> part of the URL")
    return f"{head}{sep}{host}{'?' + query if q else ''}"


def async_client(url: str, cluster: bool | None = None, **kwargs: Any
                 ) -> aioredis.Redis | AsyncRedisCluster:
    plain, _ = plain_url(url)
    if is_cluster(url) if cluster is None else cluster:
        return AsyncRedisCluster.from_url(_cluster_url(plain), **kwargs)
    return aioredis.from_url(plain, **kwargs)


def sync_client(url: str, cluster: bool | None = None, **kwargs: Any
                ) -> redis.Redis | RedisCluster:
    plain, _ = plain_url(url)
    if is_cluster(url) if cluster is None else cluster:
        kwargs.pop("single_connection_client", None)
        return RedisCluster.from_url(_cluster_url(plain), **kwargs)
    return redis.Redis.from_url(plain, **kwargs)
