"""
Writes in batches: the writes that reach a node while its previous batch
is committing are applied together in one transaction, as the journal's
group commit does for the dict backend: one lock of the revision row, one
read of the keys' rows, one statement per kind of change, one commit and
so one flush of the database's log for them all.

Each write is decided in arrival order against the state the writes
before it left, under the lock, by one instant of the database's clock,
and takes the next revision; an expired row it finds is removed first,
with a revision of its own, whatever the write then does (as the dict
backend does). A write whose condition fails is refused alone. The revision row is
held until the commit, so revision order is still commit order, across
every node sharing the database.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Literal

import attrs

from ersid.storage import Precondition, PreconditionFailed, Record, WriteResult

__all__ = ["Outcome", "Write", "apply_writes", "batch_size"]

# Bytes of data in one statement, at most (unless one row is larger).
_STATEMENT_BYTES = 1 << 20

#: What one write comes to: its result, or its refusal.
Outcome = WriteResult | bool | None | PreconditionFailed


@attrs.frozen
class Write:
    """One write: a put, a refresh of a key's time to live, or a delete."""

    kind: Literal["put", "refresh", "delete"]
    key: str
    value: bytes = b""
    content_type: str = ""
    precondition: Precondition | None = None
    ttl: float | None = None

    def outcome(self, current: Record | None, revision: int, now: Decimal) -> Outcome:
        """
        What this write does to C{current}, the key's live record: a
        L{WriteResult}, C{False} (a delete of nothing), C{None} (a refresh
        of nothing) or L{PreconditionFailed}.
        """
        if self.precondition is not None and not self.precondition.holds(current):
            return PreconditionFailed(self.key, current)
        if self.kind == "delete":
            return current is not None
        if self.kind == "refresh" and current is None:
            return None
        expires = None if self.ttl is None else now + _microseconds(self.ttl)
        return WriteResult(
            revision, current is None, None if expires is None else float(expires)
        )


def batch_size(write: Write) -> int:
    """
    Bytes a write adds to a batch, roughly (a refresh's value is not known
    until it is read: statements are cut to size when written).
    """
    return len(write.value) + len(write.key) + 100


def _microseconds(seconds: float) -> Decimal:
    return Decimal(round(seconds * 1e6)).scaleb(-6)


@attrs.define
class _Row:
    """A key's row as the batch has left it so far."""

    record: Record | None
    expires: Decimal | None = None
    expired: bool = False


def apply_writes(cursor: Any, writes: list[Write]) -> list[Outcome]:
    """Apply C{writes} in one transaction (the caller commits); their outcomes."""
    cursor.execute("SELECT revision FROM ersid_revision WHERE id = 1 FOR UPDATE")
    revision = int(cursor.fetchone()[0])
    # Read once the lock is held: a statement's NOW() is when it began, and
    # the lock may have been waited for.
    cursor.execute("SELECT UNIX_TIMESTAMP(NOW(6))")
    now = Decimal(cursor.fetchone()[0])
    rows = _read_rows(cursor, writes, now)
    changes: list[tuple[Any, ...]] = []
    outcomes: list[Outcome] = []
    for write in writes:
        encoded = write.key.encode("utf-8")
        row = rows[write.key]
        if row.expired:
            # Whatever the write then does, the expired row goes first.
            revision += 1
            rows[write.key] = row = _Row(None)
            changes.append((revision, encoded, None, None, None, True))
        current = row.record
        outcome = write.outcome(current, revision + 1, now)
        outcomes.append(outcome)
        if isinstance(outcome, PreconditionFailed) or outcome in (None, False):
            continue
        revision += 1
        if write.kind == "delete":
            rows[write.key] = _Row(None)
            changes.append((revision, encoded, None, None, None, False))
            continue
        assert isinstance(outcome, WriteResult)
        assert current is not None or write.kind == "put"
        value = write.value if write.kind == "put" else current.value  # type: ignore[union-attr]
        content_type = (
            write.content_type if write.kind == "put" else current.content_type  # type: ignore[union-attr]
        )
        expires = None if write.ttl is None else now + _microseconds(write.ttl)
        rows[write.key] = _Row(
            Record(value, content_type, revision, outcome.expires), expires
        )
        changes.append((revision, encoded, value, content_type, expires, False))
    if changes:
        _write_rows(cursor, rows, {change[1] for change in changes})
        _insert(
            cursor,
            "INSERT INTO ersid_changes (revision, ersid_key, ersid_value, "
            "content_type, expires_at, expired) VALUES ",
            "(%s, %s, %s, %s, FROM_UNIXTIME(%s), %s)",
            changes,
        )
        cursor.execute(
            "UPDATE ersid_revision SET revision = %s WHERE id = 1", (revision,)
        )
    return outcomes


