"""A sorted list with O(log n) insertion, rank and access by rank: what a rung of asynchronous
successive halving needs to decide a promotion without scanning the rung.

A plain list kept sorted with ``bisect.insort`` moves n/2 pointers per insertion (60 µs at
100,000 entries); here the values live in buckets of at most ``2 * LOAD`` sorted entries, with
the largest entry of each bucket to find the bucket by bisection and a Fenwick tree over the
bucket sizes to turn a position in a bucket into a rank and back.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from typing import Any

LOAD = 256


class SortedKeys:
    """Distinct, mutually comparable keys in increasing order (no removal: rungs only grow)."""

    def __init__(self, keys: Iterable[Any] = ()) -> None:
        ordered = sorted(keys)
        self._buckets = [ordered[i:i + LOAD] for i in range(0, len(ordered), LOAD)]
        self._len = len(ordered)
        self._reindex()

    def _reindex(self) -> None:
        self._maxes = [b[-1] for b in self._buckets]
        m = len(self._buckets)
        self._tree = [0] * (m + 1)
        for i, b in enumerate(self._buckets):
            self._grow(i, len(b))

    def _grow(self, i: int, delta: int) -> None:
        i += 1
        while i < len(self._tree):
            self._tree[i] += delta
            i += i & -i

    def _before(self, i: int) -> int:
        """How many keys the buckets before bucket i hold."""
        total = 0
        while i > 0:
            total += self._tree[i]
            i -= i & -i
        return total

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[Any]:
        for b in self._buckets:
            yield from b

    def add(self, key: Any) -> None:
        self._len += 1
        if not self._buckets:
            self._buckets.append([key])
            self._reindex()
            return
        i = bisect.bisect_left(self._maxes, key)
        if i == len(self._buckets):
            i -= 1
            self._buckets[i].append(key)
            self._maxes[i] = key
        else:
            bisect.insort(self._buckets[i], key)
        self._grow(i, 1)
        if len(self._buckets[i]) > 2 * LOAD:  # split, rarely: every LOAD insertions at most
            b = self._buckets[i]
            self._buckets[i:i + 1] = [b[:LOAD], b[LOAD:]]
            self._reindex()

    def bisect_left(self, key: Any) -> int:
        """The number of keys < ``key``."""
        i = bisect.bisect_left(self._maxes, key)
        if i == len(self._buckets):
            return self._len
        return self._before(i) + bisect.bisect_left(self._buckets[i], key)

    def __getitem__(self, rank: int) -> Any:
        """The key of rank ``rank`` (0 is the smallest)."""
        if not 0 <= rank < self._len:
            raise IndexError(rank)
        # Fenwick descent: the last bucket whose predecessors hold <= rank keys.
        pos, left, step = 0, rank, 1 << (len(self._tree) - 1).bit_length()
        while step:
            nxt = pos + step
            if nxt < len(self._tree) and self._tree[nxt] <= left:
                pos = nxt
                left -= self._tree[nxt]
            step >>= 1
        return self._buckets[pos][left]
