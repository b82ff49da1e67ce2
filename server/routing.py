"""Any replica answers any call: a call about a study another replica owns is forwarded to it.

Only the owner of a study holds it in memory and may change it (``server/ownership.py``), so a
call naming a study this replica does not own goes, unchanged and with the caller's metadata
(its token: the owner checks it again), to the owner found through the study's lease and the
replica registry. A forwarded call carries ``x-hpod-forwarded``; a replica that receives one
for a study it does not own answers UNAVAILABLE instead of forwarding again (the lease moved
meanwhile: the client retries), so a call is forwarded at most once. A study with no live
owner (its replica died, the lease has not expired yet, or the next owner is rebuilding it)
answers UNAVAILABLE with a retry hint, which the SDK follows for reads.

``ListStudies`` is the one call about many studies: it asks every live replica for its own
studies after the same page position and merges the pages.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from hpod.v1 import hpod_pb2 as pb
from hpod.v1 import hpod_pb2_grpc as pb_grpc

from . import tenancy
from .engine import EngineError
from .manager import StudyManager
from .options import ServerOptions
from .service import pages

log = logging.getLogger("hpod.server")

FORWARDED = "x-hpod-forwarded"  # metadata: the replica that forwarded this call
LOCAL_ONLY = "x-hpod-local-only"  # metadata: ListStudies of this replica's studies only
FORWARD_TIMEOUT = 30.0  # seconds, when the caller set no deadline
# Metadata that belongs to the hop, not to the call.
_HOP = {"content-type", "user-agent", "te", "grpc-accept-encoding", "accept-encoding",
        "grpc-timeout", "grpc-encoding", "host"}


def _moving(sid: str) -> EngineError:
    return EngineError("unavailable", f"study {sid} is moving between server replicas (its "
                       "owner stopped or is handing it over); retry in a moment")


def peer_credentials(options: ServerOptions) -> tuple[grpc.ChannelCredentials | None, str]:
    """How a replica calls its peers: plaintext, or with TLS on the gRPC port the way the
    health checker does (``server/healthcheck.py``): trusting ``HPOD_TLS_CA`` (default the
    server's own certificate), expecting the name ``HPOD_TLS_SERVER_NAME`` (every replica
    serves the same certificate), and under mutual TLS presenting ``HPOD_TLS_CLIENT_CERT``/
    ``KEY`` or else the server's own pair."""
    if options.tls is None:
        return None, ""

    def read(path: str) -> bytes | None:
        return Path(path).read_bytes() if path else None

    mutual = bool(options.tls.client_ca)
    key = os.environ.get("HPOD_TLS_CLIENT_KEY") or (options.tls.key if mutual else "")
    cert = os.environ.get("HPOD_TLS_CLIENT_CERT") or (options.tls.cert if mutual else "")
    creds = grpc.ssl_channel_credentials(read(os.environ.get("HPOD_TLS_CA", ""))
                                         or read(options.tls.cert), read(key), read(cert))
    return creds, os.environ.get("HPOD_TLS_SERVER_NAME", "localhost")


