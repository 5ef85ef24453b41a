"""
The watch against a model (Hypothesis): random writes, deletes and
conditional writes, with watchers on random prefixes that start at random
revisions, fall behind, drop and resume from the last id they saw (as a
browser does). Every watcher must see exactly the model's changes after its
revision, in order, or be told it cannot (410, C{compacted}): never a gap,
never a duplicate; one whose token may read only some keys sees exactly
the changes of those. Run on the dict backend, on the journaled one across
restarts, and on MySQL with two nodes (watched through one, written
through both), on one server and on two nodes of a Galera cluster.

Watchers are the real L{EventStream}s of C{GET /_watch}, on requests kept
in memory; Hypothesis runs in a thread and calls into the reactor.
"""

from __future__ import annotations

import shutil
import tempfile
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.threads import blockingCallFromThread, deferToThread
from twisted.trial.unittest import TestCase
from twisted.web.http_headers import Headers

from ersid.auth import ANYONE, Grant, NotPermitted
from ersid.embedded.journal import Journal
from ersid.embedded.memory import DictStorage
from ersid.embedded.recovery import recover
from ersid.storage import Precondition, PreconditionFailed
from ersid.watch.history import History
from ersid.watch.hub import Hub
from ersid.web.errors import ApiError
from ersid.web.watch import serve_watch

from .._helpers import model_settings
from .._sse import EventReader

KEYS = st.sampled_from(["a", "a/1", "a/2", "ab", "b", "b/1"])
PREFIXES = st.sampled_from(["", "a", "a/", "b/", "c"])
# What a watcher's token may read: everything, or keys under these.
READABLE = st.sampled_from([None, ("a/",), ("a/2", "b"), ("ab", "b/1")])
OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("set"), KEYS, st.sampled_from([None, "absent", "current"])),
        st.tuples(st.just("delete"), KEYS),
        st.tuples(st.just("watch"), PREFIXES, st.integers(0, 40), READABLE),
        st.tuples(st.just("drop"), st.integers(0, 9)),
        st.tuples(st.just("pause"), st.integers(0, 9)),
        st.tuples(st.just("resume"), st.integers(0, 9)),
        st.tuples(st.just("restart")),
    ),
    max_size=50,
)


class _Request:
    """What an L{EventStream} writes to, kept in memory; it can back up."""

    def __init__(self, query: dict[bytes, list[bytes]], last_id: str | None) -> None:
        self.args = query
        self.method = b"GET"
        self.requestHeaders = Headers()
        if last_id is not None:
            self.requestHeaders.setRawHeaders(b"last-event-id", [last_id.encode()])
        self.code = 200
        self.producer: Any = None
        self.reader: EventReader | None = None

    def getHeader(self, name: bytes) -> bytes | None:
        values = self.requestHeaders.getRawHeaders(name)
        return None if values is None else values[0]

    def setHeader(self, name: bytes, value: bytes) -> None:
        pass

    def setResponseCode(self, code: int) -> None:
        self.code = code

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        assert self.reader is not None
        self.reader.dataReceived(data)


class _Watcher:
    """A client watching from C{since}, resuming by itself."""

    def __init__(self, prefix: str, since: int, grant: Grant) -> None:
        self.prefix = prefix
        self.grant = grant
        self.since = since
        self.seen: list[tuple[str, int, str]] = []
        self.last_id: str | None = None
        self.told_gone = False
        self.request: _Request | None = None
        self.stream: Deferred[bytes] | None = None
        self.paused = False


class _Backend:
    """A store and the hub it publishes to; C{restart} if it can."""

    def __init__(self, history_size: int) -> None:
        self.history_size = history_size
        self.clock = Clock()

    async def start(self) -> None:
        self.hub = Hub(History(0, self.history_size), self.clock)
        self.storage = self.writer = DictStorage(publish=self.hub.publish)

    async def caught_up(self, revision: int) -> None:
        """Return once the hub has published every change up to C{revision}."""

    async def restart(self) -> bool:
        return False

    async def stop(self) -> None:
        pass


class _Journaled(_Backend):
    async def start(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="ersid-watch-")
        await self._open()

    async def _open(self) -> None:
        history = History(0, self.history_size)
        recovered = recover(self.directory, self.directory + "/none.json", history)
        self.hub = Hub(history, self.clock)
        self.journal = Journal(self.directory, recovered.revision, "no", reactor)
        self.journal.start()
        self.storage = self.writer = DictStorage(
            recovered.records, recovered.revision, self.journal, self.hub.publish
        )

    async def restart(self) -> bool:
        await self.storage.close()
        await self.journal.stop()
        self.hub.stopService()
        await self._open()
        return True

    async def stop(self) -> None:
        await self.journal.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


