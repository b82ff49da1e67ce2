"""``python -m hpod.server.healthcheck``: exit 0 when the local server answers SERVING on gRPC
health checking. Used by the image's HEALTHCHECK and the Kubernetes probes, because it speaks
TLS (and mutual TLS) where a plain TCP or grpc probe cannot.

The server answers NOT_SERVING while it cannot reach Redis (``server/main.py``): right for a
readiness probe, wrong for a liveness one, since restarting the server does not bring Redis
back. ``--live`` exits 0 whenever the server answers at all (SERVING or NOT_SERVING).

Environment: ``HPOD_PORT`` (50051); with ``HPOD_TLS_CERT`` set it connects with TLS, trusting
``HPOD_TLS_CA`` (default: the server's own certificate, right for a self-signed one) and
presenting ``HPOD_TLS_CLIENT_CERT``/``HPOD_TLS_CLIENT_KEY`` when mutual TLS is on; the
certificate must name ``HPOD_TLS_SERVER_NAME`` (default ``localhost``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def _read(name: str) -> bytes | None:
    path = os.environ.get(name, "")
    return Path(path).read_bytes() if path else None


def channel(address: str) -> grpc.Channel:
    if not os.environ.get("HPOD_TLS_CERT"):
        return grpc.insecure_channel(address)
    creds = grpc.ssl_channel_credentials(_read("HPOD_TLS_CA") or _read("HPOD_TLS_CERT"),
                                         _read("HPOD_TLS_CLIENT_KEY"),
                                         _read("HPOD_TLS_CLIENT_CERT"))
    name = os.environ.get("HPOD_TLS_SERVER_NAME", "localhost")
    return grpc.secure_channel(address, creds, options=[("grpc.ssl_target_name_override", name)])


def main(argv: list[str] | None = None) -> int:
    live = "--live" in (sys.argv[1:] if argv is None else argv)
    address = f"127.0.0.1:{os.environ.get('HPOD_PORT', '50051')}"
    try:
        with channel(address) as ch:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(),
                                                        timeout=3)
    except grpc.RpcError as e:
        print(f"unhealthy: {e.code().name} {e.details()}", file=sys.stderr)
        return 1
    print(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))
    answering = (health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING)
    ok = resp.status in answering if live else resp.status == answering[0]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
