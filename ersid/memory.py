"""
L{DictStorage}: the embedded default backend, a dict in the daemon's memory
made durable by snapshots (see L{ersid.snapshot}).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

import attrs
from sortedcontainers import SortedList
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from ersid.journal import Journal, JournalEntry
from ersid.storage import (
    DEFAULT_CONTENT_TYPE,
    IImmediateReads,
    IStorage,
    Page,
    Precondition,
    PreconditionFailed,
    Record,
    StorageUnavailable,
    WriteResult,
)

__all__ = ["DictStorage"]

_T = TypeVar("_T")


@attrs.define
class _ScanCursor:
    keys: list[str]
    position: int = 0


@implementer(IStorage, IImmediateReads)
class DictStorage:
    """
    Keep every record in a dict, with a sorted index of the keys for
    listing by prefix.
    """

    name = "dict"

    def __init__(
        self,
        records: dict[str, Record] | Iterable[tuple[str, Record]] = (),
        revision: int = 0,
        journal: Journal | None = None,
    ) -> None:
        self.journal = journal
        # A dict is taken as it is, not copied: a restart hands over millions.
        self._records = records if isinstance(records, dict) else dict(records)
        self._sorted_keys = SortedList(self._records)
        self._revision = max(
            [revision, *(record.version for record in self._records.values())]
        )
        self._closed = False

    def __repr__(self) -> str:
        return f"<DictStorage: {len(self._records)} keys, revision {self._revision}>"

    def _writable(self, key: str, precondition: Precondition | None) -> Record | None:
        """
        The key's current record, once sure that a write to it may proceed.
        """
        if self._closed:
            raise StorageUnavailable("the server is shutting down")
        current = self._records.get(key)
        if precondition is not None and not precondition.holds(current):
            raise PreconditionFailed(key, current)
        return current

    def _journaled(
        self, key: str, record: Record | None, previous: Record | None, result: _T
    ) -> Deferred[_T]:
        """
        C{result} once the change just made is in the journal, if there is
        one; if it cannot be written, the change is undone.
        """
        if self.journal is None:
            return succeed(result)
        entry = JournalEntry(self._revision, key, record)
        return self.journal.append(entry, lambda: self._restore(key, previous), result)

    def _restore(self, key: str, previous: Record | None) -> None:
        present = key in self._records
        if previous is None:
            if present:
                del self._records[key]
                self._sorted_keys.remove(key)
        else:
            if not present:
                self._sorted_keys.add(key)
            self._records[key] = previous

    def get(self, key: str) -> Deferred[Record | None]:
        return succeed(self._records.get(key))

    def get_now(self, key: str) -> Record | None:
        return self._records.get(key)

    def set(
        self,
        key: str,
        value: bytes,
        content_type: str = DEFAULT_CONTENT_TYPE,
        precondition: Precondition | None = None,
    ) -> Deferred[WriteResult]:
        try:
            current = self._writable(key, precondition)
        except (StorageUnavailable, PreconditionFailed):
            return fail()
        self._revision += 1
        record = self._records[key] = Record(value, content_type, self._revision)
        if current is None:
            self._sorted_keys.add(key)
        result = WriteResult(self._revision, created=current is None)
        return self._journaled(key, record, current, result)

    def delete(
        self, key: str, precondition: Precondition | None = None
    ) -> Deferred[bool]:
        try:
            current = self._writable(key, precondition)
        except (StorageUnavailable, PreconditionFailed):
            return fail()
        if current is None:
            return succeed(False)
        self._revision += 1
        del self._records[key]
        self._sorted_keys.remove(key)
        return self._journaled(key, None, current, True)

    def keys(
        self, prefix: str = "", after: str | None = None, limit: int = 100
    ) -> Deferred[list[str]]:
        start = prefix if after is None or after < prefix else after
        matching: list[str] = []
        for key in self._sorted_keys.irange(minimum=start):
            if len(matching) == limit or not key.startswith(prefix):
                break
            if key != after:
                matching.append(key)
        return succeed(matching)

    def stats(self) -> Deferred[tuple[int, int]]:
        return succeed((len(self._records), self._revision))

    def records(self) -> Iterable[tuple[str, Record]]:
        """
        Every record as it is now, for a forked snapshot writer, whose copy
        of the store cannot change under it; nothing else should use it.
        """
        return self._records.items()

    def scan(self, cursor: object | None = None, limit: int = 1000) -> Deferred[Page]:
        if cursor is None:
            cursor = _ScanCursor(list(self._records))
        assert isinstance(cursor, _ScanCursor)
        end = cursor.position + limit
        batch = cursor.keys[cursor.position : end]
        cursor.position = end
        records = self._records
        items = [(key, records[key]) for key in batch if key in records]
        more = end < len(cursor.keys)
        return succeed(Page(items, cursor if more else None))

    def close(self) -> Deferred[None]:
        """
        Refuse further writes; reads and scans go on working, so that a last
        snapshot can still be taken.
        """
        self._closed = True
        return succeed(None)
