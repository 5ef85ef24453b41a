"""
The history of recent changes that watchers are served from: a window of
the latest L{Change}s, bounded by count and bytes, complete after its
C{floor} revision.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterator
from operator import itemgetter
from typing import Any

from ersid.snapshots.format import encode_value
from ersid.storage import DEFAULT_CONTENT_TYPE

__all__ = [
    "DEFAULT_HISTORY_BYTES",
    "DEFAULT_HISTORY_CHANGES",
    "Batch",
    "Change",
    "History",
    "HistoryGone",
    "event",
]

DEFAULT_HISTORY_CHANGES = 100_000
DEFAULT_HISTORY_BYTES = 64 * 1024 * 1024

# What a change costs beyond its key and value: the object and its slots.
_OVERHEAD = 120


def _size(key: str, value: bytes | None) -> int:
    return _OVERHEAD + len(key) + len(value or b"")


class Change:
    """
    One acknowledged change at its revision: a put, with its value, content
    type and expiry (Unix time, or C{None}); or a removal (C{value}
    C{None}), a delete or, if C{expired}, an expiry.
    """

    __slots__ = ("content_type", "expired", "expires", "key", "revision", "value")

    def __init__(
        self,
        revision: int,
        key: str,
        value: bytes | None,
        content_type: str = DEFAULT_CONTENT_TYPE,
        expires: float | None = None,
        expired: bool = False,
    ) -> None:
        self.revision = revision
        self.key = key
        self.value = value
        self.content_type = content_type
        self.expires = expires
        self.expired = expired

    def __repr__(self) -> str:
        return f"<Change {self.revision} {self.kind} {self.key!r}>"

    @property
    def kind(self) -> str:
        if self.value is None:
            return "expire" if self.expired else "delete"
        return "put"

    @property
    def size(self) -> int:
        """Roughly what it takes in memory, for the history's bound."""
        return _size(self.key, self.value)

    def document(self, values: bool) -> dict[str, Any]:
        """The event's JSON object; with the value if C{values}."""
        data: dict[str, Any] = {
            "type": self.kind,
            "key": self.key,
            "revision": self.revision,
        }
        if self.value is not None:
            data["content_type"] = self.content_type
            if self.expires is not None:
                data["expires"] = self.expires
            if values:
                data["value"] = encode_value(self.value)
        return data

    def sse(self, values: bool) -> bytes:
        """The change as a Server-Sent Event."""
        return event(self.kind, self.document(values), self.revision)


class Batch:
    """
    Changes published together that a group of watchers (those of one
    prefix) are told of at once: their events are made once for all.
    """

    __slots__ = ("_events", "changes", "size")

    def __init__(self, changes: list[Change]) -> None:
        self.changes = changes
        self.size = sum(change.size for change in changes)
        self._events: list[bytes | None] = [None, None]

    @property
    def first(self) -> int:
        return self.changes[0].revision

    @property
    def last(self) -> int:
        return self.changes[-1].revision

    def sse(self, values: bool) -> bytes:
        """The changes as Server-Sent Events, one after another."""
        made = self._events[values]
        if made is None:
            made = self._events[values] = b"".join(
                [change.sse(values) for change in self.changes]
            )
        return made


def event(name: str, data: dict[str, Any], revision: int | None = None) -> bytes:
    """A Server-Sent Event; with an C{id:}, a client can resume after it."""
    line = json.dumps(data, separators=(",", ":")).encode("utf-8")
    head = b"" if revision is None else b"id: %d\n" % (revision,)
    return head + b"event: " + name.encode("ascii") + b"\ndata: " + line + b"\n\n"


class HistoryGone(Exception):
    """
    The changes after a revision are no longer all in the history: the
    client must list the keys again, then watch from the listing's revision.
    """

    def __init__(self, since: int, oldest: int, revision: int) -> None:
        why = (
            f"revision {since} is past the store's, {revision} (a crash lost it)"
            if since > revision
            else f"the changes after revision {since} are no longer kept; the "
            f"history starts after revision {oldest}, and the store is at {revision}"
        )
        super().__init__(
            f"{why}: list the keys again and watch from the listing's revision"
        )
        self.since = since
        self.oldest = oldest
        self.revision = revision


class History:
    """
    The latest changes, in revision order: every change after C{floor} up
    to C{revision} is here (revisions taken by refused writes leave gaps,
    which are not changes). The oldest leave first, to stay within
    C{max_changes} and C{max_bytes}.
    """

    def __init__(
        self,
        floor: int = 0,
        max_changes: int = DEFAULT_HISTORY_CHANGES,
        max_bytes: int = DEFAULT_HISTORY_BYTES,
    ) -> None:
        self.floor = self.revision = floor
        self.max_changes = max_changes
        self.max_bytes = max_bytes
        self.bytes = 0
        # A list with a moving start: indexed and bisected in constant and
        # logarithmic time, and shortened now and then, not at every change.
        # Each change is kept as a tuple of its fields: a tuple of numbers,
        # text and bytes is left out of the garbage collector's walks, where
        # a hundred thousand objects would make each full pass a stall.
        self._changes: list[_Kept | None] = []
        self._start = 0

    def __len__(self) -> int:
        return len(self._changes) - self._start

    def append(self, change: Change) -> None:
        """Add the newest change, and let the oldest go if need be."""
        self._changes.append(
            (
                change.revision,
                change.key,
                change.value,
                change.content_type,
                change.expires,
                change.expired,
            )
        )
        self.revision = change.revision
        self.bytes += change.size
        while len(self) > self.max_changes or (
            self.bytes > self.max_bytes and len(self) > 1
        ):
            self._drop_oldest()

    def advance(self, revision: int) -> None:
        """Revisions up to C{revision} not appended are no changes (refused)."""
        self.revision = max(self.revision, revision)

    def _drop_oldest(self) -> None:
        oldest = self._changes[self._start]
        assert oldest is not None
        self._changes[self._start] = None
        self._start += 1
        self.floor = oldest[0]
        self.bytes -= _size(oldest[1], oldest[2])
        if self._start > 1024 and self._start * 2 > len(self._changes):
            del self._changes[: self._start]
            self._start = 0

    def restart(self, floor: int) -> None:
        """Forget every change: the history is complete only after C{floor}."""
        self._changes = []
        self._start = 0
        self.bytes = 0
        self.floor = self.revision = floor

    def check(self, since: int) -> None:
        """@raise HistoryGone: unless every change after C{since} is here."""
        if since < self.floor:
            raise HistoryGone(since, self.floor, self.revision)

    def after(self, since: int, prefix: str = "") -> Iterator[Change]:
        """
        The changes after C{since} to keys starting with C{prefix}.

        @raise HistoryGone: if some of them are no longer here.
        """
        self.check(since)
        changes = self._changes
        # Bisection starts at the first change kept: it never meets a None.
        start = bisect.bisect_right(changes, since, lo=self._start, key=_revision)
        for position in range(start, len(changes)):
            kept = changes[position]
            assert kept is not None
            if kept[1].startswith(prefix):
                yield Change(*kept)


_revision = itemgetter(0)
# A change as the history keeps it: Change's fields, in its order.
_Kept = tuple[int, str, bytes | None, str, float | None, bool]
