"""
L{MySQLStorage}: records in a MySQL or MariaDB table through
C{twisted.enterprise.adbapi} and C{mysqlclient}, so that any number of Ersid
nodes can share one database, or one Galera cluster, as stateless peers.

Writes go in batches (L{ersid.mysql.writes}): each batch is one
transaction that first locks the one-row revision counter, which orders
all writes of all nodes, and holds it to its commit. Reads of keys go in
batches too, each one statement: one round trip.

Expiry goes by the database's clock, C{NOW(6)} in UTC, the one clock all
nodes share: reads leave out rows past their C{expires_at}; a write first
removes the key's expired row, as an expiry; and every node reaps, taking
the rows due with C{FOR UPDATE SKIP LOCKED}, so that no two nodes remove
the same row and none waits for another.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any, TypeVar

import MySQLdb
from prometheus_client import Counter, Gauge, Histogram
from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from zope.interface import implementer

from ersid.expiry import ReapCounts
from ersid.mysql import transactions
from ersid.mysql.batching import Batches
from ersid.mysql.change_log import ChangeLog, select_changes, trim_changes
from ersid.mysql.errors import (
    DEAD_CONNECTION,
    RETRY_TRANSACTION,
    UNREACHABLE,
    error_code,
)
from ersid.mysql.settings import MySQLSettings
from ersid.mysql.writes import Outcome, Write, apply_writes, batch_size
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
_log = Logger()
# Rows removed by one reaping transaction, at most.
_REAP_BATCH = 500
# Most writes, and most bytes of them, in one batch; most reads.
_BATCH_WRITES = 500
_BATCH_BYTES = 4 << 20
_BATCH_READS = 500
# How often a transaction that lost a conflict (Galera's certification, a
# deadlock, a lock wait) runs again before the write is refused (as 503: it
# did not take effect), and the
# longest pause, in seconds, before each run (random, so that the losers
# of one conflict do not meet again).
_CONFLICT_RETRIES = 100
_CONFLICT_PAUSE = 0.01
# Nor after this many seconds (a lock wait alone takes three).
_CONFLICT_SECONDS = 10.0


class _NoServer(Exception):
    """No server of the list could be connected to; C{error} is why."""

    def __init__(self, error: Exception) -> None:
        super().__init__(error)
        self.error = error


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
        reactor: Any = None,
    ) -> None:
        """
        @param clock: for tests only: every transaction then sets the
            database's clock (C{SET timestamp}) to C{clock.seconds()}.
        """
        if reactor is None:
            from twisted.internet import reactor
        self.settings = settings
        self._clock = clock
        self._reactor = reactor
        # Called after each write committed: the change log has news.
        self.committed: Callable[[], None] = lambda: None
        self._max_connections = max_connections
        self._closed = False
        self._disconnected = False
        # Writes one batch at a time (each holds the revision row to its
        # commit anyway); reads in two at once.
        self._writes = Batches(
            self._apply_writes,
            in_flight=1,
            most=_BATCH_WRITES,
            most_bytes=_BATCH_BYTES,
            size=batch_size,
        )
        self._reads = Batches(
            self._get_records,
            in_flight=2,
            most=_BATCH_READS,
            most_bytes=_BATCH_READS,
            size=lambda _: 1,
        )
        self._pool = adbapi.ConnectionPool(
            "ersid.mysql.connecting",
            cp_min=min_connections,
            cp_max=max_connections,
            cp_noisy=False,
            cp_reactor=reactor,
            **settings.connect_arguments(),
        )
        self.reaping = ReapCounts()
        self._queries = Counter(
            "ersid_mysql_queries",
            "Transactions, and reads of one statement, run on the database.",
            registry=None,
        )
        self._query_seconds = Histogram(
            "ersid_mysql_query_duration_seconds",
            "Seconds a transaction or read took, from taking a connection to "
            "its commit.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5),
            registry=None,
        )
        self._retries = Counter(
            "ersid_mysql_retries",
            "Transactions run again, by the MySQL error number that made them.",
            ["errno"],
            registry=None,
        )
        self._failures = Counter(
            "ersid_mysql_failures",
            "Work given up on, by its MySQL error number (0: none).",
            ["errno"],
            registry=None,
        )
        self._in_use = Gauge(
            "ersid_mysql_pool_connections_in_use",
            "Pooled connections in use now.",
            registry=None,
        )
        # Shown as 0 until they happen, so that dashboards and alerts see them.
        for code in sorted(RETRY_TRANSACTION | DEAD_CONNECTION):
            self._retries.labels(str(code))
        for code in sorted(UNREACHABLE):
            self._failures.labels(str(code))
        self.collectors = (
            self._queries,
            self._query_seconds,
            self._retries,
            self._failures,
            self._in_use,
            *self.reaping.collectors,
        )

    def __repr__(self) -> str:
        return f"<MySQLStorage {self.settings.describe()}>"

    def _in_thread(
        self,
        work: Callable[..., _T],
        args: tuple[Any, ...],
        transaction: bool,
        attempt: _Attempt,
        now: float | None,
        timed: bool,
    ) -> _T:
        """
        In a pool thread: C{work(cursor, *args)}, as a transaction or, for a
        read of one statement, alone (the connections autocommit, so that
        such a read is one round trip); its duration counted if C{timed}.
        """
        self._queries.inc()
        timing = self._query_seconds.time() if timed else nullcontext()
        with self._in_use.track_inprogress(), timing:
            try:
                connection = self._pool.connect()
            except MySQLdb.Error as e:
                raise _NoServer(e) from None
            try:
                cursor = connection.cursor()
                if now is not None:
                    cursor.execute("SET timestamp = %s", (now,))
                if transaction:
                    cursor.execute("START TRANSACTION")
                result = work(cursor, *args)
                if transaction:
                    attempt.committing = True
                    connection.commit()
                return result
            except BaseException as e:
                if error_code(e) in DEAD_CONNECTION or not _rolled_back(connection):
                    self._pool.disconnect(connection)
                raise

    async def _run(
        self,
        work: Callable[..., _T],
        *args: Any,
        transaction: bool = True,
        idempotent: bool,
        timed: bool = True,
    ) -> _T:
        """
        Run C{work(cursor, *args)} on a pooled connection. A connection that
        turns out dead (the server restarted) is dropped and the work tried
        again on another, as long as it had not reached its commit; a
        transaction that lost a conflict, rolled back, runs again; a write
        that may or may not have committed is reported as unavailable,
        never retried.
        """
        now = None if self._clock is None else self._clock.seconds()
        if self._disconnected:
            raise StorageUnavailable("the server is shutting down")
        if not self._pool.running:
            # adbapi starts its threads when the reactor starts; a storage
            # made while the reactor is already running starts them here.
            self._pool.start()
        reconnects = self._max_connections
        conflicts = _CONFLICT_RETRIES
        give_up = self._reactor.seconds() + _CONFLICT_SECONDS
        while True:
            attempt = _Attempt()
            try:
                return await deferToThreadPool(
                    self._reactor,
                    self._pool.threadpool,
                    self._in_thread,
                    work,
                    args,
                    transaction,
                    attempt,
                    now,
                    timed,
                )
            except _NoServer as e:
                # Every server was tried already: no use trying again now.
                self._failures.labels(str(error_code(e.error) or 0)).inc()
                raise self._unavailable(e.error) from None
            except (MySQLdb.OperationalError, MySQLdb.InterfaceError) as e:
                code = error_code(e)
                if code in RETRY_TRANSACTION and conflicts:
                    if self._reactor.seconds() < give_up:
                        conflicts -= 1
                        self._retries.labels(str(code)).inc()
                        pause = random.uniform(0, _CONFLICT_PAUSE)
                        await deferLater(self._reactor, pause)
                        continue
                if code in DEAD_CONNECTION and reconnects:
                    if idempotent or not attempt.committing:
                        reconnects -= 1
                        self._retries.labels(str(code)).inc()
                        continue
                self._failures.labels(str(code or 0)).inc()
                if attempt.committing and not idempotent:
                    raise self._unavailable(
                        e, " (lost during its commit: it may have been made)"
                    ) from None
                raise self._unavailable(e) from None

    def _unavailable(self, error: Exception, note: str = "") -> StorageUnavailable:
        return StorageUnavailable(
            f"database {self.settings.describe()}: {error.args[-1]}{note}"
        )

    def _committed(self, result: _T) -> _T:
        self.committed()
        return result

    def _read(self, work: Callable[..., _T], *args: Any) -> Deferred[_T]:
        """A read of several statements, in one transaction: one snapshot."""
        return Deferred.fromCoroutine(self._run(work, *args, idempotent=True))

    async def _apply_writes(self, writes: list[Write]) -> list[Outcome]:
        outcomes = await self._run(apply_writes, writes, idempotent=False)
        try:
            self.committed()
        except Exception:
            # The writes are made: their answers must not depend on it.
            _log.failure("Telling of a commit failed")
        return outcomes

    def _write(self, write: Write) -> Deferred[Outcome]:
        if self._closed:
            return fail(StorageUnavailable("the server is shutting down"))
        return self._writes.submit(write)

    async def _get_records(self, keys: list[str]) -> list[Record | None]:
        found = await self._run(
            transactions.select_live_records,
            [key.encode("utf-8") for key in keys],
            transaction=False,
            idempotent=True,
        )
        return [found.get(key) for key in keys]

    def get(self, key: str) -> Deferred[Record | None]:
        return self._reads.submit(key)

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
        return self._write(Write("put", key, value, content_type, precondition, ttl))

    def refresh(
        self, key: str, ttl: float, precondition: Precondition | None = None
    ) -> Deferred[WriteResult | None]:
        if not 0 < ttl <= MAX_TTL:
            return fail(ValueError(f"a time to live is from 0 to {MAX_TTL} seconds"))
        return self._write(Write("refresh", key, precondition=precondition, ttl=ttl))

    def reap(self) -> Deferred[bool]:
        """
        Remove up to a batch of expired rows, each an expiry with its own
        revision; more due?
        """
        if self._closed:
            return succeed(False)
        reaped = Deferred.fromCoroutine(
            self._run(transactions.reap, _REAP_BATCH, idempotent=False)
        )
        return reaped.addCallback(self._committed).addCallback(self._reaped)

    def _reaped(self, outcome: tuple[int, float]) -> bool:
        keys, most_late = outcome
        self.reaping.reaped(keys, most_late)
        return keys == _REAP_BATCH

    def delete(
        self, key: str, precondition: Precondition | None = None
    ) -> Deferred[bool]:
        return self._write(Write("delete", key, precondition=precondition))

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
        return Deferred.fromCoroutine(
            self._run(
                transactions.select_page,
                cursor,
                limit,
                transaction=False,
                idempotent=True,
            )
        )

    def read_alone(self, work: Callable[..., _T], *args: Any) -> Deferred[_T]:
        """
        C{work(cursor, *args)} on a pooled connection of its own until it
        returns, outside the transactions this storage begins: for a
        backup's one long transaction, which C{work} begins and ends. Run
        again on another connection if that one turns out dead, as a read.
        """
        # Untimed: minutes of a backup are no query's latency.
        return Deferred.fromCoroutine(
            self._run(work, *args, transaction=False, idempotent=True, timed=False)
        )

    def close(self) -> Deferred[None]:
        """
        Refuse further writes; fire once those queued are answered. Reads
        and scans go on until the reactor stops, when adbapi closes the
        pool (or L{disconnect} does).
        """
        self._closed = True
        return self._writes.idle()

    def disconnect(self) -> None:
        """Close the connection pool now; what is queued is refused."""
        if not self._disconnected:
            self._closed = self._disconnected = True
            self._pool.close()


def _rolled_back(connection: Any) -> bool:
    """Roll back; did the connection survive it?"""
    try:
        connection.rollback()
    except MySQLdb.Error:
        return False
    return True
