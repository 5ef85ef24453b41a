"""
L{ExpiryIndex}: which keys expire when, for the dict backend's reaper.

Keys are kept in buckets of C{resolution} seconds, each one C{bytearray} of
the keys in UTF-8, each ended by C{0xFF} (a byte UTF-8 never uses): a key
costs its length and one byte, where a heap of (time, key) entries would
cost some 100 bytes. A key's entry is not removed when it is rewritten or
deleted; the reaper checks the record it finds, and skips the stale.
"""

from __future__ import annotations

import heapq
import math

__all__ = ["ExpiryIndex"]


class ExpiryIndex:
    """
    Keys by the bucket of their expiry time, handed out a key at a time
    once a bucket's whole span has passed.

    @ivar pending: entries not yet handed out, stale ones included.
    """

    def __init__(self, resolution: float) -> None:
        self._resolution = resolution
        self._buckets: dict[int, bytearray] = {}
        self._due: list[int] = []
        self._reading = bytearray()
        self._offset = 0
        self.pending = 0

    def add(self, key: str, expires: float) -> None:
        """Note that C{key} expires at Unix time C{expires}."""
        slot = math.floor(expires / self._resolution)
        if (slot + 1) * self._resolution <= expires:
            slot += 1  # rounded into the bucket before: it would come early
        bucket = self._buckets.get(slot)
        if bucket is None:
            bucket = self._buckets[slot] = bytearray()
            heapq.heappush(self._due, slot)
        bucket += key.encode("utf-8", "surrogatepass")
        bucket.append(0xFF)
        self.pending += 1

    def next_due(self, now: float) -> str | None:
        """
        A key whose bucket ended by Unix time C{now}, or C{None} if no more
        are: all of them expire by C{now}, unless rewritten since.
        """
        if self._offset == len(self._reading):
            due = self._due
            if not due or (due[0] + 1) * self._resolution > now:
                return None
            self._reading = self._buckets.pop(heapq.heappop(due))
            self._offset = 0
        end = self._reading.index(0xFF, self._offset)
        key = self._reading[self._offset : end].decode("utf-8", "surrogatepass")
        self._offset = end + 1
        self.pending -= 1
        return key
