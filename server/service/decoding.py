"""Malformed request bytes answered with INVALID_ARGUMENT naming the field, for every service.

gRPC decodes a request before any servicer code runs; a protobuf ``DecodeError`` there reaches
the client as ``UNKNOWN: Unexpected <class 'DecodeError'>``, and a huge request costs its
decoding before anything can refuse it. :class:`DecodingInterceptor`
wraps each method's deserializer so that a request that does not decode becomes a
:class:`Malformed` marker, and the method answers it with INVALID_ARGUMENT instead of running.
The message names the first field whose bytes are broken, found by walking the wire format
(https://protobuf.dev/programming-guides/encoding/) against the request's descriptor.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor


@dataclass(frozen=True)
class Malformed:
    """A request whose bytes did not decode (or were too many to try), and what is wrong."""

    message: str
    code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT


class _Truncated(Exception):
    pass


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data) or shift > 63:
            raise _Truncated
        b = data[pos]
        value |= (b & 0x7F) << shift
        pos += 1
        shift += 7
        if not b & 0x80:
            return value, pos


def _skip(data: bytes, pos: int, wire_type: int) -> tuple[int, bytes | None]:
    """Position after a field's value, and its payload when length-delimited."""
    if wire_type == 0:
        return _varint(data, pos)[1], None
    if wire_type in (1, 5):
        end = pos + (8 if wire_type == 1 else 4)
    elif wire_type == 2:
        n, pos = _varint(data, pos)
        end = pos + n
    else:  # groups (3, 4) are not proto3, 6 and 7 do not exist
        raise _Truncated
    if end > len(data):
        raise _Truncated
    return end, data[pos:end] if wire_type == 2 else None


def broken_field(data: bytes, desc: Descriptor, depth: int = 0) -> str | None:
    """Dotted path of the first field of ``desc`` whose bytes are broken, or None."""
    pos = 0
    while pos < len(data):
        try:
            tag, pos = _varint(data, pos)
        except _Truncated:
            return "(a field tag)"
        field = desc.fields_by_number.get(tag >> 3)
        label = field.name if field is not None else f"(field number {tag >> 3})"
        if tag >> 3 == 0:
            return "(field number 0)"
        try:
            pos, payload = _skip(data, pos, tag & 7)
        except _Truncated:
            return label
        if payload is None or field is None:
            continue
        if field.type == FieldDescriptor.TYPE_STRING:
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError:
                return label
        elif field.type == FieldDescriptor.TYPE_MESSAGE and depth < 64:
            inner = broken_field(payload, field.message_type, depth + 1)
            if inner is not None:
                return f"{label}.{inner}"
    return None


def describe(data: bytes, desc: Descriptor) -> str:
    where = broken_field(data, desc)
    field = f"field {where}" if where else "request"
    return (f"{field}: the request bytes are not a valid {desc.full_name} (malformed or "
            f"truncated protobuf); send a message serialised from the hpod .proto files")


def _safe(deserializer: Callable[[bytes], Any] | None, max_bytes: int
          ) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None
    desc = getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None)

    def decode(data: bytes) -> Any:
        # No request of this API is larger than a study spec: refuse more before parsing it
        # (a 10 MB name costs tens of milliseconds to decode and measure).
        if len(data) > max_bytes:
            return Malformed(f"request: is {len(data)} bytes; this server takes at most "
                             f"{max_bytes} per request", grpc.StatusCode.RESOURCE_EXHAUSTED)
        try:
            return deserializer(data)
        except Exception:  # protobuf's DecodeError, or a ValueError from a bad UTF-8 string
            if desc is None:
                return Malformed("request: the request bytes could not be decoded")
            return Malformed(describe(data, desc))

    return decode


def _guarded(behavior: Callable, streaming: bool) -> Callable:
    # A server-streaming method is an async generator (hpod's) or a coroutine that writes
    # through ``context.write`` (health's Watch); only the former is wrapped as a generator.
    if streaming and inspect.isasyncgenfunction(behavior):
        async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, Malformed):
                await context.abort(request.code, request.message)
            async for item in behavior(request, context):
                yield item

        return stream

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, Malformed):
            await context.abort(request.code, request.message)
        return await behavior(request, context)

    return unary


class DecodingInterceptor(grpc.aio.ServerInterceptor):
    """Unary-request methods (all of hpod's, and health checking) get a deserializer that
    never raises and refuses more than ``max_bytes``; streaming-request ones (reflection) are
    left as they are."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.request_streaming:
            return handler
        kw = {"request_deserializer": _safe(handler.request_deserializer, self.max_bytes),
              "response_serializer": handler.response_serializer}
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _guarded(handler.unary_stream, True), **kw)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _guarded(handler.unary_unary, False), **kw)
        return handler
