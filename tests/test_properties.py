"""
Property-based tests: random sequences of operations, conditional writes,
times to live, refreshes, reaping and the clock moving on included, run
against each storage backend and against a plain dict model; they must
agree at every step. With the journal, the store is restarted from it at
random moments, and a replay of it must give the model's store too.

Hypothesis runs in a thread and calls the backends in the reactor thread,
so that backends whose Deferreds fire later (MySQL, the journal) work.
"""

from __future__ import annotations

import shutil
import tempfile

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.internet.threads import blockingCallFromThread, deferToThread
from twisted.trial.unittest import TestCase

from ersid.embedded.journal import Journal
from ersid.embedded.memory import DictStorage
from ersid.embedded.records import PackedRecords
from ersid.embedded.recovery import read_journal, recover
from ersid.expiry import ExpiryIndex
from ersid.storage import IImmediateReads, Precondition, PreconditionFailed, Record

from ._helpers import model_settings

KEYS = st.sampled_from(["a", "A", "a ", "a/b", "a/c", "b", "é", "🔑", "a%2F"])
VALUES = st.binary(max_size=20)
CONTENT_TYPES = st.sampled_from(["text/plain", "application/octet-stream"])
CONDITIONS = st.sampled_from([None, "absent", "exists", "current", "stale"])
# Times to live and steps of the clock, in halves of a second: expiries
# fall exactly on the instants the store is read at, as well as between.
TTLS = st.sampled_from([None, None, 0.5, 1.0, 2.5])
OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("set"), KEYS, VALUES, CONTENT_TYPES, CONDITIONS, TTLS),
        st.tuples(st.just("refresh"), KEYS, st.sampled_from([0.5, 2.0]), CONDITIONS),
        st.tuples(st.just("advance"), st.sampled_from([0.25, 0.5, 1.0, 2.0])),
        st.tuples(st.just("reap")),
        st.tuples(st.just("restart")),
        st.tuples(st.just("delete"), KEYS, CONDITIONS),
        st.tuples(st.just("get"), KEYS),
        st.tuples(
            st.just("keys"),
            st.sampled_from(["", "a", "a/", "b", "z"]),
            st.one_of(st.none(), KEYS),
            st.integers(1, 4),
        ),
    ),
    min_size=20,
    max_size=60,
)
START = 1_800_000_000.0


def _precondition(condition: str | None, current) -> Precondition | None:
    if condition is None:
        return None
    if condition == "absent":
        return Precondition.if_absent()
    if condition == "exists":
        return Precondition(exists=True)
    version = current[2] if current is not None else 1
    return Precondition.if_version(
        [version if condition == "current" else version + 1000]
    )


class _ModelCheck:
    """
    Runs one sequence against a backend and the model, comparing. The model
    holds each key's (value, content type, version, expiry) while it lives.
    """

    def __init__(self, test: TestCase, storage, clock: Clock) -> None:
        self.test = test
        self.storage = storage
        self.clock = clock
        self.model: dict[str, tuple[bytes, str, int, float | None]] = {}
        self.revision = 0

    def call(self, method, *args):
        return blockingCallFromThread(reactor, method, *args)

    def run(self, operations) -> None:
        for operation in operations:
            getattr(self, operation[0])(*operation[1:])

    def live(self, key: str) -> tuple[bytes, str, int, float | None] | None:
        """The key's entry, unless it has expired by now."""
        entry = self.model.get(key)
        if entry is not None and entry[3] is not None:
            if entry[3] <= self.clock.seconds():
                return None
        return entry

    def living(self) -> dict[str, tuple[bytes, str, int, float | None]]:
        """The model's keys that live now."""
        return {key: entry for key in self.model if (entry := self.live(key))}

    def set(self, key, value, content_type, condition, ttl) -> None:
        current = self.live(key)
        precondition = _precondition(condition, current)
        expected_to_apply = precondition is None or precondition.holds(
            None if current is None else Record(*current)
        )
        try:
            result = self.call(
                self.storage.set, key, value, content_type, precondition, ttl
            )
        except PreconditionFailed:
            self.test.assertFalse(expected_to_apply, (key, condition))
            return
        self.test.assertTrue(expected_to_apply, (key, condition))
        self.test.assertEqual(result.created, current is None)
        self.test.assertGreater(result.version, self.revision)
        expires = None if ttl is None else self.clock.seconds() + ttl
        self.test.assertEqual(result.expires, expires)
        self.revision = result.version
        self.model[key] = (value, content_type, result.version, expires)

    def refresh(self, key, ttl, condition) -> None:
        current = self.live(key)
        precondition = _precondition(condition, current)
        expected_to_apply = precondition is None or precondition.holds(
            None if current is None else Record(*current)
        )
        try:
            result = self.call(self.storage.refresh, key, ttl, precondition)
        except PreconditionFailed:
            self.test.assertFalse(expected_to_apply, (key, condition))
            return
        self.test.assertTrue(expected_to_apply, (key, condition))
        if current is None:
            self.test.assertIsNone(result)
            return
        self.test.assertGreater(result.version, self.revision)
        self.revision = result.version
        expires = self.clock.seconds() + ttl
        self.test.assertEqual(result.expires, expires)
        self.model[key] = (current[0], current[1], result.version, expires)

    def advance(self, seconds) -> None:
        """Move the clock on, and read every key the model has held there."""
        self.call(self.clock.advance, seconds)
        for key in list(self.model):
            self.get(key)

    def reap(self) -> None:
        """
        Reap what is due: every key past its expiry by a reaper's interval
        is then gone from the store, every live key still in it.
        """

        def reap_all():
            more = self.storage.reap()
            if isinstance(more, Deferred):
                return more.addCallback(lambda more: more and reap_all())
            return more and reap_all()

        self.call(reap_all)
        count, _ = self.call(self.storage.stats)
        now = self.clock.seconds()
        living = len(self.living())
        # Expired within a reaper's interval (0.2 s): may not be reaped yet.
        recent = [e for e in self.model.values() if e[3] and now - 0.2 < e[3] <= now]
        self.test.assertGreaterEqual(count, living)
        self.test.assertLessEqual(count, living + len(recent), "overdue keys held")

    def restart(self) -> None:
        self.storage = self.test.restarted(self)

    def delete(self, key, condition) -> None:
        current = self.live(key)
        precondition = _precondition(condition, current)
        if precondition is not None and precondition.exists is False:
            precondition = None
        expected_to_apply = precondition is None or precondition.holds(
            None if current is None else Record(*current)
        )
        try:
            deleted = self.call(self.storage.delete, key, precondition)
        except PreconditionFailed:
            self.test.assertFalse(expected_to_apply)
            return
        self.test.assertTrue(expected_to_apply)
        self.test.assertEqual(deleted, current is not None)
        self.model.pop(key, None)

    def get(self, key) -> None:
        records = [self.call(self.storage.get, key)]
        if IImmediateReads.providedBy(self.storage):
            records.append(self.call(self.storage.get_now, key))
        expected = self.live(key)
        for record in records:
            if expected is None:
                self.test.assertIsNone(record)
            else:
                self.test.assertEqual(
                    (record.value, record.content_type, record.version, record.expires),
                    expected,
                )

    def keys(self, prefix, after, limit) -> None:
        expected = sorted(
            k
            for k in self.living()
            if k.startswith(prefix) and (after is None or k > after)
        )[:limit]
        self.test.assertEqual(
            self.call(self.storage.keys, prefix, after, limit).items, expected
        )

    def finish(self) -> None:
        """Once every time to live has run out and been reaped, only lasting keys."""
        self.advance(10)
        self.reap()
        count, _ = self.call(self.storage.stats)
        self.test.assertEqual(count, len(self.living()))


