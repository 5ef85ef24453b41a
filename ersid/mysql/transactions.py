"""
The MySQL backend's transactions, one function each, run by
L{ersid.mysql.storage.MySQLStorage} with a cursor of a pooled connection:
what each read and write says in SQL.

A write first takes the next revision from the counter row (which orders
the writes of every node), removes the key's row if it has expired (an
expiry, with a revision of its own), checks its condition on the row under
lock, then writes and logs the change. Reads leave out expired rows, by the
database's clock.
"""

from __future__ import annotations

from typing import Any

from ersid.mysql.change_log import log_change, log_expiries, store_revision
from ersid.storage import (
    Listing,
    Page,
    Precondition,
    PreconditionFailed,
    Record,
    WriteResult,
)

__all__ = [
    "delete",
    "reap",
    "refresh",
    "select_keys",
    "select_page",
    "select_record",
    "select_records",
    "select_stats",
    "upsert",
]

_LIVE = "(expires_at IS NULL OR expires_at > NOW(6))"
_RECORD = "ersid_value, content_type, version, UNIX_TIMESTAMP(expires_at)"


def select_record(cursor: Any, key: bytes, for_update: bool = False) -> Record | None:
    cursor.execute(
        f"SELECT {_RECORD} FROM ersid_data WHERE ersid_key = %s AND {_LIVE}"
        + (" FOR UPDATE" if for_update else ""),
        (key,),
    )
    row = cursor.fetchone()
    return None if row is None else _record(*row)


def _record(value: Any, content_type: str, version: Any, expires: Any) -> Record:
    return Record(
        bytes(value),
        content_type,
        int(version),
        None if expires is None else float(expires),
    )


def _expire_if_due(cursor: Any, revision: int, key: bytes) -> int:
    """
    Remove the key's row if it has expired, logged as an expiry at
    C{revision}; the revision the write goes on with.
    """
    cursor.execute(
        "DELETE FROM ersid_data WHERE ersid_key = %s AND expires_at <= NOW(6)", (key,)
    )
    if not cursor.rowcount:
        return revision
    log_expiries(cursor, revision, [key])
    return _next_revision(cursor)


def reap(cursor: Any, batch: int) -> bool:
    cursor.execute(
        "SELECT ersid_key FROM ersid_data WHERE expires_at <= NOW(6) "
        "ORDER BY expires_at LIMIT %s FOR UPDATE SKIP LOCKED",
        (batch,),
    )
    keys = [bytes(row[0]) for row in cursor.fetchall()]
    if not keys:
        return False
    cursor.execute(
        "UPDATE ersid_revision SET revision = LAST_INSERT_ID(revision + %s) "
        "WHERE id = 1",
        (len(keys),),
    )
    first = int(cursor.lastrowid) - len(keys) + 1
    marks = ", ".join(["%s"] * len(keys))
    cursor.execute(f"DELETE FROM ersid_data WHERE ersid_key IN ({marks})", keys)
    log_expiries(cursor, first, keys)
    return len(keys) == batch


def _next_revision(cursor: Any) -> int:
    cursor.execute(
        "UPDATE ersid_revision SET revision = LAST_INSERT_ID(revision + 1) WHERE id = 1"
    )
    return int(cursor.lastrowid)


def _check(
    cursor: Any, key: str, encoded: bytes, precondition: Precondition | None
) -> None:
    if precondition is None:
        return
    current = select_record(cursor, encoded, for_update=True)
    if not precondition.holds(current):
        raise PreconditionFailed(key, current)


def upsert(
    cursor: Any,
    key: str,
    value: bytes,
    content_type: str,
    precondition: Precondition | None,
    ttl: float | None,
) -> WriteResult:
    encoded = key.encode("utf-8")
    revision = _expire_if_due(cursor, _next_revision(cursor), encoded)
    _check(cursor, key, encoded, precondition)
    return _put(cursor, revision, encoded, value, content_type, ttl)


