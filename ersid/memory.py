"""
L{DictStorage}: the embedded default backend, a dict in the daemon's memory
made durable by snapshots (see L{ersid.snapshot}) and the journal.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from typing import TypeVar

import attrs
from sortedcontainers import SortedList
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from ersid.journal import Journal, encode_delete, encode_set
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

__all__ = ["DictStorage", "PackedRecords"]

_T = TypeVar("_T")
_HEADER = struct.Struct(">QH")
_DEFAULT_TYPE = 0xFFFF


def _pack(version: int, content_type: str, value: bytes) -> bytes:
    """
    One bytes object: version, content type (its length, or C{0xFFFF} for
    the default) and value.
    """
    if content_type == DEFAULT_CONTENT_TYPE:
        return _HEADER.pack(version, _DEFAULT_TYPE) + value
    type_bytes = content_type.encode("utf-8")
    if len(type_bytes) >= _DEFAULT_TYPE:
        raise ValueError("the content type is too long")
    return b"".join([_HEADER.pack(version, len(type_bytes)), type_bytes, value])


def _unpack(packed: bytes) -> Record:
    version, type_length = _HEADER.unpack_from(packed)
    if type_length == _DEFAULT_TYPE:
        return Record(packed[_HEADER.size :], DEFAULT_CONTENT_TYPE, version)
    start = _HEADER.size + type_length
    content_type = packed[_HEADER.size : start].decode("utf-8")
    return Record(packed[start:], content_type, version)


class PackedRecords(MutableMapping[str, Record]):
    """
    Records by key, each kept packed in one bytes object rather than as a
    L{Record} with its version: at a million keys that is 100 MB less.

    @ivar highest_version: the highest version stored through this mapping
        (a L{DictStorage} given it writes past it), which the store's
        revision must not fall below.
    """

    def __init__(
        self, records: Mapping[str, Record] | Iterable[tuple[str, Record]] = ()
    ) -> None:
        self._packed: dict[str, bytes] = {}
        self.highest_version = 0
        self.update(records)

    def __getitem__(self, key: str) -> Record:
        return _unpack(self._packed[key])

    def __setitem__(self, key: str, record: Record) -> None:
        self.put(key, record.value, record.content_type, record.version)

    def put(self, key: str, value: bytes, content_type: str, version: int) -> None:
        """
        Store a record given as its parts, building no L{Record}: a restart
        does this a million times.

        @raise ValueError: if the content type cannot be packed.
        @raise struct.error: if the version is not a 64-bit unsigned number.
        """
        self._packed[key] = _pack(version, content_type, value)
        if version > self.highest_version:
            self.highest_version = version

    def __delitem__(self, key: str) -> None:
        del self._packed[key]

    def __contains__(self, key: object) -> bool:
        return key in self._packed

    def __iter__(self) -> Iterator[str]:
        return iter(self._packed)

    def __len__(self) -> int:
        return len(self._packed)


@attrs.define
class _ScanCursor:
    keys: list[str]
    position: int = 0


@implementer(IStorage, IImmediateReads)
class DictStorage:
    """
    Keep every record in a dict, packed (see L{PackedRecords}), with a
    sorted index of the keys for listing by prefix.
    """

    name = "dict"

    def __init__(
        self,
        records: Mapping[str, Record] | Iterable[tuple[str, Record]] = (),
        revision: int = 0,
        journal: Journal | None = None,
    ) -> None:
        self.journal = journal
        # Packed records are taken as they are, not copied: a restart hands
        # over millions.
        if not isinstance(records, PackedRecords):
            records = PackedRecords(records)
        self._packed = records._packed
        self._sorted_keys = SortedList(self._packed)
        self._revision = max(revision, records.highest_version)
        self._closed = False

    def __repr__(self) -> str:
        return f"<DictStorage: {len(self._packed)} keys, revision {self._revision}>"

    def _writable(self, key: str, precondition: Precondition | None) -> bytes | None:
        """
        The key's current record, packed, once sure that a write to it may
        proceed.
        """
        if self._closed:
            raise StorageUnavailable("the server is shutting down")
        packed = self._packed.get(key)
        if precondition is not None:
            current = None if packed is None else _unpack(packed)
            if not precondition.holds(current):
                raise PreconditionFailed(key, current)
        return packed

    def _journaled(
        self, entry: bytes | None, key: str, previous: bytes | None, result: _T
    ) -> Deferred[_T]:
        """
        C{result} once the change just made, encoded as C{entry}, is in the
        journal, if there is one; if it cannot be written, the change is
        undone.
        """
        if self.journal is None:
            return succeed(result)
        assert entry is not None
        return self.journal.append(entry, lambda: self._restore(key, previous), result)

    def _restore(self, key: str, previous: bytes | None) -> None:
        present = key in self._packed
        if previous is None:
            if present:
                del self._packed[key]
                self._sorted_keys.remove(key)
        else:
            if not present:
                self._sorted_keys.add(key)
            self._packed[key] = previous

    def get(self, key: str) -> Deferred[Record | None]:
        return succeed(self.get_now(key))

    def get_now(self, key: str) -> Record | None:
        packed = self._packed.get(key)
        return None if packed is None else _unpack(packed)

    def set(
        self,
        key: str,
        value: bytes,
        content_type: str = DEFAULT_CONTENT_TYPE,
        precondition: Precondition | None = None,
    ) -> Deferred[WriteResult]:
        revision = self._revision + 1
        entry = None
        try:
            current = self._writable(key, precondition)
            packed = _pack(revision, content_type, value)
            if self.journal is not None:
                entry = encode_set(revision, key, content_type, value)
        except (StorageUnavailable, PreconditionFailed, ValueError):
            return fail()
        self._revision = revision
        self._packed[key] = packed
        if current is None:
            self._sorted_keys.add(key)
        result = WriteResult(revision, created=current is None)
        return self._journaled(entry, key, current, result)

    def delete(
        self, key: str, precondition: Precondition | None = None
    ) -> Deferred[bool]:
        revision = self._revision + 1
        entry = None
        try:
            current = self._writable(key, precondition)
            if current is not None and self.journal is not None:
                entry = encode_delete(revision, key)
        except (StorageUnavailable, PreconditionFailed, ValueError):
            return fail()
        if current is None:
            return succeed(False)
        self._revision = revision
        del self._packed[key]
        self._sorted_keys.remove(key)
        return self._journaled(entry, key, current, True)

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
        return succeed((len(self._packed), self._revision))

    def records(self) -> Iterable[tuple[str, Record]]:
        """
        Every record as it is now, for a forked snapshot writer, whose copy
        of the store cannot change under it; nothing else should use it.
        """
        return ((key, _unpack(packed)) for key, packed in self._packed.items())

    def scan(self, cursor: object | None = None, limit: int = 1000) -> Deferred[Page]:
        if cursor is None:
            cursor = _ScanCursor(list(self._packed))
        assert isinstance(cursor, _ScanCursor)
        end = cursor.position + limit
        batch = cursor.keys[cursor.position : end]
        cursor.position = end
        packed = self._packed
        items = [(key, _unpack(packed[key])) for key in batch if key in packed]
        more = end < len(cursor.keys)
        return succeed(Page(items, cursor if more else None))

    def close(self) -> Deferred[None]:
        """
        Refuse further writes; reads and scans go on working, so that a last
        snapshot can still be taken.
        """
        self._closed = True
        return succeed(None)