class _TwoMySQLNodes(_Backend):
    def __init__(self, history_size: int, fresh_database: Any) -> None:
        """
        @param fresh_database: makes a new database and returns the settings
            of the two nodes (on one server, or on two of a cluster).
        """
        super().__init__(history_size)
        self.fresh_database = fresh_database

    async def start(self) -> None:
        from ersid.mysql.changes import ChangeFeed
        from ersid.mysql.storage import MySQLStorage

        self.nodes = []
        for settings in self.fresh_database():
            storage = MySQLStorage(settings, min_connections=1, max_connections=2)
            hub = Hub(History(0, self.history_size), self.clock)
            hub.ready = False
            feed = ChangeFeed(storage, hub, 3600, self.clock)
            self.nodes.append((storage, hub, feed))
        self.storage, self.hub, self.feed = self.nodes[0]
        self.turn = 0
        await self._poll(self.feed)

    @property
    def writer(self) -> Any:
        # Writes go through both nodes in turn; watchers watch the first.
        self.turn += 1
        return self.nodes[self.turn % 2][0]

    async def _poll(self, feed: Any) -> None:
        await feed.poll()
        self.hub.ready = True

    async def caught_up(self, revision: int) -> None:
        while self.hub.revision < revision:
            await self._poll(self.feed)

    async def stop(self) -> None:
        for storage, _, _ in self.nodes:
            storage.disconnect()


class _Model:
    def __init__(self, test: TestCase, backend: _Backend) -> None:
        self.test = test
        self.backend = backend
        self.store: dict[str, int] = {}
        self.changes: list[tuple[str, int, str]] = []
        self.revision = 0
        self.watchers: list[_Watcher] = []

    async def run(self, operations: list[tuple]) -> None:
        await self.backend.start()
        try:
            for operation in operations:
                await getattr(self, operation[0])(*operation[1:])
            await self.finish()
        finally:
            for watcher in self.watchers:
                self._disconnect(watcher)
            await self.backend.stop()

    async def set(self, key: str, condition: str | None) -> None:
        precondition = None
        if condition == "absent":
            precondition = Precondition.if_absent()
        elif condition == "current":
            precondition = Precondition.if_version([self.store.get(key, 10**6)])
        try:
            result = await self.backend.writer.set(
                key, b"v", "text/plain", precondition
            )
        except PreconditionFailed:
            return
        self.store[key] = result.version
        self._changed("put", result.version, key)

    async def delete(self, key: str) -> None:
        if await self.backend.writer.delete(key):
            del self.store[key]
            _, revision = await self.backend.storage.stats()
            self._changed("delete", revision, key)

    def _changed(self, kind: str, revision: int, key: str) -> None:
        self.test.assertGreater(revision, self.revision)
        self.revision = revision
        self.changes.append((kind, revision, key))

    async def watch(
        self, prefix: str, since: int, readable: tuple[str, ...] | None
    ) -> None:
        grant = ANYONE if readable is None else Grant("w", read=readable)
        watcher = _Watcher(prefix, min(since, self.revision), grant)
        self.watchers.append(watcher)
        await self._connect(watcher)

    async def _connect(self, watcher: _Watcher) -> None:
        query = {b"prefix": [watcher.prefix.encode()]}
        if watcher.last_id is None:
            query[b"since"] = [str(watcher.since).encode()]
        request = _Request(query, watcher.last_id)
        request.reader = reader = EventReader()
        reader.dataReceived = _recording(reader, watcher)
        watcher.request = request
        await self.backend.caught_up(watcher.since)
        stream = Deferred.fromCoroutine(
            serve_watch(self.backend.hub, self.backend.storage, request, watcher.grant)
        )
        watcher.paused = False
        failure = []
        stream.addErrback(failure.append)
        if failure and failure[0].check(NotPermitted):
            self.test.assertEqual(watcher.grant.readable_under(watcher.prefix), ())
            watcher.told_gone = True  # refused: it may read nothing there
            watcher.request = None
            return
        if failure:
            error = failure[0].value
            self.test.assertIsInstance(error, ApiError)
            self.test.assertEqual(error.status, 410)
            resume_from = int(watcher.last_id or watcher.since)
            self.test.assertLess(resume_from, error.details["oldest"])
            watcher.told_gone = True
            watcher.request = None
            return
        watcher.stream = stream

    def _disconnect(self, watcher: _Watcher) -> None:
        if watcher.stream is not None and not watcher.stream.called:
            watcher.stream.cancel()  # as Klein does when the client goes
        watcher.stream = watcher.request = None

    def _watcher(self, index: int) -> _Watcher | None:
        live = [w for w in self.watchers if not w.told_gone]
        return live[index % len(live)] if live else None

    async def drop(self, index: int) -> None:
        watcher = self._watcher(index)
        if watcher is not None:
            self._disconnect(watcher)
            await self._connect(watcher)

    async def pause(self, index: int) -> None:
        watcher = self._watcher(index)
        if watcher is not None and watcher.request and watcher.request.producer:
            watcher.request.producer.pauseProducing()
            watcher.paused = True

    async def resume(self, index: int) -> None:
        watcher = self._watcher(index)
        if watcher is not None and watcher.paused and watcher.request.producer:
            watcher.paused = False
            watcher.request.producer.resumeProducing()

    async def restart(self) -> None:
        if await self.backend.restart():
            for watcher in self.watchers:
                if watcher.stream is not None:
                    self.test.assertTrue(watcher.stream.called)  # ended by the stop
                    watcher.stream = watcher.request = None
                    await self._connect(watcher)

    async def finish(self) -> None:
        await self.backend.caught_up(self.revision)
        for watcher in self.watchers:
            if watcher.paused and watcher.request and watcher.request.producer:
                watcher.request.producer.resumeProducing()
            if watcher.stream is not None and watcher.stream.called:
                await self._connect(watcher)  # ended by compacted: resume
        for watcher in self.watchers:
            expected = [
                change
                for change in self.changes
                if change[1] > watcher.since
                and change[2].startswith(watcher.prefix)
                and watcher.grant.may_read(change[2])
            ]
            if watcher.told_gone:
                self.test.assertEqual(watcher.seen, expected[: len(watcher.seen)])
            else:
                self.test.assertEqual(watcher.seen, expected)


