"""Run the hpod gRPC server: the study service, health checking and reflection."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import socket
import sys

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from hpod.v1 import hpod_pb2 as pb
from hpod.v1 import hpod_pb2_grpc as pb_grpc

from . import logs, metrics
from .manager import Settings, StudyManager
from .options import ServerOptions
from .optuna_live import LiveMirror
from .routing import Router, peer_credentials
from .service.auth import AuthInterceptor, load_tokens
from .service.decoding import DecodingInterceptor
from .service.servicer import HpodServicer

log = logging.getLogger("hpod.server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Hpod"].full_name
PROBE_SECONDS = 1.0  # how often health checking asks Redis
PROBE_TIMEOUT = 0.5  # a PING slower than this counts as Redis unreachable


def _interceptors(options: ServerOptions) -> list[grpc.aio.ServerInterceptor]:
    tokens = load_tokens(options.tokens_file)
    chain: list[grpc.aio.ServerInterceptor] = [metrics.MetricsInterceptor()]
    if tokens:
        chain.append(AuthInterceptor(tokens))
    # Decoding innermost: the others wrap the handler it returns, so metrics count a malformed
    # request and the token check's refusal decodes with its deserializer, which never raises.
    # A request is at most a study spec and a little more (the rest of any request is ids).
    chain.append(DecodingInterceptor(options.limits.max_spec_bytes + 64 * 1024))
    log.info("token authentication %s", f"on ({len(tokens)} tokens)" if tokens else "off")
    return chain


def _warn_if_exposed(address: str, options: ServerOptions) -> None:
    """Say loudly, on stderr and in the log, when anyone on the network could drive the
    server: authentication off on a non-loopback address."""
    from hpod.client.safety import insecure_bind_warning

    warning = insecure_bind_warning(address, bool(load_tokens(options.tokens_file)))
    if warning:
        log.warning(warning)
        print(warning, file=sys.stderr, flush=True)


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
    settings = _replica_settings(settings, address, options)
    try:
        manager = StudyManager(settings)
    except ValueError as e:  # a URL naming what a Redis Cluster does not have
        raise SystemExit(f"hpod server: --redis-url: {e}") from None
    mirror = _optuna_mirror(manager, options)  # a bad URL stops here, before anything runs
    await manager.start()
    if mirror is not None:
        mirror.start()
    server = grpc.aio.server(interceptors=_interceptors(options),
                             options=[("grpc.max_receive_message_length", size),
                                      ("grpc.max_send_message_length", size)])
    servicer = HpodServicer(manager, options.limits)
    servicer.router = Router(manager, *peer_credentials(options))
    pb_grpc.add_HpodServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME), server)
    _bind(server, address, options)
    _warn_if_exposed(address, options)
    gauges: asyncio.Task | None = None
    if options.metrics_port:
        metrics.serve(options.metrics_port, manager)
        gauges = asyncio.create_task(metrics.worker_loop(manager))
    await server.start()
    await _set_health(health_servicer, True)
    probe = asyncio.create_task(_follow_redis(manager, servicer, health_servicer),
                                name="health")
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
    probe.cancel()
    await health_servicer.enter_graceful_shutdown()
    # Studies go to the other replicas first; calls still arriving are forwarded to them.
    await manager.drain()
    # Calls in flight get as long as a client usually waits for them (a forwarded call, a
    # read behind a study's input): cut short, they would end CANCELLED, not UNAVAILABLE.
    await server.stop(grace=10)
    await servicer.router.close()
    if gauges is not None:
        gauges.cancel()
    if mirror is not None:
        await mirror.stop()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(manager.store.close_probe(), 2)
    await manager.stop()


async def _set_health(health_servicer: health.aio.HealthServicer, serving: bool) -> None:
    status = (health_pb2.HealthCheckResponse.SERVING if serving
              else health_pb2.HealthCheckResponse.NOT_SERVING)
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, status)


async def _follow_redis(manager: StudyManager, servicer: HpodServicer,
                        health_servicer: health.aio.HealthServicer) -> None:
    """Health checking says NOT_SERVING while Redis does not answer, SERVING again once it
    does: a probe every PROBE_SECONDS with a timeout of its own, so a load balancer or
    Kubernetes stops sending work to a server that cannot store it. Two failed probes in a row
    flip it (one slow PING on a loaded machine does not); one answer flips it back. Meanwhile
    the servicer answers writes UNAVAILABLE at once instead of letting them wait on Redis."""
    serving, failures = True, 0
    while True:
        await asyncio.sleep(PROBE_SECONDS)
        try:
            ok = await manager.store.probe(PROBE_TIMEOUT)
        except asyncio.CancelledError:
            raise
        except Exception:  # the probe must never stop: count any failure as unreachable
            log.exception("Redis health probe failed")
            ok = False
        failures = 0 if ok else failures + 1
        if serving and failures >= 2 or not serving and ok:
            serving = ok
            servicer.store_reachable = ok
            await _set_health(health_servicer, ok)
            if ok:
                log.info("Redis answers again: health SERVING")
            else:
                log.warning("Redis did not answer %d probes of %gs: health NOT_SERVING",
                            failures, PROBE_TIMEOUT)


def _optuna_mirror(manager: StudyManager, options: ServerOptions) -> LiveMirror | None:
    if not options.optuna_storage:
        return None
    try:
        return LiveMirror(manager, options.optuna_storage, options.optuna_mirror_interval)
    except ValueError as e:
        raise SystemExit(f"hpod server: {e}") from None


def _replica_settings(settings: Settings, address: str, options: ServerOptions) -> Settings:
    """This replica's id, the address peers forward to, its study lease, and the server
    options that tune the study runtime."""
    host, _, port = address.rpartition(":")
    wildcard = host in ("", "0.0.0.0", "::", "[::]")
    advertise = options.advertise_address or (
        f"{socket.gethostname()}:{port}" if wildcard else address)
    replica = options.replica_id or f"{socket.gethostname()}:{port}"
    return dataclasses.replace(settings, consumer=replica, advertise_address=advertise,
                               study_lease_seconds=options.study_lease_seconds,
                               suggestion_buffer=options.suggestion_buffer)


def _redacted(url: str) -> str:
    """A Redis URL without its password, for the log."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    return f"{scheme}{sep}{creds.split(':')[0]}:***{at}{host}" if at else url


def run(address: str, settings: Settings, options: ServerOptions | None = None) -> None:
    options = options or ServerOptions()
    logs.setup(options.log_format)
    asyncio.run(serve(address, settings, options=options))