class Router:
    def __init__(self, manager: StudyManager, credentials: grpc.ChannelCredentials | None = None,
                 server_name: str = "") -> None:
        self.m = manager
        self._credentials = credentials
        self._options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
        self._channels: dict[str, grpc.aio.Channel] = {}

    def _stub(self, address: str) -> pb_grpc.HpodStub:
        ch = self._channels.get(address)
        if ch is None:
            ch = self._channels[address] = (
                grpc.aio.secure_channel(address, self._credentials, options=self._options)
                if self._credentials is not None else grpc.aio.insecure_channel(address))
        return pb_grpc.HpodStub(ch)

    async def close(self) -> None:
        for ch in self._channels.values():
            await ch.close()
        self._channels.clear()

    def _metadata(self, context: Any) -> list[tuple[str, str]]:
        md = [(k, v) for k, v in context.invocation_metadata() or ()
              if not k.startswith(":") and k not in _HOP and k != FORWARDED]
        return [*md, (FORWARDED, self.m.settings.consumer)]

    @staticmethod
    def _timeout(context: Any) -> float:
        left = context.time_remaining()
        return FORWARD_TIMEOUT if left is None else max(0.1, left)

    async def owner_address(self, sid: str, context: Any) -> str | None:
        found = await self._owner(sid, context)
        return None if found is None else found[1]

    async def _owner(self, sid: str, context: Any) -> tuple[str, str] | None:
        """The address to forward a call about ``sid`` to, or None to answer here (owned
        here, or no such study: answered NOT_FOUND here)."""
        if not sid or self.m.is_local(sid):
            return None
        forwarded = any(k == FORWARDED for k, _ in context.invocation_metadata() or ())
        owner = await self.m.ownership.owner_of(sid)
        if owner is None or owner[0] == self.m.settings.consumer or not owner[1]:
            tenant = await self.m.store.study_tenant(sid)
            # Another tenant's study is answered here, NOT_FOUND, like a missing one.
            if tenant is not None and tenancy.visible(tenant):
                raise _moving(sid)
            return None
        if forwarded:
            raise _moving(sid)
        return owner

    async def unary(self, method: str, request: Any, context: Any) -> Any:
        """Forward a unary call to the study's owner; returns None to answer it here."""
        sid = getattr(request, "study_id", "")
        owner = await self._owner(sid, context)
        if owner is None:
            return None
        try:
            return await getattr(self._stub(owner[1]), method)(
                request, metadata=self._metadata(context), timeout=self._timeout(context))
        except grpc.aio.AioRpcError as e:
            await context.abort(_code(e), _details(e, sid, owner))

    async def stream(self, method: str, request: Any, context: Any
                     ) -> AsyncIterator[Any] | None:
        """The owner's response stream for a streaming call, or None to answer it here."""
        address = await self.owner_address(getattr(request, "study_id", ""), context)
        if address is None:
            return None
        return self._relay(getattr(self._stub(address), method)(
            request, metadata=self._metadata(context)), context)

    async def _relay(self, call: Any, context: Any) -> AsyncIterator[Any]:
        try:
            async for item in call:
                yield item
        except grpc.aio.AioRpcError as e:
            await context.abort(_code(e), e.details() or "")
        finally:
            call.cancel()

    # ---------------------------------------------------------------- ListStudies

    def local_only(self, context: Any) -> bool:
        return any(k == LOCAL_ONLY for k, _ in context.invocation_metadata() or ())

    async def list_studies(self, request: pb.ListStudiesRequest, context: Any,
                           local: pb.ListStudiesResponse) -> pb.ListStudiesResponse:
        """Merge this replica's page with every other live replica's page after the same
        position: the first ``page_size`` of them by (creation time, id)."""
        peers = await self.m.ownership.peers()
        if not peers:
            return local
        md = [(k, v) for k, v in self._metadata(context) if k != FORWARDED]
        md.append((LOCAL_ONLY, "1"))
        replies = await asyncio.gather(*[
            self._stub(addr).ListStudies(request, metadata=md, timeout=self._timeout(context))
            for _, addr in peers], return_exceptions=True)
        studies = list(local.studies)
        more = bool(local.next_page_token)
        for (rid, _), reply in zip(peers, replies, strict=True):
            if isinstance(reply, BaseException):
                # A replica that went away meanwhile (or cancelled the call as it stopped):
                # its studies are moving and come back with their next owner. Any other
                # failure is the caller's to see.
                if isinstance(reply, grpc.aio.AioRpcError) and reply.code() in (
                        grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                        grpc.StatusCode.CANCELLED):
                    raise _unavailable_listing(rid) from None
                raise reply
            studies += reply.studies
            more = more or bool(reply.next_page_token)
        studies.sort(key=lambda st: (st.create_time.ToNanoseconds(), st.id))
        size = pages.size(request.page_size)
        page, total = [], 0
        for st in studies:
            total += st.ByteSize()
            if len(page) >= size or (page and total > pages.PAGE_BYTES):
                more = True
                break
            page.append(st)
        resp = pb.ListStudiesResponse(studies=page)
        if more and page:
            last = page[-1]
            resp.next_page_token = pages.token(
                "studies", [last.create_time.ToNanoseconds(), last.id])
        return resp


def _unavailable_listing(rid: str) -> EngineError:
    return EngineError("unavailable", f"server replica {rid} did not answer while listing "
                       "studies (it may be restarting); retry in a moment")


def _details(e: grpc.aio.AioRpcError, sid: str, owner: tuple[str, str]) -> str:
    """The owner's message; when the owner itself could not be reached, says so and what
    happens next (its lease expires and another replica takes the study)."""
    text = e.details() or ""
    if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED) and (
            "connect" in text or "Socket closed" in text or not text):
        return (f"study {sid} is owned by server replica {owner[0]} ({owner[1]}), which does "
                "not answer; another replica takes the study once its lease expires: retry in "
                f"a moment ({text[:200]})")
    return text


def _code(e: grpc.aio.AioRpcError) -> grpc.StatusCode:
    """The owner's status, except that an owner gone mid-call is UNAVAILABLE (retryable)."""
    code = e.code()
    return grpc.StatusCode.UNAVAILABLE if code == grpc.StatusCode.CANCELLED else code
