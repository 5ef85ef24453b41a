"""
L{MySQLStorage}: records in a MySQL or MariaDB table through
C{twisted.enterprise.adbapi} and C{mysqlclient}, so that any number of Ersid
nodes can share one database as stateless peers.

Every write is one transaction that first takes the next store revision
from a one-row counter table, which orders all writes of all nodes; a
conditional write reads the key's row under that lock before deciding.

Expiry goes by the database's clock, C{NOW(6)} in UTC, the one clock all
nodes share: reads leave out rows past their C{expires_at}; a write first
removes the key's expired row, as an expiry; and every node reaps, taking
the rows due with C{FOR UPDATE SKIP LOCKED}, so that no two nodes remove
the same row and none waits for another.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import MySQLdb
from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from ersid.mysql.change_log import (
    ChangeLog,
    log_change,
    log_expiries,
    select_changes,
    store_revision,
    trim_changes,
)
from ersid.mysql.errors import DEAD_CONNECTION, RETRY_TRANSACTION, error_code
from ersid.mysql.settings import MySQLSettings
from ersid.storage import (
    DEFAULT_CONTENT_TYPE,
    MAX_TTL,
    IStorage,
    Listing,
    Page,
    Precondition,
    PreconditionFailed,
    Record,
    StorageUnavailable,
    WriteResult,
)

__all__ = ["MySQLStorage"]

_T = TypeVar("_T")
# Rows removed by one reaping transaction, at most.
_REAP_BATCH = 500
_LIVE = "(expires_at IS NULL OR expires_at > NOW(6))"


class _Connection(adbapi.Connection):
    """
    A pooled connection whose failed rollback quietly drops the connection
    (adbapi would log a traceback for each); the original error still
    reaches the caller, who decides whether to retry.
    """

    def rollback(self) -> None:
        # adbapi's private _connection and _pool: the only way to reach the
        # raw connection and drop it from its pool (tests/test_twisted.py).
        try:
            self._connection.rollback()
        except MySQLdb.Error:
            self._pool.disconnect(self._connection)


class _Attempt:
    """Whether a transaction got as far as its commit, for retry decisions."""

    committing = False


@implementer(IStorage)
class MySQLStorage:
    """
    Records in the C{ersid_data} table of a MySQL-protocol database.
    """

    name = "mysql"

    def __init__(
        self,
        settings: MySQLSettings,
        min_connections: int = 3,
        max_connections: int = 10,
        clock: Any = None,
    ) -> None:
        """
        @param clock: for tests only: every transaction then sets the
            database's clock (C{SET timestamp}) to C{clock.seconds()}.
        """
        self.settings = settings
        self._clock = clock
        # Called after each write committed: the change log has news.
        self.committed: Callable[[], None] = lambda: None
        self._max_connections = max_connections
        self._closed = False
        self._pool = adbapi.ConnectionPool(
            "MySQLdb",
            cp_min=min_connections,
            cp_max=max_connections,
            cp_noisy=False,
            cp_openfun=None,
            **settings.connect_arguments(),
        )
        self._pool.connectionFactory = _Connection

    def __repr__(self) -> str:
        return f"<MySQLStorage {self.settings.describe()}>"

    async def _run(self, work: Callable[..., _T], *args: Any, idempotent: bool) -> _T:
        """
        Run C{work(cursor, *args)} in a pooled connection, as one
        transaction. A connection that turns out dead (the server restarted)
        is dropped and the work tried again on another, as long as it had not
        reached its commit; a write that may or may not have committed is
        reported as unavailable, never retried.
        """

        now = None if self._clock is None else self._clock.seconds()

        def transaction(connection: Any) -> _T:
            cursor = connection.cursor()
            if now is not None:
                cursor.execute("SET timestamp = %s", (now,))
            result = work(cursor, *args)
            attempt.committing = True
            connection.commit()
            return result

        if not self._pool.running:
            # adbapi starts its threads when the reactor starts; a storage
            # made while the reactor is already running starts them here.
            self._pool.start()
        retries = self._max_connections
        while True:
            attempt = _Attempt()
            try:
                return await self._pool.runWithConnection(transaction)
            except (MySQLdb.OperationalError, MySQLdb.InterfaceError) as e:
                code = error_code(e)
                retryable = code in RETRY_TRANSACTION or (
                    code in DEAD_CONNECTION and (idempotent or not attempt.committing)
                )
                if not (retryable and retries):
                    raise StorageUnavailable(
                        f"database {self.settings.describe()}: {e.args[-1]}"
                    ) from None
                retries -= 1

    def _write(self, work: Callable[..., _T], *args: Any) -> Deferred[_T]:
        if self._closed:
            return fail(StorageUnavailable("the server is shutting down"))
        written = Deferred.fromCoroutine(self._run(work, *args, idempotent=False))
        return written.addCallback(self._committed)

    def _committed(self, result: _T) -> _T:
        self.committed()
        return result

    def _read(self, work: Callable[..., _T], *args: Any) -> Deferred[_T]:
        return Deferred.fromCoroutine(self._run(work, *args, idempotent=True))

    def get(self, key: str) -> Deferred[Record | None]:
        return self._read(_select_record, key.encode("utf-8"))

    def set(
        self,
        key: str,
        value: bytes,
        content_type: str = DEFAULT_CONTENT_TYPE,
        precondition: Precondition | None = None,
        ttl: float | None = None,
    ) -> Deferred[WriteResult]:
        if ttl is not None and not 0 < ttl <= MAX_TTL:
            return fail(ValueError(f"a time to live is from 0 to {MAX_TTL} seconds"))
        return self._write(_upsert, key, value, content_type, precondition, ttl)

    def refresh(
        self, key: str, ttl: float, precondition: Precondition | None = None
    ) -> Deferred[WriteResult | None]:
        if not 0 < ttl <= MAX_TTL:
            return fail(ValueError(f"a time to live is from 0 to {MAX_TTL} seconds"))
        return self._write(_refresh, key, ttl, precondition)

    def reap(self) -> Deferred[bool]:
        """
        Remove up to a batch of expired rows, each an expiry with its own
        revision; more due?
        """
        if self._closed:
            return succeed(False)
        return self._write(_reap, _REAP_BATCH)

    def delete(
        self, key: str, precondition: Precondition | None = None
    ) -> Deferred[bool]:
        return self._write(_delete, key, precondition)

    def keys(
        self, prefix: str = "", after: str | None = None, limit: int = 100
    ) -> Deferred[Listing[str]]:
        return self._read(_select_keys, prefix, after, limit)

    def records(self, prefix: str = "") -> Deferred[Listing[tuple[str, Record]]]:
        return self._read(_select_records, prefix)

    def change_log(self, after: int | None, limit: int) -> Deferred[ChangeLog]:
        """
        The change log after revision C{after}, at most C{limit} changes;
        with C{after} C{None}, its newest C{limit} changes.
        """
        return self._read(select_changes, after, limit)

    def trim_change_log(
        self, keep: int, age: float | None = None, most: int = 10_000
    ) -> Deferred[int]:
        """
        Delete up to C{most} changes older than the newest C{keep}, or than
        C{age} seconds by the database's clock; how many.
        """
        return self._read(trim_changes, keep, age, most)

    def stats(self) -> Deferred[tuple[int, int]]:
        return self._read(_select_stats)

    def scan(self, cursor: object | None = None, limit: int = 1000) -> Deferred[Page]:
        return self._read(_select_page, cursor, limit)

    def close(self) -> Deferred[None]:
        """
        Refuse further writes; reads and scans go on until the reactor
        stops, when adbapi closes the pool (or L{disconnect} does).
        """
        self._closed = True
        return succeed(None)

    def disconnect(self) -> None:
        """Close the connection pool now."""
        self._closed = True
        self._pool.close()


_RECORD = "ersid_value, content_type, version, UNIX_TIMESTAMP(expires_at)"


def _select_record(cursor: Any, key: bytes, for_update: bool = False) -> Record | None:
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


def _reap(cursor: Any, batch: int) -> bool:
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
    current = _select_record(cursor, encoded, for_update=True)
    if not precondition.holds(current):
        raise PreconditionFailed(key, current)


def _upsert(
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


def _refresh(
    cursor: Any, key: str, ttl: float, precondition: Precondition | None
) -> WriteResult | None:
    encoded = key.encode("utf-8")
    revision = _expire_if_due(cursor, _next_revision(cursor), encoded)
    _check(cursor, key, encoded, precondition)
    current = _select_record(cursor, encoded, for_update=True)
    if current is None:
        cursor.connection.rollback()
        return None
    return _put(cursor, revision, encoded, current.value, current.content_type, ttl)


def _delete(cursor: Any, key: str, precondition: Precondition | None) -> bool:
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


def _select_keys(
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


def _select_records(cursor: Any, prefix: str) -> Listing[tuple[str, Record]]:
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


def _select_stats(cursor: Any) -> tuple[int, int]:
    cursor.execute("SELECT COUNT(*) FROM ersid_data")
    (count,) = cursor.fetchone()
    return int(count), store_revision(cursor)


def _select_page(cursor: Any, after: object | None, limit: int) -> Page:
    cursor.execute(
        f"SELECT ersid_key, {_RECORD} FROM ersid_data "
        "WHERE ersid_key > %s ORDER BY ersid_key LIMIT %s",
        (after or b"", limit),
    )
    rows = cursor.fetchall()
    items = [(bytes(row[0]).decode("utf-8"), _record(*row[1:])) for row in rows]
    last = bytes(rows[-1][0]) if len(rows) == limit else None
    return Page(items, last)
