"""
The MySQL backend's batches: writes that arrive together are one
transaction, yet each is decided as if it ran alone, in arrival order. A
random set of writes sent at once must do exactly what the dict backend
does with them one after the other: the same outcomes, revisions,
refusals, expiries and final store. Reads that arrive together are one
query. And L{Batches} alone.
"""

from __future__ import annotations

import time
from typing import Any

import MySQLdb
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, gatherResults
from twisted.internet.task import Clock
from twisted.internet.threads import blockingCallFromThread, deferToThread
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from ersid.embedded.memory import DictStorage
from ersid.mysql.batching import Batches
from ersid.mysql.storage import MySQLStorage
from ersid.storage import (
    Precondition,
    PreconditionFailed,
    StorageUnavailable,
    WriteResult,
)

from .._helpers import model_settings
from .._mariadb import shared_server

_KEYS = st.sampled_from(["a", "b", "c", "d"])
_CONDITIONS = st.one_of(
    st.none(),
    st.just(Precondition.if_absent()),
    st.just(Precondition(exists=True)),
    st.builds(Precondition.if_version, st.lists(st.integers(1, 12), max_size=2)),
    st.builds(lambda v: Precondition(not_versions=[v]), st.integers(1, 12)),
)
_TTLS = st.one_of(st.none(), st.sampled_from([0.5, 3.0]))
_WRITES = st.one_of(
    st.tuples(st.just("set"), _KEYS, st.binary(max_size=3), _CONDITIONS, _TTLS),
    st.tuples(st.just("delete"), _KEYS, _CONDITIONS),
    st.tuples(st.just("refresh"), _KEYS, st.sampled_from([0.5, 3.0]), _CONDITIONS),
)
_START = 1_700_000_000.0


def _call(storage: Any, write: tuple) -> Deferred:
    kind, key, *rest = write
    if kind == "set":
        value, condition, ttl = rest
        return storage.set(key, value, precondition=condition, ttl=ttl)
    if kind == "delete":
        return storage.delete(key, precondition=rest[0])
    ttl, condition = rest
    return storage.refresh(key, ttl, precondition=condition)


def _outcome(result: Any) -> Any:
    """An outcome the two backends can be compared by."""
    if isinstance(result, Failure):
        result = result.value
    if isinstance(result, WriteResult):
        expires = None if result.expires is None else round(result.expires, 6)
        return ("written", result.version, result.created, expires)
    if isinstance(result, PreconditionFailed):
        current = result.current
        return ("refused", None if current is None else current.version)
    return result


class BatchedWritesTests(TestCase):
    def test_writes_sent_together_do_what_they_do_one_by_one(self):
        @model_settings(40)
        @given(
            st.lists(_WRITES, max_size=8), st.lists(_WRITES, min_size=1, max_size=25)
        )
        def agrees(before: list[tuple], together: list[tuple]) -> None:
            settings = shared_server().fresh_database()
            blockingCallFromThread(
                reactor,
                lambda: Deferred.fromCoroutine(
                    self.compare(settings, before, together)
                ),
            )

        return deferToThread(agrees)

    async def compare(self, settings: Any, before: list, together: list) -> None:
        clock = Clock()
        clock.advance(_START)
        mysql = MySQLStorage(settings, min_connections=1, clock=clock)
        commits = []
        mysql.committed = lambda: commits.append(None)
        model = DictStorage(clock=clock)
        try:
            for write in before:
                for storage in (mysql, model):
                    await _call(storage, write).addErrback(lambda f: f.value)
            clock.advance(1)  # the writes with half a second to live expire
            commits.clear()
            sent = [_call(mysql, write) for write in together]
            got = await DeferredList(sent, consumeErrors=True)
            expected = []
            for write in together:
                expected.append(
                    _outcome(await _call(model, write).addErrback(lambda f: f.value))
                )
            self.assertEqual([_outcome(result) for _, result in got], expected)
            # The first write went alone; all the others, together.
            self.assertLessEqual(len(commits), 2)
            self.assertEqual(await mysql.stats(), await model.stats())
            mine = (await mysql.records()).items
            theirs = (await model.records()).items
            self.assertEqual(
                [
                    (k, r.value, r.version, r.expires and round(r.expires, 6))
                    for k, r in mine
                ],
                [
                    (k, r.value, r.version, r.expires and round(r.expires, 6))
                    for k, r in theirs
                ],
            )
            log = await mysql.change_log(0, 1000)
            self.assertEqual(
                [c.revision for c in log.changes], list(range(1, log.revision + 1))
            )
        finally:
            mysql.disconnect()


class BatchedReadsTests(TestCase):
    def test_reads_sent_together_are_one_query_and_see_every_acknowledged_write(self):
        server = shared_server()
        storage = MySQLStorage(server.fresh_database(), min_connections=1)
        self.addCleanup(storage.disconnect)

        def selects() -> int:
            connection = MySQLdb.connect(unix_socket=server.socket, user="root")
            try:
                cursor = connection.cursor()
                cursor.execute("SHOW GLOBAL STATUS LIKE 'Com_select'")
                return int(cursor.fetchone()[1])
            finally:
                connection.close()

        async def check():
            await gatherResults([storage.set(f"k{i}", b"%d" % i) for i in range(100)])
            before = await deferToThread(selects)
            records = await gatherResults(
                [storage.get(f"k{i % 120}") for i in range(200)]
            )
            after = await deferToThread(selects)
            self.assertEqual(
                [None if r is None else r.value for r in records],
                [b"%d" % (i % 120) if i % 120 < 100 else None for i in range(200)],
            )
            # The first read went alone, the next while it ran; the rest wait.
            self.assertLessEqual(after - before, 3 + 1)
            written = await storage.set("k0", b"new")
            self.assertEqual((await storage.get("k0")).version, written.version)

        return Deferred.fromCoroutine(check())


