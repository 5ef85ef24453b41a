"""
The undoing of changes the dict backend makes in memory ahead of their
journal entries: each is handed to the journal with its entry, and called
if the entry cannot be written. The journal's settling tells the store,
through them, which changes no longer wait.
"""

from __future__ import annotations

from ersid.embedded.packing import packed_expiry
from ersid.embedded.records import PackedRecords
from ersid.expiry import ExpiryIndex
from ersid.watch.history import Change

__all__ = ["ChangeUndo", "ExpiriesUndo"]


class ChangeUndo:
    """
    A C{change} made in memory ahead of its journal entry: called, it undoes
    itself, back to the C{previous} packed record (C{None}: none).
    """

    __slots__ = ("change", "key", "new", "previous", "records")

    def __init__(
        self,
        records: PackedRecords,
        change: Change,
        previous: bytes | None,
        new: bytes | None,
    ) -> None:
        self.records = records
        self.change = change
        self.key = change.key
        self.previous = previous
        self.new = new

    def __call__(self) -> None:
        if self.previous is None:
            self.records.pop_packed(self.key)
        else:
            self.records.swap(self.key, self.previous)


class ExpiriesUndo:
    """
    Keys removed because they expired, ahead of their journal entries:
    called, it puts their records back, and their expiries in C{expiry},
    for the reaper to try again.
    """

    __slots__ = ("changes", "expiry", "records", "removed")
    key = None

    def __init__(
        self,
        records: PackedRecords,
        expiry: ExpiryIndex,
        changes: list[Change],
        removed: list[bytes],
    ) -> None:
        self.records = records
        self.expiry = expiry
        self.changes = changes
        self.removed = removed

    def __call__(self) -> None:
        for change, packed in zip(self.changes, self.removed, strict=True):
            self.records.swap(change.key, packed)
            self.expiry.add(change.key, packed_expiry(packed) or 0.0)
