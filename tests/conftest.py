"""Shared fixtures: real redis-server processes and real hpod clusters on loopback."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

# One math thread per process: the suite starts many processes (servers, workers, fits) on
# small machines, where torch's and BLAS's default of one thread per core oversubscribes them.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# The suite forks and execs many processes from a process that holds gRPC channels; gRPC's
# fork handlers (needed only for a fork without exec) have stalled new channels after that.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
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