class _PropertyMixin:
    """The property test, for a L{TestCase} that provides C{make_storage}."""

    examples = 60

    def make_storage(self, clock: Clock):
        raise NotImplementedError

    def restarted(self, check: _ModelCheck):
        """The store, after a restart; without files, the same one."""
        return check.storage

    def release(self, storage) -> None:
        """Called in the reactor thread after each example."""

    def test_agrees_with_a_dict(self):
        @model_settings(self.examples)
        @given(OPERATIONS)
        def agrees(operations):
            clock = Clock()
            clock.advance(START)
            storage = self.make_storage(clock)
            check = _ModelCheck(self, storage, clock)
            try:
                check.run(operations)
                check.finish()
                self.after_example(check)
            finally:
                blockingCallFromThread(reactor, self.release_async, check.storage)

        return deferToThread(agrees)

    def release_async(self, storage):
        return maybeDeferred(self.release, storage)

    def after_example(self, check: _ModelCheck) -> None:
        pass


class DictStorageProperties(_PropertyMixin, TestCase):
    examples = 200

    def make_storage(self, clock):
        # Blocks of two keys: nine keys are enough to split and merge them.
        return DictStorage(PackedRecords(block_size=2), clock=clock)


class JournaledDictStorageProperties(_PropertyMixin, TestCase):
    def make_storage(self, clock, directory=None):
        directory = directory or tempfile.mkdtemp(prefix="ersid-journal-")
        expiry = ExpiryIndex(0.1)
        recovered = recover(directory, directory + "/snapshot.json", expiry=expiry)
        journal = blockingCallFromThread(
            reactor, lambda: Journal(directory, recovered.revision, "always", reactor)
        )
        storage = DictStorage(
            recovered.records, recovered.revision, journal, clock=clock, expiry=expiry
        )
        storage.directory = directory
        return storage

    def restarted(self, check: _ModelCheck):
        """The store as a restart recovers it from the journal alone."""
        blockingCallFromThread(reactor, check.storage.journal.stop)
        return self.make_storage(check.clock, check.storage.directory)

    def after_example(self, check: _ModelCheck) -> None:
        blockingCallFromThread(reactor, check.storage.journal.stop)
        replayed = {}
        for entry in read_journal(check.storage.directory, 0):
            if entry.record is None:
                replayed.pop(entry.key, None)
            else:
                record = entry.record
                replayed[entry.key] = (
                    record.value,
                    record.content_type,
                    record.version,
                    record.expires,
                )
        self.assertEqual(replayed, check.living())

    def release(self, storage) -> None:
        shutil.rmtree(storage.directory, ignore_errors=True)


class MySQLStorageProperties(_PropertyMixin, TestCase):
    examples = 25

    def setUp(self):
        from ._mariadb import shared_server

        self.server = shared_server()

    def fresh_settings(self):
        return self.server.fresh_database()

    def make_storage(self, clock):
        from ersid.mysql.storage import MySQLStorage

        settings = self.fresh_settings()
        return blockingCallFromThread(
            reactor,
            lambda: MySQLStorage(
                settings, min_connections=1, max_connections=2, clock=clock
            ),
        )

    def release(self, storage) -> None:
        storage.disconnect()


class GaleraStorageProperties(MySQLStorageProperties):
    """The same model, through the second node of a Galera cluster."""

    examples = 15

    def setUp(self):
        from ._mariadb import shared_cluster

        self.cluster = shared_cluster()

    def fresh_settings(self):
        self.cluster.fresh_database()
        return self.cluster.settings(1, 0, 2)
