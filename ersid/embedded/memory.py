"""
L{DictStorage}: the embedded default backend, every record in the daemon's
memory, made durable by the journal and snapshots (see L{ersid.embedded}).
It began as a dict, and keeps the name; its records now live in a sorted,
packed mapping (see L{ersid.embedded.records}) that takes two thirds of a
dict's memory.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from operator import itemgetter
from typing import Any, TypeVar

from prometheus_client import Gauge
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from ersid.embedded.journal import Journal
from ersid.embedded.journal_format import encode_delete, encode_set
from ersid.embedded.packing import (
    pack_record,
    packed_expired,
    packed_expiry,
    unpack_record,
)
from ersid.embedded.records import PackedRecords
from ersid.embedded.undo import ChangeUndo, ExpiriesUndo
from ersid.expiry import DEFAULT_REAP_INTERVAL, ExpiryIndex, ReapCounts
from ersid.storage import (
    DEFAULT_CONTENT_TYPE,
    MAX_TTL,
    IImmediateReads,
    IStorage,
    Listing,
    Page,
    Precondition,
    PreconditionFailed,
    Record,
    StorageUnavailable,
    WriteResult,
)
from ersid.watch.history import Change

__all__ = ["DictStorage"]

_T = TypeVar("_T")
# How long one slice of reaping may run before the reactor gets a turn.
_REAP_SLICE = 0.004


class _WallClock:
    """The Unix time, for a store made without a reactor's clock."""

    @staticmethod
    def seconds() -> float:
        return time.time()


