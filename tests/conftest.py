"""Shared fixtures: real redis-server processes and real hpod clusters on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hpod.client.local import LocalCluster
from hpod.server.store.embedded import EmbeddedRedis


@pytest.fixture
def redis_server(tmp_path) -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(str(tmp_path / "redis")) as server:
        yield server


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[LocalCluster]:
    """Embedded Redis, the server and two worker processes, shared by a test module."""
    workdir = tmp_path_factory.mktemp("cluster")
    with LocalCluster(workers=2, trainers=("analytic", "mlp"), workdir=str(workdir),
                      lease_seconds=3.0) as c:
        yield c