def _put(
    cursor: Any,
    revision: int,
    encoded: bytes,
    value: bytes,
    content_type: str,
    ttl: float | None,
) -> WriteResult:
    expires = None
    if ttl is not None:
        cursor.execute(
            "SELECT UNIX_TIMESTAMP(NOW(6) + INTERVAL %s MICROSECOND)",
            (round(ttl * 1e6),),
        )
        (expires,) = cursor.fetchone()
    cursor.execute(
        "INSERT INTO ersid_data "
        "(ersid_key, ersid_value, content_type, version, expires_at) "
        "VALUES (%s, %s, %s, %s, FROM_UNIXTIME(%s)) ON DUPLICATE KEY UPDATE "
        "ersid_value = VALUES(ersid_value), content_type = VALUES(content_type), "
        "version = VALUES(version), expires_at = VALUES(expires_at)",
        (encoded, value, content_type, revision, expires),
    )
    # MySQL counts 1 affected row for an insert, 2 for an update.
    created = cursor.rowcount == 1
    log_change(cursor, revision, encoded, value, content_type, expires)
    return WriteResult(revision, created, None if expires is None else float(expires))


def refresh(
    cursor: Any, key: str, ttl: float, precondition: Precondition | None
) -> WriteResult | None:
    encoded = key.encode("utf-8")
    revision = _expire_if_due(cursor, _next_revision(cursor), encoded)
    _check(cursor, key, encoded, precondition)
    current = select_record(cursor, encoded, for_update=True)
    if current is None:
        cursor.connection.rollback()
        return None
    return _put(cursor, revision, encoded, current.value, current.content_type, ttl)


def delete(cursor: Any, key: str, precondition: Precondition | None) -> bool:
    encoded = key.encode("utf-8")
    revision = _expire_if_due(cursor, _next_revision(cursor), encoded)
    _check(cursor, key, encoded, precondition)
    cursor.execute("DELETE FROM ersid_data WHERE ersid_key = %s", (encoded,))
    if cursor.rowcount == 0:
        cursor.connection.rollback()
        return False
    log_change(cursor, revision, encoded, None, None)
    return True


def _like_prefix(prefix: bytes) -> bytes:
    escaped = prefix.replace(b"\\", b"\\\\").replace(b"%", b"\\%").replace(b"_", b"\\_")
    return escaped + b"%"


def select_keys(
    cursor: Any, prefix: str, after: str | None, limit: int
) -> Listing[str]:
    revision = store_revision(cursor)
    encoded_prefix = prefix.encode("utf-8")
    start = encoded_prefix
    inclusive = True
    if after is not None and after.encode("utf-8") >= encoded_prefix:
        start, inclusive = after.encode("utf-8"), False
    cursor.execute(
        "SELECT ersid_key FROM ersid_data WHERE ersid_key "
        + (">=" if inclusive else ">")
        + f" %s AND ersid_key LIKE %s AND {_LIVE} ORDER BY ersid_key LIMIT %s",
        (start, _like_prefix(encoded_prefix), limit),
    )
    keys = [bytes(row[0]).decode("utf-8") for row in cursor.fetchall()]
    return Listing(keys, revision)


def select_records(cursor: Any, prefix: str) -> Listing[tuple[str, Record]]:
    revision = store_revision(cursor)
    cursor.execute(
        f"SELECT ersid_key, {_RECORD} FROM ersid_data "
        f"WHERE ersid_key LIKE %s AND {_LIVE} ORDER BY ersid_key",
        (_like_prefix(prefix.encode("utf-8")),),
    )
    items = [
        (bytes(row[0]).decode("utf-8"), _record(*row[1:])) for row in cursor.fetchall()
    ]
    return Listing(items, revision)


def select_stats(cursor: Any) -> tuple[int, int]:
    cursor.execute("SELECT COUNT(*) FROM ersid_data")
    (count,) = cursor.fetchone()
    return int(count), store_revision(cursor)


def select_page(cursor: Any, after: object | None, limit: int) -> Page:
    cursor.execute(
        f"SELECT ersid_key, {_RECORD} FROM ersid_data "
        "WHERE ersid_key > %s ORDER BY ersid_key LIMIT %s",
        (after or b"", limit),
    )
    rows = cursor.fetchall()
    items = [(bytes(row[0]).decode("utf-8"), _record(*row[1:])) for row in rows]
    last = bytes(rows[-1][0]) if len(rows) == limit else None
    return Page(items, last)
