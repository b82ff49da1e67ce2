"""Paged listings: page sizes and opaque page tokens for ListStudies and ListTrials.

A token names the last item of the page it ends, in the listing's own stable order (studies by
creation time and id, trials by id), so items created while a client pages come last and no
page repeats or skips one.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from typing import Any

from .checks import invalid

PAGE_DEFAULT = 100  # ListStudies / ListTrials page size when the request gives none
PAGE_MAX = 1000  # and the most one page holds
MAX_TOKEN = 512
# A page holds at most this many bytes of messages, so that a page of large specs or long
# learning curves stays below the 4 MiB a gRPC client accepts by default.
PAGE_BYTES = 3 * 1024 * 1024


def size(requested: int) -> int:
    """The page size to use for a request's ``page_size``."""
    if requested < 0:
        raise invalid("page_size", f"must be >= 0 (0: {PAGE_DEFAULT}), got {requested}")
    return min(requested or PAGE_DEFAULT, PAGE_MAX)


def fill(keys: list[Any], most: int, build: Callable[[Any], Any]) -> tuple[list[Any], Any]:
    """Messages for the first keys, at most ``most`` of them and at most PAGE_BYTES (but at
    least one), and the key of the last one when more remain (None on the last page)."""
    out, total = [], 0
    for key in keys[:most]:
        msg = build(key)
        total += msg.ByteSize()
        if out and total > PAGE_BYTES:
            break
        out.append(msg)
    return out, keys[len(out) - 1] if len(out) < len(keys) else None


def token(kind: str, after: list[Any]) -> str:
    """An opaque page token: where the next page starts, in the listing's own order."""
    raw = json.dumps({"k": kind, "a": after}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def after(given: str, kind: str) -> list[Any] | None:
    """The position a page token names, or None for the first page; INVALID_ARGUMENT for a
    token this listing did not hand out."""
    if not given:
        return None
    bad = invalid("page_token", "is not a next_page_token this listing returned; "
                  "start again with an empty page_token")
    if len(given) > MAX_TOKEN:
        raise bad
    try:
        data = json.loads(base64.urlsafe_b64decode(given + "=" * (-len(given) % 4)))
    except (binascii.Error, ValueError):
        raise bad from None
    if not isinstance(data, dict) or data.get("k") != kind or not isinstance(data.get("a"), list):
        raise bad
    return data["a"]
