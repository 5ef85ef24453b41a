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

from ersid.mysql import transactions
from ersid.mysql.change_log import ChangeLog, select_changes, trim_changes
from ersid.mysql.errors import DEAD_CONNECTION, RETRY_TRANSACTION, error_code
from ersid.mysql.settings import MySQLSettings
from ersid.storage import (
    DEFAULT_CONTENT_TYPE,
    MAX_TTL,
    IStorage,
    Listing,
    Page,
    Precondition,
    Record,
    StorageUnavailable,
    WriteResult,
)

__all__ = ["MySQLStorage"]

_T = TypeVar("_T")
# Rows removed by one reaping transaction, at most.
_REAP_BATCH = 500


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
        return self._read(transactions.select_record, key.encode("utf-8"))

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
        return self._write(
            transactions.upsert, key, value, content_type, precondition, ttl
        )

    def refresh(
        self, key: str, ttl: float, precondition: Precondition | None = None
    ) -> Deferred[WriteResult | None]:
        if not 0 < ttl <= MAX_TTL:
            return fail(ValueError(f"a time to live is from 0 to {MAX_TTL} seconds"))
        return self._write(transactions.refresh, key, ttl, precondition)

    def reap(self) -> Deferred[bool]:
        """
        Remove up to a batch of expired rows, each an expiry with its own
        revision; more due?
        """
        if self._closed:
            return succeed(False)
        return self._write(transactions.reap, _REAP_BATCH)

    def delete(
        self, key: str, precondition: Precondition | None = None
    ) -> Deferred[bool]:
        return self._write(transactions.delete, key, precondition)

    def keys(
        self, prefix: str = "", after: str | None = None, limit: int = 100
    ) -> Deferred[Listing[str]]:
        return self._read(transactions.select_keys, prefix, after, limit)

    def records(self, prefix: str = "") -> Deferred[Listing[tuple[str, Record]]]:
        return self._read(transactions.select_records, prefix)

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
        return self._read(transactions.select_stats)

    def scan(self, cursor: object | None = None, limit: int = 1000) -> Deferred[Page]:
        return self._read(transactions.select_page, cursor, limit)

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
