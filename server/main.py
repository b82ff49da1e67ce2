"""Run the hpod gRPC server: the study service, health checking and reflection."""

from __future__ import annotations

import asyncio
import logging
import signal

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from hpod.v1 import hpod_pb2 as pb
from hpod.v1 import hpod_pb2_grpc as pb_grpc

from .manager import Settings, StudyManager
from .service.servicer import HpodServicer

log = logging.getLogger("hpod.server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Hpod"].full_name
MAX_MESSAGE = 16 * 1024 * 1024


async def serve(address: str, settings: Settings, ready: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM/SIGINT; then stop taking calls, let running ones finish, and close."""
    manager = StudyManager(settings)
    await manager.start()
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", MAX_MESSAGE),
                                      ("grpc.max_send_message_length", MAX_MESSAGE)])
    pb_grpc.add_HpodServicer_to_server(HpodServicer(manager), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME), server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise SystemExit(f"cannot bind {address}: is another server using the port?")
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("hpod server on %s (redis %s)", address, settings.redis_url)
    print(f"hpod server listening on {address}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    await stop.wait()
    await health_servicer.enter_graceful_shutdown()
    await server.stop(grace=5)
    await manager.stop()


def run(address: str, settings: Settings) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(serve(address, settings))