class BatchesTests(TestCase):
    """L{Batches} alone, with batches run by hand."""

    def setUp(self):
        self.runs: list[tuple[list[Any], Deferred]] = []

        def run(items):
            done = Deferred()
            self.runs.append((items, done))
            return done

        self.batches = Batches(
            run, in_flight=2, most=3, most_bytes=10, size=lambda item: item[1]
        )

    def test_items_wait_for_a_free_slot_then_go_together(self):
        results = [self.batches.submit((n, 1)) for n in range(7)]
        self.assertEqual([items for items, _ in self.runs], [[(0, 1)], [(1, 1)]])
        self.runs[0][1].callback(["a"])
        self.assertEqual(self.successResultOf(results[0]), "a")
        # At most three at once.
        self.assertEqual(self.runs[2][0], [(2, 1), (3, 1), (4, 1)])
        self.runs[1][1].callback(["b"])
        self.assertEqual(self.runs[3][0], [(5, 1), (6, 1)])

    def test_batches_end_before_their_bytes_exceed_the_most_but_hold_one(self):
        self.batches.submit((0, 1))
        self.batches.submit((1, 1))
        big = [self.batches.submit((n, 6)) for n in (2, 3)]
        self.batches.submit((4, 20))
        self.runs[0][1].callback([None])
        self.assertEqual(self.runs[2][0], [(2, 6)])
        self.runs[1][1].callback([None])
        self.assertEqual(self.runs[3][0], [(3, 6)])
        self.runs[2][1].callback([None])
        self.assertEqual(self.runs[4][0], [(4, 20)])
        self.assertEqual(self.successResultOf(big[0]), None)

    def test_each_item_gets_its_own_failure_and_a_failed_run_fails_all(self):
        first = self.batches.submit((0, 1))
        second = self.batches.submit((1, 1))
        third = self.batches.submit((2, 1))
        self.runs[0][1].callback([ValueError("mine")])
        self.assertEqual(str(self.failureResultOf(first, ValueError).value), "mine")
        self.runs[1][1].errback(KeyError("all"))
        self.failureResultOf(second, KeyError)
        self.runs[2][1].callback(["ok"])
        self.assertEqual(self.successResultOf(third), "ok")


class BatchFaultTests(TestCase):
    def setUp(self):
        self.server = shared_server()
        self.storage = MySQLStorage(self.server.fresh_database(), min_connections=1)
        self.addCleanup(self.storage.disconnect)

    def test_a_batch_that_waited_for_the_lock_decides_by_the_time_after(self):
        """
        A conditional write kept waiting for the revision row (another
        node's batch holds it) while its key expires is refused: the key
        is gone when the write is decided, though not when it was sent.
        """
        storage = self.storage
        holder = MySQLdb.connect(unix_socket=self.server.socket, user="root")
        self.addCleanup(holder.close)

        async def check():
            written = await storage.set("k", b"v", ttl=0.3)
            cursor = holder.cursor()
            await deferToThread(cursor.execute, "BEGIN")
            await deferToThread(
                cursor.execute,
                "SELECT * FROM ersid.ersid_revision WHERE id = 1 FOR UPDATE",
            )
            write = storage.set(
                "k", b"w", precondition=Precondition.if_version([written.version])
            )
            await deferToThread(_wait_for_lock_wait, self.server)
            while await storage.get("k") is not None:
                pass  # until it has expired, by the database's clock
            await deferToThread(holder.rollback)
            with self.assertRaises(PreconditionFailed) as raised:
                await write
            self.assertIsNone(raised.exception.current)

        return Deferred.fromCoroutine(check())

    def test_refreshes_of_large_values_together_fit_the_servers_packets(self):
        """
        Twenty refreshes of 1 MiB values (20 MiB to write twice, more than
        the server's 16 MiB max_allowed_packet) go in one batch.
        """
        storage = self.storage
        big = bytes(range(256)) * 4096

        async def check():
            for i in range(20):
                await storage.set(f"big{i}", big, ttl=600)
            results = await gatherResults(
                [storage.refresh(f"big{i}", 900) for i in range(20)]
                + [storage.set("small", b"s")]
            )
            self.assertEqual(len({r.version for r in results}), 21)
            self.assertEqual((await storage.get("big19")).value, big)

        return Deferred.fromCoroutine(check())

    def test_closing_answers_the_queued_writes_then_refuses(self):
        storage = self.storage

        async def check():
            writes = [storage.set(f"k{i}", b"v") for i in range(30)]
            await storage.close()
            self.assertTrue(all(write.called for write in writes))
            self.assertEqual(len(await gatherResults(writes)), 30)
            with self.assertRaises(StorageUnavailable):
                await storage.set("late", b"v")
            storage.disconnect()
            with self.assertRaises(StorageUnavailable):
                await storage.get("k0")

        return Deferred.fromCoroutine(check())


def _wait_for_lock_wait(server: Any) -> None:
    """Block until a statement of the C{ersid} user waits for a lock."""
    connection = MySQLdb.connect(unix_socket=server.socket, user="root")
    try:
        cursor = connection.cursor()
        for _ in range(2000):
            cursor.execute(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST "
                "WHERE USER = 'ersid' AND INFO LIKE '%FOR UPDATE%'"
            )
            if cursor.fetchone()[0]:
                return
            time.sleep(0.005)
        raise AssertionError("no write waited for the revision row")
    finally:
        connection.close()