def _recording(reader: EventReader, watcher: _Watcher) -> Any:
    """Feed C{reader}, keeping C{watcher}'s changes and last id."""
    receive = reader.dataReceived

    def dataReceived(data: bytes) -> None:
        before = len(reader.events)
        receive(data)
        for name, _, event in reader.events[before:]:
            if name in ("put", "delete"):
                watcher.seen.append((name, event["revision"], event["key"]))
        if reader.last_id is not None:
            watcher.last_id = reader.last_id

    return dataReceived


class _ModelMixin:
    examples = 300

    def backend(self, history_size: int) -> _Backend:
        return _Backend(history_size)

    def test_every_watcher_sees_exactly_the_changes(self):
        @model_settings(self.examples)
        @given(OPERATIONS, st.sampled_from([3, 8, 1000]))
        def agrees(operations, history_size):
            model = _Model(self, self.backend(history_size))
            blockingCallFromThread(
                reactor, lambda: Deferred.fromCoroutine(model.run(operations))
            )

        return deferToThread(agrees)


class DictWatchModel(_ModelMixin, TestCase):
    pass


class JournaledWatchModel(_ModelMixin, TestCase):
    examples = 300

    def backend(self, history_size: int) -> _Backend:
        return _Journaled(history_size)


class MySQLWatchModel(_ModelMixin, TestCase):
    examples = 30

    def setUp(self):
        from .._mariadb import shared_server

        self.server = shared_server()

    def backend(self, history_size: int) -> _Backend:
        return _TwoMySQLNodes(history_size, lambda: [self.server.fresh_database()] * 2)


class GaleraWatchModel(_ModelMixin, TestCase):
    """Watched through one node of a Galera cluster, written through two."""

    examples = 15

    def setUp(self):
        from .._mariadb import shared_cluster

        self.cluster = shared_cluster()

    def fresh_database(self) -> list[Any]:
        self.cluster.fresh_database()
        return [self.cluster.settings(0, 1, 2), self.cluster.settings(1, 0, 2)]

    def backend(self, history_size: int) -> _Backend:
        return _TwoMySQLNodes(history_size, self.fresh_database)