@implementer(IStorage, IImmediateReads)
class DictStorage:
    """
    Keep every record in memory, packed and in key order (see
    L{PackedRecords}), so that listing by prefix is a walk from the prefix.

    A write changes the records at once and is acknowledged once its
    journal entry is written; until then it may still be refused, and
    undone. Reads, listings and scans show only what is written (the
    records as they were before the changes still waiting), so that no
    client ever sees a value, or an ETag, that may never have been; the
    conditions of writes are checked against the latest state, in the
    order the writes come.

    Each change is published, once written (L{Change}s to C{publish}), in
    revision order; C{written_revision} is the newest published; the
    revisions of refused writes are given to C{skip}.

    Expiry goes by C{clock} (the reactor: the Unix time). Expired records
    are invisible at once; L{reap}, called by a L{ersid.expiry.Reaper},
    removes them, finding them in C{expiry}, the index of the keys with a
    time to live (a restart hands over the one it rebuilt).
    """

    name = "dict"

    def __init__(
        self,
        records: Mapping[str, Record] | Iterable[tuple[str, Record]] = (),
        revision: int = 0,
        journal: Journal | None = None,
        publish: Callable[[list[Change]], None] | None = None,
        skip: Callable[[int], None] | None = None,
        clock: IReactorTime | None = None,
        expiry: ExpiryIndex | None = None,
    ) -> None:
        self.journal = journal
        self._clock = _WallClock() if clock is None else clock
        if expiry is None:
            expiry = ExpiryIndex(DEFAULT_REAP_INTERVAL / 2)
        self._expiry = expiry
        self._publish = publish
        self._skip = skip
        # Packed records are taken as they are, not copied: a restart hands
        # over millions.
        if not isinstance(records, PackedRecords):
            records = PackedRecords(records)
            for key, record in records.items():
                if record.expires is not None:
                    expiry.add(key, record.expires)
        self._records = records
        self._revision = max(revision, records.highest_version)
        self.written_revision = self._revision
        # Keys with changes waiting for the journal: their packed record as
        # the journal has it, and how many changes wait.
        self._unwritten: dict[str, list[Any]] = {}
        if journal is not None:
            journal.when_settled(self._settled)
        self._closed = False
        self.reaping = ReapCounts()
        size = Gauge(
            "ersid_store_bytes",
            "Bytes of the records held (values, content types, versions).",
            registry=None,
        )
        size.set_function(lambda: records.bytes)
        self.collectors = (size, *self.reaping.collectors)

    def __repr__(self) -> str:
        return f"<DictStorage: {len(self._records)} keys, revision {self._revision}>"

    def _check_writable(
        self, key: str, precondition: Precondition | None
    ) -> bytes | None:
        """
        Raise unless a write to C{key} may proceed; first remove its record
        if it has expired. The key's packed record, if it has one and
        whether it was looked up; else C{None}.
        """
        if self._closed:
            raise StorageUnavailable("the server is shutting down")
        if not self._expiry.pending and precondition is None:
            return None
        packed = self._records.get_packed(key)
        if packed is not None and packed_expired(packed, self._clock.seconds()):
            self._expire(key, packed)
            packed = None
        if precondition is not None:
            current = None if packed is None else unpack_record(packed)
            if not precondition.holds(current):
                raise PreconditionFailed(key, current)
        return packed

    def _expire(self, key: str, packed: bytes) -> None:
        """Remove C{key}, whose record C{packed} has expired: an expiry."""
        changes: list[Change] = []
        removed: list[bytes] = []
        self._remove_expired(key, packed, changes, removed)
        written = self._journal_expiries(changes, removed)
        if written is not None:
            # Refused, the removal is undone; the failure is the journal's to report.
            written.addErrback(lambda _: None)

    def reap(self) -> bool | Deferred[bool]:
        """
        Remove expired keys for a few milliseconds, journaled as one batch;
        more due? With a journal, the answer comes once the batch is
        written: the reaper never runs ahead of the journal, so that each
        batch the journal settles, and publishes, is one slice's.
        """
        if self._closed:
            return False
        now = self._clock.seconds()
        deadline = time.perf_counter() + _REAP_SLICE
        next_due = self._expiry.next_due
        get_packed = self._records.get_packed
        changes: list[Change] = []
        removed: list[bytes] = []
        more = False
        earliest = now
        while (key := next_due(now)) is not None:
            packed = get_packed(key)
            # Records rewritten since their entry was made are skipped:
            # without an expiry now, or a later one with an entry of its own.
            if packed is not None and packed_expired(packed, now):
                earliest = min(earliest, packed_expiry(packed) or now)
                self._remove_expired(key, packed, changes, removed)
            if not len(changes) % 8 and time.perf_counter() > deadline:
                more = True
                break
        self.reaping.reaped(len(changes), now - earliest)
        if changes:
            written = self._journal_expiries(changes, removed)
            if written is not None:
                # Refused (and undone), the rest waits for the next tick,
                # rather than the same keys coming round again at once.
                return written.addCallbacks(lambda _: more, lambda _: False)
        return more

    def _remove_expired(
        self, key: str, packed: bytes, changes: list[Change], removed: list[bytes]
    ) -> None:
        """
        Remove C{key}, whose record C{packed} has expired, adding its
        change to C{changes} and the record to C{removed}, for the journal.
        """
        self._records.pop_packed(key)
        self._revision += 1
        changes.append(Change(self._revision, key, None, expired=True))
        removed.append(packed)

    def _journal_expiries(
        self, changes: list[Change], removed: list[bytes]
    ) -> Deferred[None] | None:
        """
        Journal, as one batch, the removal of keys whose records C{removed}
        had expired, firing once written (failing if refused, and undone). Nothing
        waits for them: an expired record reads as none before its removal
        is written as after.
        """
        if self.journal is None:
            self._written(changes)
            return None
        entries = b"".join(
            [
                encode_delete(change.revision, change.key, expired=True)
                for change in changes
            ]
        )
        undo = ExpiriesUndo(self._records, self._expiry, changes, removed)
        return self.journal.append(entries, undo, None)

    def _expires(self, ttl: float | None) -> float | None:
        """
        The expiry of a write with C{ttl}, by the store's clock.

        @raise ValueError: if the time to live is out of bounds.
        """
        if ttl is None:
            return None
        if not 0 < ttl <= MAX_TTL:
            raise ValueError(f"a time to live is from 0 to {MAX_TTL} seconds")
        return round(self._clock.seconds() + ttl, 6)

    def _journaled(
        self,
        entry: bytes | None,
        change: Change,
        previous: bytes | None,
        new: bytes | None,
        result: _T,
    ) -> Deferred[_T]:
        """
        C{result} once the C{change} just made, from the packed record
        C{previous} to C{new} (C{None}: none) and encoded as C{entry}, is in
        the journal, if there is one; if it cannot be written, the change
        is undone.
        """
        if self.journal is None:
            self._written([change])
            return succeed(result)
        assert entry is not None
        key = change.key
        waiting = self._unwritten.get(key)
        if waiting is None:
            self._unwritten[key] = [previous, 1]
        else:
            waiting[1] += 1
        undo = ChangeUndo(self._records, change, previous, new)
        return self.journal.append(entry, undo, result)

    def _written(self, changes: list[Change]) -> None:
        self.written_revision = changes[-1].revision
        if self._publish is not None:
            self._publish(changes)

    def _settled(self, changes: list[Any], written: bool) -> None:
        """
        The journal wrote, or refused and undid, C{changes}, in order. A key
        with later changes still waiting reads as the last one written (a
        refusal undoes every change after it, so it leaves none waiting).
        """
        unwritten = self._unwritten
        published: list[Change] = []
        for change in changes:
            if change.key is None:
                published += change.changes  # expiries: nothing waits
                continue
            waiting = unwritten[change.key]
            waiting[1] -= 1
            if waiting[1]:
                waiting[0] = change.new
            else:
                del unwritten[change.key]
            published.append(change.change)
        # Published last: a watcher told of them may read the store.
        if written:
            self._written(published)
        elif self._skip is not None:
            self._skip(published[-1].revision)

    def get(self, key: str) -> Deferred[Record | None]:
        return succeed(self.get_now(key))

    def get_now(self, key: str) -> Record | None:
        if self._unwritten:
            waiting = self._unwritten.get(key)
            if waiting is not None:
                packed = waiting[0]
                record = None if packed is None else unpack_record(packed)
            else:
                record = self._records.get_record(key)
        else:
            record = self._records.get_record(key)
        if record is not None and record.expires is not None:
            if record.expires <= self._clock.seconds():
                return None
        return record

    def set(
        self,
        key: str,
        value: bytes,
        content_type: str = DEFAULT_CONTENT_TYPE,
        precondition: Precondition | None = None,
        ttl: float | None = None,
    ) -> Deferred[WriteResult]:
        entry = None
        try:
            expires = self._expires(ttl)
            self._check_writable(key, precondition)
            revision = self._revision + 1
            packed = pack_record(revision, content_type, value, expires)
            if self.journal is not None:
                entry = encode_set(revision, key, content_type, value, expires)
        except (StorageUnavailable, PreconditionFailed, ValueError):
            return fail()
        self._revision = revision
        previous = self._records.swap(key, packed)
        if expires is not None:
            self._expiry.add(key, expires)
        result = WriteResult(revision, previous is None, expires)
        change = Change(revision, key, value, content_type, expires)
        return self._journaled(entry, change, previous, packed, result)

    def refresh(
        self, key: str, ttl: float, precondition: Precondition | None = None
    ) -> Deferred[WriteResult | None]:
        now = self._clock.seconds()
        try:
            self._expires(ttl)
            packed = self._check_writable(key, precondition)
            if packed is None:
                packed = self._records.get_packed(key)
        except (StorageUnavailable, PreconditionFailed, ValueError):
            return fail()
        if packed is None or packed_expired(packed, now):
            return succeed(None)
        record = unpack_record(packed)
        return self.set(key, record.value, record.content_type, None, ttl)

    def delete(
        self, key: str, precondition: Precondition | None = None
    ) -> Deferred[bool]:
        entry = None
        try:
            self._check_writable(key, precondition)
            revision = self._revision + 1
            if self.journal is not None:
                entry = encode_delete(revision, key)
        except (StorageUnavailable, PreconditionFailed, ValueError):
            return fail()
        previous = self._records.pop_packed(key)
        if previous is None:
            return succeed(False)
        self._revision = revision
        change = Change(revision, key, None)
        return self._journaled(entry, change, previous, None, True)

    def keys(
        self, prefix: str = "", after: str | None = None, limit: int = 100
    ) -> Deferred[Listing[str]]:
        start = prefix if after is None or after < prefix else after
        matching: list[str] = []
        for key, _ in self._live_from(start):
            if len(matching) == limit or not key.startswith(prefix):
                break
            if key != after:
                matching.append(key)
        return succeed(Listing(matching, self.written_revision))

    def records(self, prefix: str = "") -> Deferred[Listing[tuple[str, Record]]]:
        matching: list[tuple[str, Record]] = []
        for key, packed in self._live_from(prefix):
            if not key.startswith(prefix):
                break
            matching.append((key, unpack_record(packed)))
        return succeed(Listing(matching, self.written_revision))

    def stats(self) -> Deferred[tuple[int, int]]:
        return succeed((len(self._records), self._revision))

    def durable_records(self) -> Iterator[tuple[str, Record]]:
        """
        Every record as the journal has made it durable, in key order: the
        store as it is now, less the changes whose journal entries are not
        yet written, which may still be refused. For a forked snapshot
        writer, whose copy of the store cannot change under it: call it
        just before the fork, and iterate in the child.
        """
        return ((key, unpack_record(packed)) for key, packed in self._written_from(""))

    def _live_from(self, start: str) -> Iterator[tuple[str, bytes]]:
        """L{_written_from}, less the records that have expired."""
        now = self._clock.seconds()
        for key, packed in self._written_from(start):
            if not packed_expired(packed, now):
                yield key, packed

    def _written_from(self, start: str) -> Iterator[tuple[str, bytes]]:
        """
        Keys from C{start} on, in order, with their packed records as the
        journal has them. The records must not change until it ends.
        """
        unwritten = {key: waiting[0] for key, waiting in self._unwritten.items()}
        if not unwritten:
            yield from self._records.items_from(start)
            return
        deleted = sorted(
            (key, before)
            for key, before in unwritten.items()
            if key >= start
            and before is not None
            and self._records.get_packed(key) is None
        )
        current = self._records.items_from(start)
        for key, packed in heapq.merge(current, deleted, key=itemgetter(0)):
            packed = unwritten.get(key, packed)
            if packed is not None:
                yield key, packed

    def scan(self, cursor: object | None = None, limit: int = 1000) -> Deferred[Page]:
        """A page of records after the key C{cursor}, the last one of the page before."""
        after = "" if cursor is None else cursor
        assert isinstance(after, str)
        items: list[tuple[str, Record]] = []
        for key, packed in self._written_from(after):
            if cursor is not None and key == after:
                continue
            if len(items) == limit:
                return succeed(Page(items, items[-1][0]))
            items.append((key, unpack_record(packed)))
        return succeed(Page(items, None))

    def close(self) -> Deferred[None]:
        """
        Refuse further writes; reads and scans go on working, so that a last
        snapshot can still be taken.
        """
        self._closed = True
        return succeed(None)
