"""
C{GET /_watch} over real loopback connections: streams, resuming, history
that is gone, slow readers, limits, progress, initial state, long polls.
"""

from __future__ import annotations

import json
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    connectProtocol,
    serverFromString,
)
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import TestCase

from ersid.embedded.memory import DictStorage
from ersid.watch.history import History
from ersid.watch.hub import Hub
from ersid.web.app import Service
from ersid.web.site import makeSite
from ersid.web.watch import MAX_WAIT

from .._helpers import http
from .._sse import EventReader


class _Watching(TestCase):
    def setUp(self):
        self.clock = Clock()
        self.hub = Hub(History(), self.clock, progress_interval=5)
        self.storage = DictStorage(publish=self.hub.publish)
        self.service = Service(self.storage, hub=self.hub)
        self.http = http()

    async def url(self) -> str:
        if not hasattr(self, "_url"):
            self._url = await _serve(self, self.service)
        return self._url

    async def watch(self, query: str = "", headers=None) -> EventReader:
        response = await self.http.get(
            await self.url() + "/_watch" + query, headers=headers, unbuffered=True
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(
            response.headers.getRawHeaders("content-type"), ["text/event-stream"]
        )
        reader = EventReader()
        response.deliverBody(reader)
        self.addCleanup(self._close, reader)
        return reader

    def _close(self, reader: EventReader) -> Deferred[None]:
        if reader.transport is not None and not reader.ended.called:
            reader.transport.stopProducing()
        return reader.ended

    async def error(self, query: str, status: int, headers=None) -> dict:
        response = await self.http.get(
            await self.url() + "/_watch" + query, headers=headers
        )
        self.assertEqual(response.code, status)
        return json.loads(await treq.content(response))

    def stop_hub(self) -> Deferred[None]:
        stopped = self.hub.stopService()
        self.clock.advance(0)  # its two turns, for the streams' last words
        self.clock.advance(0)
        return stopped

    async def put(self, key: str, value: bytes = b"v") -> int:
        return (await self.storage.set(key, value)).version


class WatchTests(_Watching):
    def test_stream_of_changes_under_a_prefix(self):
        async def check():
            await self.put("app/old")
            reader = await self.watch("?prefix=app/&values=1")
            await self.put("app/a", b"\xff")
            await self.put("other")
            await self.storage.delete("app/a")
            await reader.count(2)
            self.assertEqual(
                reader.events,
                [
                    (
                        "put",
                        "2",
                        {
                            "type": "put",
                            "key": "app/a",
                            "revision": 2,
                            "content_type": "application/octet-stream",
                            "value": {"base64": "/w=="},
                        },
                    ),
                    ("delete", "4", {"type": "delete", "key": "app/a", "revision": 4}),
                ],
            )
            self.assertEqual(len(self.hub), 1)
            reader.transport.stopProducing()
            await _turns(self.hub, 0)  # a watcher gone is forgotten

        return Deferred.fromCoroutine(check())

    def test_resume_with_last_event_id_or_since(self):
        async def check():
            for n in range(5):
                await self.put(f"k{n}")
            # Last-Event-ID wins over since: a browser reconnects to the same URL.
            reader = await self.watch("?since=0", {"Last-Event-ID": ["3"]})
            await reader.count(2)
            self.assertEqual(reader.changes(), [("put", 4, "k3"), ("put", 5, "k4")])
            since = await self.watch("?since=4")
            await self.put("k5")
            await since.count(2)
            self.assertEqual(since.changes(), [("put", 5, "k4"), ("put", 6, "k5")])

        return Deferred.fromCoroutine(check())

    def test_history_gone_before_streaming(self):
        async def check():
            self.hub.history.max_changes = 2
            for n in range(5):
                await self.put(f"k{n}")
            error = await self.error("?since=1", 410)
            self.assertEqual(error["error"], "history_gone")
            self.assertEqual((error["oldest"], error["revision"]), (3, 5))
            error = await self.error("?since=2", 410, {"Last-Event-ID": ["2"]})
            reader = await self.watch("?since=3")
            await reader.count(2)
            self.assertEqual([r for _, r, _ in reader.changes()], [4, 5])
            # Past the store's revision: what the client saw was lost in a
            # crash, its revisions to be taken again: it must re-sync.
            for query in ("?since=6", "?since=6&wait=1"):
                error = await self.error(query, 410)
                self.assertIn("past the store's", error["message"])
                self.assertEqual(error["revision"], 5)

        return Deferred.fromCoroutine(check())

    def test_bad_requests(self):
        async def check():
            for query in [
                "?since=-1",
                "?since=x",
                "?wait=-1",
                "?wait=soon",
                "?values=2",
                "?initial=1&since=0",
                "?initial=1&wait=1",
            ]:
                error = await self.error(query, 400)
                self.assertEqual(error["error"], "bad_query", query)
            error = await self.error("", 400, {"Last-Event-ID": ["abc"]})
            self.assertIn("Last-Event-ID", error["message"])
            self.assertEqual(len(self.hub), 0)

        return Deferred.fromCoroutine(check())

    def test_a_stream_starts_with_its_revision(self):
        async def check():
            await self.put("a")
            response = await self.http.get(
                await self.url() + "/_watch", unbuffered=True
            )
            reader = _Raw()
            response.deliverBody(reader)
            await reader.until(b"\n\n")
            self.assertEqual(reader.received, b"retry: 1000\nid: 1\n\n")
            reader.transport.stopProducing()

        return Deferred.fromCoroutine(check())

    def test_slow_reader_catches_up_exactly(self):
        async def check():
            reader = await self.watch("?values=1")
            reader.transport.pauseProducing()  # the client stops reading
            big = b"x" * 100_000
            for n in range(40):
                await self.put(f"k{n}", big)
            reader.transport.resumeProducing()
            await reader.count(40)
            self.assertEqual(
                reader.changes(), [("put", n + 1, f"k{n}") for n in range(40)]
            )
            self.assertEqual(self.hub.dropped, 0)

        return Deferred.fromCoroutine(check())

    def test_slow_reader_dropped_past_its_lag_limit(self):
        async def check():
            self.hub.lag_bytes = 1_000_000
            reader = await self.watch("?values=1")
            reader.transport.pauseProducing()
            big = b"x" * 100_000
            written = 0
            while self.hub.dropped == 0 and written < 500:
                await self.put(f"k{written}", big)
                written += 1
            self.assertEqual(self.hub.dropped, 1)
            self.assertEqual(len(self.hub), 0)
            reader.transport.resumeProducing()
            await reader.ended
            name, ident, data = reader.events[-1]
            self.assertEqual((name, ident), ("compacted", None))
            self.assertIn("too slowly", data["reason"])
            last = reader.changes()[-1][1]
            self.assertEqual(data["last"], last)
            # It can resume from what it saw last, the history keeping it.
            again = await self.watch("?values=1", {"Last-Event-ID": [str(last)]})
            await again.count(written - last)
            self.assertEqual(
                [r for _, r, _ in reader.changes() + again.changes()],
                list(range(1, written + 1)),
            )
            health = json.loads(
                await treq.content(await self.http.get(await self.url() + "/_health"))
            )
            self.assertEqual(health["watch"]["dropped_slow"], 1)

        return Deferred.fromCoroutine(check())

    def test_history_lost_while_behind_ends_with_compacted(self):
        async def check():
            self.hub.history.max_changes = 5
            reader = await self.watch("?values=1")
            reader.transport.pauseProducing()
            big = b"x" * 200_000
            for n in range(20):
                await self.put(f"k{n}", big)
            reader.transport.resumeProducing()
            await reader.ended
            name, _, data = reader.events[-1]
            self.assertEqual(name, "compacted")
            self.assertEqual(data["oldest"], 15)
            seen = [r for _, r, _ in reader.changes()]
            self.assertEqual(seen, list(range(1, len(seen) + 1)))  # no gap before
            self.assertLess(seen[-1], 15)

        return Deferred.fromCoroutine(check())

    def test_watcher_limit(self):
        async def check():
            self.hub.max_watchers = 2
            first = await self.watch()
            await self.watch("?prefix=a")
            error = await self.error("?prefix=b", 503)
            self.assertEqual(error["error"], "too_many_watchers")
            error = await self.error("?wait=1", 503)
            first.transport.stopProducing()
            await _turns(self.hub, 1)
            await self.watch("?prefix=b")

        return Deferred.fromCoroutine(check())

    def test_progress_only_when_nothing_matches(self):
        async def check():
            self.hub.startService()
            self.addCleanup(self.stop_hub)
            reader = await self.watch("?prefix=app/")
            await self.put("other")
            self.clock.advance(5)
            await reader.count(1)
            self.assertEqual(reader.events, [("progress", "1", {"revision": 1})])
            await self.put("app/x")
            await reader.count(2)
            self.clock.advance(5)  # an event went out: no progress due
            await self.put("app/y")
            self.clock.advance(5)
            self.clock.advance(5)
            await reader.count(4)
            self.assertEqual(
                [(name, ident) for name, ident, _ in reader.events],
                [("progress", "1"), ("put", "2"), ("put", "3"), ("progress", "3")],
            )

        return Deferred.fromCoroutine(check())

    def test_initial_state_then_changes(self):
        async def check():
            await self.put("app/a", b"1")
            await self.put("app/b", b"2")
            await self.put("other")
            reader = await self.watch("?prefix=app/&initial=1&values=1")
            await self.put("app/c", b"3")
            await reader.count(4)
            self.assertEqual(
                [
                    (name, ident, data.get("key"), data.get("value"))
                    for name, ident, data in reader.events
                ],
                [
                    ("put", None, "app/a", "1"),
                    ("put", None, "app/b", "2"),
                    ("synced", "3", None, None),
                    ("put", "4", "app/c", "3"),
                ],
            )

        return Deferred.fromCoroutine(check())

    def test_long_poll(self):
        async def check():
            url = await self.url() + "/_watch"
            await self.put("a")
            response = await self.http.get(url + "?since=0&wait=30")
            answer = json.loads(await treq.content(response))
            self.assertEqual(
                answer,
                {
                    "events": [
                        {
                            "type": "put",
                            "key": "a",
                            "revision": 1,
                            "content_type": "application/octet-stream",
                        }
                    ],
                    "revision": 1,
                    "more": False,
                },
            )
            # Nothing new: it waits; a change that does not match does not
            # answer it; the timeout does, with the current revision.
            waiting = self.http.get(url + "?since=1&wait=30&prefix=p")
            await _turns(self.hub, 1)
            await self.put("q")
            self.clock.advance(30)
            answer = json.loads(await treq.content(await waiting))
            self.assertEqual(answer, {"events": [], "revision": 2, "more": False})
            self.assertEqual(len(self.hub), 0)
            # A matching change answers at once.
            waiting = self.http.get(url + "?since=2&wait=30&prefix=p")
            await _turns(self.hub, 1)
            await self.put("p1")
            answer = json.loads(await treq.content(await waiting))
            self.assertEqual([e["revision"] for e in answer["events"]], [3])
            self.assertEqual(self.clock.getDelayedCalls(), [])
            # The wait is capped.
            waiting = self.http.get(url + "?since=3&wait=3600")
            await _turns(self.hub, 1)
            (timer,) = self.clock.getDelayedCalls()
            self.assertEqual(timer.getTime(), self.clock.seconds() + MAX_WAIT)
            self.clock.advance(MAX_WAIT)
            self.assertEqual((await waiting).code, 200)

        return Deferred.fromCoroutine(check())


class AttackFindingsTests(_Watching):
    """What a hostile client found, each fixed."""

    def test_long_poll_answers_at_most_a_megabyte_but_one_event(self):
        async def check():
            big = b"\x01" * 300_000  # six bytes of JSON each
            for n in range(3):
                await self.put(f"k{n}", big)
            response = await self.http.get(
                await self.url() + "/_watch?since=0&wait=0&values=1"
            )
            body = await treq.content(response)
            answer = json.loads(body)
            self.assertEqual(
                ([e["revision"] for e in answer["events"]], answer["more"]), ([1], True)
            )
            self.assertLess(len(body), 2_000_000)
            response = await self.http.get(await self.url() + "/_watch?since=1&wait=0")
            answer = json.loads(await treq.content(response))
            self.assertEqual(
                ([e["revision"] for e in answer["events"]], answer["more"]),
                ([2, 3], False),
            )

        return Deferred.fromCoroutine(check())

    def test_long_poll_closed_by_its_client_frees_its_place(self):
        async def check():
            port = int((await self.url()).rsplit(":", 1)[1])
            endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
            client = await connectProtocol(endpoint, _Raw())
            client.transport.write(b"GET /_watch?wait=30 HTTP/1.1\r\nHost: x\r\n\r\n")
            await _turns(self.hub, 1)
            client.transport.loseConnection()  # a FIN, as a timed-out client sends
            await _turns(self.hub, 0)
            self.assertEqual(self.clock.getDelayedCalls(), [])

        return Deferred.fromCoroutine(check())

    def test_head_answers_at_once_without_a_watcher(self):
        async def check():
            response = await self.http.head(await self.url() + "/_watch")
            self.assertEqual(response.code, 200)
            self.assertEqual(
                response.headers.getRawHeaders("content-type"), ["text/event-stream"]
            )
            self.assertEqual(len(self.hub), 0)

        return Deferred.fromCoroutine(check())


class _Raw(Protocol):
    def __init__(self) -> None:
        self.received = b""
        self._waiting: tuple[bytes, Deferred[None]] | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self._waiting and self._waiting[0] in self.received:
            waiting, self._waiting = self._waiting[1], None
            waiting.callback(None)

    def until(self, marker: bytes) -> Deferred[None]:
        waiting: Deferred[None] = Deferred()
        self._waiting = (marker, waiting)
        return waiting


async def _turns(hub: Hub, watchers: int) -> None:
    """Let the reactor turn until C{hub} holds C{watchers} watchers."""
    while len(hub) != watchers:
        await deferLater(reactor, 0)


async def _serve(test: TestCase, service: Service) -> str:
    """
    Serve C{service} on a loopback port for C{test}, whose end closes every
    connection still open, server side: a stream does not end by itself.
    """
    site = makeSite(service)
    build, closed = site.buildProtocol, []

    def tracked(address: Any) -> Any:
        connection = build(address)
        lost: Deferred[None] = Deferred()
        connection_lost = connection.connectionLost

        def connectionLost(reason: Any = None) -> None:
            connection_lost(reason)
            lost.callback(None)

        connection.connectionLost = connectionLost
        closed.append((connection, lost))
        return connection

    site.buildProtocol = tracked
    port = await serverFromString(reactor, "tcp:0:interface=127.0.0.1").listen(site)

    async def close() -> None:
        await port.stopListening()
        for connection, lost in closed:
            if not lost.called:
                connection.transport.abortConnection()
            await lost

    test.addCleanup(lambda: Deferred.fromCoroutine(close()))
    return f"http://127.0.0.1:{port.getHost().port}"
