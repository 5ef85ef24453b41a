"""
The change log in SQL (C{ersid_changes}): what each write adds to it in
its own transaction, and how nodes read and trim it (see
L{ersid.mysql.changes} for the reading of it on a timer).
"""

from __future__ import annotations

from typing import Any

import attrs

from ersid.storage import DEFAULT_CONTENT_TYPE
from ersid.watch.history import Change

__all__ = [
    "ChangeLog",
    "log_expiries",
    "select_changes",
    "store_revision",
    "trim_changes",
]


@attrs.frozen
class ChangeLog:
    """
    Changes read from the log, in revision order; C{floor} is the revision
    after which the log is complete, C{revision} the store's.
    """

    changes: list[Change]
    floor: int
    revision: int


def store_revision(cursor: Any) -> int:
    """The store's revision, from the counter row."""
    cursor.execute("SELECT revision FROM ersid_revision WHERE id = 1")
    return int(cursor.fetchone()[0])


def log_expiries(cursor: Any, first: int, keys: list[bytes]) -> None:
    """Log the removal by expiry of C{keys}, at revisions from C{first} on."""
    rows = [(first + i, key) for i, key in enumerate(keys)]
    cursor.executemany(
        "INSERT INTO ersid_changes (revision, ersid_key, expired) VALUES (%s, %s, TRUE)",
        rows,
    )


_COLUMNS = (
    "revision, ersid_key, ersid_value, content_type, UNIX_TIMESTAMP(expires_at), "
    "expired"
)


def select_changes(cursor: Any, after: int | None, limit: int) -> ChangeLog:
    # In one transaction, so one snapshot: the revision, the log's start
    # and the changes agree.
    revision = store_revision(cursor)
    cursor.execute("SELECT MIN(revision) FROM ersid_changes")
    (oldest,) = cursor.fetchone()
    floor = revision if oldest is None else int(oldest) - 1
    if after is None:
        cursor.execute(
            f"SELECT {_COLUMNS} FROM ersid_changes ORDER BY revision DESC LIMIT %s",
            (limit,),
        )
        rows = cursor.fetchall()[::-1]
    else:
        cursor.execute(
            f"SELECT {_COLUMNS} FROM ersid_changes "
            "WHERE revision > %s ORDER BY revision LIMIT %s",
            (after, limit),
        )
        rows = cursor.fetchall()
    changes = [
        Change(
            int(row[0]),
            bytes(row[1]).decode("utf-8"),
            None if row[2] is None else bytes(row[2]),
            row[3] or DEFAULT_CONTENT_TYPE,
            None if row[4] is None else float(row[4]),
            bool(row[5]),
        )
        for row in rows
    ]
    return ChangeLog(changes, floor, revision)


def trim_changes(cursor: Any, keep: int, age: float | None, most: int) -> int:
    oldest = store_revision(cursor) - keep
    if age is not None:
        cursor.execute(
            "SELECT MAX(revision) FROM ersid_changes "
            "WHERE changed_at < NOW(6) - INTERVAL %s MICROSECOND",
            (int(age * 1e6),),
        )
        (too_old,) = cursor.fetchone()
        if too_old is not None:
            oldest = max(oldest, int(too_old))
    cursor.execute(
        "DELETE FROM ersid_changes WHERE revision <= %s ORDER BY revision LIMIT %s",
        (oldest, most),
    )
    return int(cursor.rowcount)
