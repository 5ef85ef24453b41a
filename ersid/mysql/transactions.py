"""
The MySQL backend's reads and its reaping, one function each, run by
L{ersid.mysql.storage.MySQLStorage} with a cursor of a pooled connection
(writes are L{ersid.mysql.writes}). Reads leave out expired rows, by the
database's clock.
"""

from __future__ import annotations

from typing import Any

from ersid.mysql.change_log import log_expiries, store_revision
from ersid.storage import (
    Listing,
    Page,
    Record,
)

__all__ = [
    "reap",
    "select_keys",
    "select_live_records",
    "select_page",
    "select_records",
    "select_stats",
]

_LIVE = "(expires_at IS NULL OR expires_at > NOW(6))"
_RECORD = "ersid_value, content_type, version, UNIX_TIMESTAMP(expires_at)"


def select_live_records(cursor: Any, keys: list[bytes]) -> dict[str, Record]:
    """The live records of C{keys}, by key, in one statement."""
    unique = list(dict.fromkeys(keys))
    marks = ", ".join(["%s"] * len(unique))
    cursor.execute(
        f"SELECT ersid_key, {_RECORD} FROM ersid_data "
        f"WHERE ersid_key IN ({marks}) AND {_LIVE}",
        unique,
    )
    return {
        bytes(row[0]).decode("utf-8"): _record(*row[1:]) for row in cursor.fetchall()
    }


def _record(value: Any, content_type: str, version: Any, expires: Any) -> Record:
    return Record(
        bytes(value),
        content_type,
        int(version),
        None if expires is None else float(expires),
    )


def reap(cursor: Any, batch: int) -> tuple[int, float]:
    """
    Remove up to C{batch} expired rows: how many, and how many seconds the
    most overdue outlived its expiry.
    """
    cursor.execute(
        "SELECT ersid_key, TIMESTAMPDIFF(MICROSECOND, expires_at, NOW(6)) "
        "FROM ersid_data WHERE expires_at <= NOW(6) "
        "ORDER BY expires_at LIMIT %s FOR UPDATE SKIP LOCKED",
        (batch,),
    )
    rows = cursor.fetchall()
    keys = [bytes(row[0]) for row in rows]
    if not keys:
        return 0, 0.0
    cursor.execute(
        "UPDATE ersid_revision SET revision = LAST_INSERT_ID(revision + %s) "
        "WHERE id = 1",
        (len(keys),),
    )
    first = int(cursor.lastrowid) - len(keys) + 1
    marks = ", ".join(["%s"] * len(keys))
    cursor.execute(f"DELETE FROM ersid_data WHERE ersid_key IN ({marks})", keys)
    log_expiries(cursor, first, keys)
    return len(keys), int(rows[0][1]) / 1e6


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
