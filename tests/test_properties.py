"""
Property-based tests: random sequences of operations, conditional writes
included, run against each storage backend and against a plain dict model;
they must agree at every step. With the journal, a replay of it must give
the model's store too.

Hypothesis runs in a thread and calls the backends in the reactor thread,
so that backends whose Deferreds fire later (MySQL, the journal) work.
"""

from __future__ import annotations

import shutil
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import maybeDeferred
from twisted.internet.threads import blockingCallFromThread, deferToThread
from twisted.trial.unittest import TestCase

from ersid.embedded.journal import Journal
from ersid.embedded.memory import DictStorage
from ersid.embedded.records import PackedRecords
from ersid.embedded.recovery import read_journal
from ersid.storage import IImmediateReads, Precondition, PreconditionFailed, Record

KEYS = st.sampled_from(["a", "A", "a ", "a/b", "a/c", "b", "é", "🔑", "a%2F"])
VALUES = st.binary(max_size=20)
CONTENT_TYPES = st.sampled_from(["text/plain", "application/octet-stream"])
CONDITIONS = st.sampled_from([None, "absent", "exists", "current", "stale"])
OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("set"), KEYS, VALUES, CONTENT_TYPES, CONDITIONS),
        st.tuples(st.just("delete"), KEYS, CONDITIONS),
        st.tuples(st.just("get"), KEYS),
        st.tuples(
            st.just("keys"),
            st.sampled_from(["", "a", "a/", "b", "z"]),
            st.one_of(st.none(), KEYS),
            st.integers(1, 4),
        ),
    ),
    max_size=40,
)


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
    """Runs one sequence against a backend and the model, comparing."""

    def __init__(self, test: TestCase, storage) -> None:
        self.test = test
        self.storage = storage
        self.model: dict[str, tuple[bytes, str, int]] = {}
        self.revision = 0

    def call(self, method, *args):
        return blockingCallFromThread(reactor, method, *args)

    def run(self, operations) -> None:
        for operation in operations:
            getattr(self, operation[0])(*operation[1:])

    def set(self, key, value, content_type, condition) -> None:
        current = self.model.get(key)
        precondition = _precondition(condition, current)
        expected_to_apply = precondition is None or precondition.holds(
            None if current is None else Record(*current)
        )
        try:
            result = self.call(self.storage.set, key, value, content_type, precondition)
        except PreconditionFailed:
            self.test.assertFalse(expected_to_apply, (key, condition))
            return
        self.test.assertTrue(expected_to_apply, (key, condition))
        self.test.assertEqual(result.created, current is None)
        self.test.assertGreater(result.version, self.revision)
        self.revision = result.version
        self.model[key] = (value, content_type, result.version)

    def delete(self, key, condition) -> None:
        current = self.model.get(key)
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
        expected = self.model.get(key)
        for record in records:
            if expected is None:
                self.test.assertIsNone(record)
            else:
                self.test.assertEqual(
                    (record.value, record.content_type, record.version), expected
                )

    def keys(self, prefix, after, limit) -> None:
        expected = sorted(
            k
            for k in self.model
            if k.startswith(prefix) and (after is None or k > after)
        )[:limit]
        self.test.assertEqual(
            self.call(self.storage.keys, prefix, after, limit).items, expected
        )

    def finish(self) -> None:
        count, _ = self.call(self.storage.stats)
        self.test.assertEqual(count, len(self.model))


class _PropertyMixin:
    """The property test, for a L{TestCase} that provides C{make_storage}."""

    examples = 60

    def make_storage(self):
        raise NotImplementedError

    def release(self, storage) -> None:
        """Called in the reactor thread after each example."""

    def test_agrees_with_a_dict(self):
        @settings(
            max_examples=self.examples,
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        )
        @given(OPERATIONS)
        def agrees(operations):
            storage = self.make_storage()
            check = _ModelCheck(self, storage)
            try:
                check.run(operations)
                check.finish()
                self.after_example(check)
            finally:
                blockingCallFromThread(reactor, self.release_async, storage)

        return deferToThread(agrees)

    def release_async(self, storage):
        return maybeDeferred(self.release, storage)

    def after_example(self, check: _ModelCheck) -> None:
        pass


class DictStorageProperties(_PropertyMixin, TestCase):
    examples = 200

    def make_storage(self):
        # Blocks of two keys: nine keys are enough to split and merge them.
        return DictStorage(PackedRecords(block_size=2))


class JournaledDictStorageProperties(_PropertyMixin, TestCase):
    def make_storage(self):
        directory = tempfile.mkdtemp(prefix="ersid-journal-")
        journal = blockingCallFromThread(
            reactor, lambda: Journal(directory, 0, "always", reactor)
        )
        storage = DictStorage(journal=journal)
        storage.directory = directory
        return storage

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
                )
        self.assertEqual(replayed, check.model)

    def release(self, storage) -> None:
        shutil.rmtree(storage.directory, ignore_errors=True)


class MySQLStorageProperties(_PropertyMixin, TestCase):
    examples = 25

    def setUp(self):
        from ._mariadb import shared_server

        self.server = shared_server()

    def make_storage(self):
        from ersid.mysql.storage import MySQLStorage

        settings = self.server.fresh_database()
        return blockingCallFromThread(
            reactor,
            lambda: MySQLStorage(settings, min_connections=1, max_connections=2),
        )

    def release(self, storage) -> None:
        storage.disconnect()
