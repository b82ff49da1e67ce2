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

from . import logs, metrics
from .manager import Settings, StudyManager
from .options import ServerOptions
from .optuna_live import LiveMirror
from .service.auth import AuthInterceptor, load_tokens
from .service.servicer import HpodServicer

log = logging.getLogger("hpod.server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Hpod"].full_name


def _interceptors(options: ServerOptions) -> list[grpc.aio.ServerInterceptor]:
    tokens = load_tokens(options.tokens_file)
    chain: list[grpc.aio.ServerInterceptor] = [metrics.MetricsInterceptor()]
    if tokens:
        chain.append(AuthInterceptor(tokens))
    log.info("token authentication %s", f"on ({len(tokens)} tokens)" if tokens else "off")
    return chain


def _bind(server: grpc.aio.Server, address: str, options: ServerOptions) -> None:
    if options.tls is not None:
        port = server.add_secure_port(address, options.tls.credentials())
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise SystemExit(f"cannot bind {address}: is another server using the port?")


async def serve(address: str, settings: Settings, ready: asyncio.Event | None = None,
                options: ServerOptions | None = None) -> None:
    """Serve until SIGTERM/SIGINT; then stop taking calls, let running ones finish, and close."""
    options = options or ServerOptions()
    size = options.limits.max_message_bytes
    manager = StudyManager(settings)
    mirror = _optuna_mirror(manager, options)  # a bad URL stops here, before anything runs
    await manager.start()
    if mirror is not None:
        mirror.start()
    server = grpc.aio.server(interceptors=_interceptors(options),
                             options=[("grpc.max_receive_message_length", size),
                                      ("grpc.max_send_message_length", size)])
    pb_grpc.add_HpodServicer_to_server(HpodServicer(manager, options.limits), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME), server)
    _bind(server, address, options)
    gauges: asyncio.Task | None = None
    if options.metrics_port:
        metrics.serve(options.metrics_port, manager)
        gauges = asyncio.create_task(metrics.worker_loop(manager))
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("hpod server on %s (%s, redis %s)", address,
             "TLS" if options.tls else "plaintext", _redacted(settings.redis_url))
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
    if gauges is not None:
        gauges.cancel()
    if mirror is not None:
        await mirror.stop()
    await manager.stop()


def _optuna_mirror(manager: StudyManager, options: ServerOptions) -> LiveMirror | None:
    if not options.optuna_storage:
        return None
    try:
        return LiveMirror(manager, options.optuna_storage, options.optuna_mirror_interval)
    except ValueError as e:
        raise SystemExit(f"hpod server: {e}") from None


def _redacted(url: str) -> str:
    """A Redis URL without its password, for the log."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    return f"{scheme}{sep}{creds.split(':')[0]}:***{at}{host}" if at else url


def run(address: str, settings: Settings, options: ServerOptions | None = None) -> None:
    options = options or ServerOptions()
    logs.setup(options.log_format)
    asyncio.run(serve(address, settings, options=options))