def _read_rows(cursor: Any, writes: list[Write], now: Decimal) -> dict[str, _Row]:
    """The rows of the writes' keys, locked; values only where needed."""
    keys = list(dict.fromkeys(write.key for write in writes))
    wanted = {
        w.key for w in writes if w.precondition is not None or w.kind == "refresh"
    }
    encoded = [key.encode("utf-8") for key in keys]
    marks = ", ".join(["%s"] * len(keys))
    cursor.execute(
        "SELECT ersid_key, content_type, version, UNIX_TIMESTAMP(expires_at) "
        f"FROM ersid_data WHERE ersid_key IN ({marks}) FOR UPDATE",
        encoded,
    )
    found = {bytes(row[0]).decode("utf-8"): row[1:] for row in cursor.fetchall()}
    values: dict[str, bytes] = {}
    wanted &= found.keys()
    if wanted:
        marks = ", ".join(["%s"] * len(wanted))
        cursor.execute(
            f"SELECT ersid_key, ersid_value FROM ersid_data WHERE ersid_key IN ({marks})",
            [key.encode("utf-8") for key in wanted],
        )
        values = {bytes(k).decode("utf-8"): bytes(v) for k, v in cursor.fetchall()}
    rows = {}
    for key in keys:
        if key not in found:
            rows[key] = _Row(None)
            continue
        content_type, version, expires = found[key]
        expires = None if expires is None else Decimal(expires)
        record = Record(
            values.get(key, b""),
            content_type,
            int(version),
            None if expires is None else float(expires),
        )
        rows[key] = _Row(record, expires, expires is not None and expires <= now)
    return rows


def _write_rows(cursor: Any, rows: dict[str, _Row], changed: set[bytes]) -> None:
    """Leave the changed keys' rows as the batch has left them."""
    puts = []
    deletes = []
    for key, row in rows.items():
        encoded = key.encode("utf-8")
        if encoded not in changed:
            continue
        if row.record is None:
            deletes.append(encoded)
        else:
            record = row.record
            puts.append(
                (
                    encoded,
                    record.value,
                    record.content_type,
                    record.version,
                    row.expires,
                )
            )
    if deletes:
        marks = ", ".join(["%s"] * len(deletes))
        cursor.execute(f"DELETE FROM ersid_data WHERE ersid_key IN ({marks})", deletes)
    if puts:
        _insert(
            cursor,
            "INSERT INTO ersid_data "
            "(ersid_key, ersid_value, content_type, version, expires_at) VALUES ",
            "(%s, %s, %s, %s, FROM_UNIXTIME(%s))",
            puts,
            " ON DUPLICATE KEY UPDATE ersid_value = VALUES(ersid_value), "
            "content_type = VALUES(content_type), version = VALUES(version), "
            "expires_at = VALUES(expires_at)",
        )


def _insert(
    cursor: Any, head: str, row: str, rows: list[tuple[Any, ...]], tail: str = ""
) -> None:
    """
    Insert the rows, as few statements as can hold them (C{executemany}
    would send one per row here: it only joins rows of plain placeholders),
    each of at most L{_STATEMENT_BYTES} of data but at least one row: with
    binary values escaped (up to twice as long), well within any server's
    C{max_allowed_packet} that takes one value of the largest size.
    """
    start = size = 0
    for end, values in enumerate(rows, 1):
        size += sum(len(v) for v in values if isinstance(v, (bytes, str))) + 64
        if size >= _STATEMENT_BYTES or end == len(rows):
            chunk = rows[start:end]
            cursor.execute(
                head + ", ".join([row] * len(chunk)) + tail,
                [field for values in chunk for field in values],
            )
            start, size = end, 0
