"""Token authentication for the gRPC port: a ``grpc.aio`` server interceptor.

A client sends ``authorization: Bearer <token>`` in the call metadata. The server knows only
the SHA-256 of each token, each mapped to a tenant and a role:

* ``user``: every RPC, on the studies of its own tenant;
* ``worker``: only the job calls (AskJob, ReportProgress, CompleteJob, FailJob), on its tenant's
  studies. (hpod's own workers talk to Redis, not gRPC; this role is for external trainers.)

Tokens file (``--tokens-file`` / ``HPOD_TOKENS_FILE``), one token a line, ``#`` comments::

    # sha256(token) hex                                               tenant   role
    9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08  team-a   user

``HPOD_TOKENS`` holds the same lines (newlines or ``;`` between entries) for a Secret mounted
as an environment variable. With no tokens configured, authentication is off. Make a token with
``python -m hpod.server.service.auth TENANT [ROLE]``: it prints the token (give it to the
client) and the line for the tokens file (keep it on the server).

Health checking and reflection need no token, so probes and ``grpcurl list`` keep working.
Ownership itself is checked in the study manager (see ``server/tenancy.py``): another tenant's
study is NOT_FOUND, exactly like a study that does not exist, so ids do not leak.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from .. import tenancy

ROLES = ("user", "worker")
WORKER_METHODS = frozenset({"AskJob", "ReportProgress", "CompleteJob", "FailJob"})
OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
HPOD_PREFIX = "/hpod.v1.Hpod/"
_TENANT = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


@dataclass(frozen=True)
class Principal:
    tenant: str
    role: str


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def parse_tokens(text: str, source: str = "tokens") -> dict[str, Principal]:
    """``{sha256 hex: Principal}`` from tokens-file lines; raises ValueError naming the line."""
    table: dict[str, Principal] = {}
    for n, raw in enumerate(re.split(r"[\n;]", text), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        digest, tenant = parts[0].lower(), parts[1] if len(parts) > 1 else ""
        role = parts[2] if len(parts) > 2 else "user"
        if len(parts) > 3 or not re.fullmatch(r"[0-9a-f]{64}", digest) \
                or not _TENANT.match(tenant) or role not in ROLES:
            raise ValueError(f"{source} entry {n}: expected '<sha256 hex> <tenant> [user|worker]'"
                             f" (tenant: letters, digits, . _ -), got {line[:80]!r}")
        table[digest] = Principal(tenant, role)
    return table


def load_tokens(path: str = "", env_text: str | None = None) -> dict[str, Principal]:
    """Tokens from the file and from ``HPOD_TOKENS``; empty when neither is set (auth off)."""
    table: dict[str, Principal] = {}
    if path:
        with open(path, encoding="utf-8") as f:
            table.update(parse_tokens(f.read(), path))
    text = os.environ.get("HPOD_TOKENS", "") if env_text is None else env_text
    if text.strip():
        table.update(parse_tokens(text, "HPOD_TOKENS"))
    return table


def _bearer(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


def _rejecting(handler: grpc.RpcMethodHandler, code: grpc.StatusCode,
               message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` that fails the call with ``code``."""

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)

    async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)
        yield  # pragma: no cover (makes this an async generator)

    kw = {"request_deserializer": handler.request_deserializer,
          "response_serializer": handler.response_serializer}
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(stream, **kw)
    return grpc.unary_unary_rpc_method_handler(unary, **kw)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, tokens: Mapping[str, Principal]) -> None:
        self.tokens = dict(tokens)

    def check(self, method: str, metadata: Any) -> tuple[Principal | None, grpc.StatusCode, str]:
        """The caller, or the status code and message that refuse the call."""
        token = _bearer(metadata)
        if token is None:
            return None, grpc.StatusCode.UNAUTHENTICATED, (
                "this server needs a token: send metadata 'authorization: Bearer <token>' "
                "(SDK: Client(address, token=...); CLI: HPOD_TOKEN)")
        who = self.tokens.get(hash_token(token))
        if who is None:
            return None, grpc.StatusCode.UNAUTHENTICATED, "the token is not valid on this server"
        name = method.removeprefix(HPOD_PREFIX)
        if who.role == "worker" and name not in WORKER_METHODS:
            return None, grpc.StatusCode.PERMISSION_DENIED, (
                f"a worker token may call only {', '.join(sorted(WORKER_METHODS))}, not {name}")
        return who, grpc.StatusCode.OK, ""

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_SERVICES):
            return handler
        who, code, message = self.check(details.method, details.invocation_metadata)
        if who is None:
            return _rejecting(handler, code, message)
        # grpc.aio runs the handler in the context the interceptors ran in, so the servicer and
        # the manager see the caller's tenant through this variable.
        tenancy.caller.set(who.tenant)
        return handler


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or len(args) > 2 or (len(args) == 2 and args[1] not in ROLES) \
            or not _TENANT.match(args[0]):
        print("usage: python -m hpod.server.service.auth TENANT [user|worker]", file=sys.stderr)
        return 2
    token = "hpod_" + secrets.token_urlsafe(32)
    role = args[1] if len(args) == 2 else "user"
    print(f"token (give to the client):  {token}")
    print(f"tokens-file line (server):   {hash_token(token)} {args[0]} {role}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
