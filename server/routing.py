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
studies after the same page position and merges the pages; a study none of them holds in
memory (moving: its owner died, or the next owner is rebuilding it) is still listed, from its
hash in Redis, with a note in its plan saying so.
"""

from __future__ import annotations

import asyncio
import json
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
from .service import convert, pages
from .study import StudyConfig

log = logging.getLogger("hpod.server")

FORWARDED = "x-hpod-forwarded"  # metadata: the replica that forwarded this call
LOCAL_ONLY = "x-hpod-local-only"  # metadata: ListStudies of this replica's studies only
# How a listing marks a study no replica holds in memory (its plan shows only this note).
MOVING_NOTE = ("moving between server replicas (its owner stopped, or the next owner is "
               "rebuilding it): state and figures as of its last commit")
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
        position, and with the studies no replica listed (held in no replica's memory: their
        owner died and the lease has not expired, or the next owner is rebuilding them),
        shown from their hash in Redis: the first ``page_size`` of them by (creation time,
        id)."""
        peers = await self.m.ownership.peers()
        md = [(k, v) for k, v in self._metadata(context) if k != FORWARDED]
        md.append((LOCAL_ONLY, "1"))
        replies = await asyncio.gather(*[
            self._stub(addr).ListStudies(request, metadata=md, timeout=self._timeout(context))
            for _, addr in peers], return_exceptions=True)
        pages_in = [local]
        for (rid, _), reply in zip(peers, replies, strict=True):
            if isinstance(reply, BaseException):
                # A replica that died or went away meanwhile (or cancelled the call as it
                # stopped): its studies are moving, listed below from Redis. Any other
                # failure is the caller's to see.
                if isinstance(reply, grpc.aio.AioRpcError) and reply.code() in (
                        grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                        grpc.StatusCode.CANCELLED):
                    log.info("server replica %s did not answer a listing: its studies are "
                             "listed from Redis", rid)
                    continue
                raise reply
            pages_in.append(reply)
        studies = [st for p in pages_in for st in p.studies]
        # A replica whose page was cut has studies after its last one that nobody listed:
        # the merged page stops there, and the next page goes on from it.
        cuts = [_key(p.studies[-1]) for p in pages_in if p.next_page_token and p.studies]
        end = min(cuts) if cuts else None
        after = pages.after(request.page_token, "studies")
        start = tuple(after) if after is not None else None
        # One more than a page, so that a page they fill exactly still says more follow.
        studies += await self._unlisted({st.id for st in studies}, start, end,
                                        pages.size(request.page_size) + 1)
        studies.sort(key=_key)
        size = pages.size(request.page_size)
        page, total = [], 0
        more = end is not None
        for st in studies:
            total += st.ByteSize()
            if len(page) >= size or (page and total > pages.PAGE_BYTES) or (
                    end is not None and _key(st) > end):
                more = True
                break
            page.append(st)
        resp = pb.ListStudiesResponse(studies=page)
        if more and page:
            resp.next_page_token = pages.token("studies", list(_key(page[-1])))
        return resp

    async def _unlisted(self, listed: set[str], start: tuple | None, end: tuple | None,
                        size: int) -> list[pb.Study]:
        """The first ``size`` studies after ``start`` (up to ``end``) the caller may see that
        no replica listed, as their hashes in Redis show them, marked as moving."""
        store = self.m.store
        ids = [s for s in await store.study_ids() if s not in listed]
        rows = sorted((int(t * 1e9), sid) for sid, t in (await store.created_times(ids)).items()
                      if (start is None or (int(t * 1e9), sid) > start)
                      and (end is None or (int(t * 1e9), sid) <= end))
        out: list[pb.Study] = []
        for i in range(0, len(rows), size):  # until a page of them is visible to the caller
            chunk = [sid for _, sid in rows[i:i + size]]
            for sid, stored in (await store.study_hashes(chunk)).items():
                try:
                    config = StudyConfig.from_dict(json.loads(stored["config"]))
                except (ValueError, TypeError, KeyError):
                    continue  # a study whose config does not load is listed by its owner
                if tenancy.visible(config.tenant):
                    out.append(convert.stored_study_to_pb(sid, stored, MOVING_NOTE))
            if len(out) >= size:
                break
        return out


def _key(st: pb.Study) -> tuple[int, str]:
    return st.create_time.ToNanoseconds(), st.id


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
