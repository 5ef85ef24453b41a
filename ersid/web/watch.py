"""
C{GET /_watch}: the changes under a prefix, as Server-Sent Events
(L{EventStream}) or, with C{wait}, as one JSON answer to a long poll
(L{LongPoll}); both are watchers of the daemon's L{Hub}.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.web.iweb import IRequest
from zope.interface import implementer

from ersid.snapshots.format import encode_value
from ersid.storage import IStorage
from ersid.watch.history import Batch, Change, HistoryGone, event
from ersid.watch.hub import Hub, IWatcher, TooManyWatchers
from ersid.web.errors import ApiError, json_body
from ersid.web.parsing import query_text

__all__ = ["MAX_WAIT", "RETRY_MILLISECONDS", "serve_watch"]

# The longest long poll, under the 60 s after which proxies give up.
MAX_WAIT = 55.0
# The most events in one long-poll answer; the next poll gets the rest.
MOST_EVENTS = 1000
# The most bytes of events in one, but for a single larger one.
MOST_BYTES = 1024 * 1024
# How soon a browser's EventSource reconnects.
RETRY_MILLISECONDS = 1000

_WHOLE_NUMBER = re.compile(r"[0-9]{1,19}")
_SECONDS = re.compile(r"[0-9]{1,6}(\.[0-9]{1,6})?")


@attrs.frozen
class _Asked:
    prefix: str
    since: int | None
    resuming: bool
    values: bool
    initial: bool
    wait: float | None


async def serve_watch(hub: Hub, storage: IStorage, request: IRequest) -> bytes:
    """
    Answer a watch request: a stream, a long poll, or a JSON error (raised
    before anything is sent). The body, or C{b""} once a stream has ended.
    """
    asked = _parse(request)
    if request.method == b"HEAD":
        request.setHeader(b"Content-Type", b"text/event-stream")
        request.setHeader(b"Cache-Control", b"no-store")
        return b""
    if asked.wait is not None:
        return await LongPoll(hub, request, asked).answer()
    first: list[bytes] = []
    since = hub.revision if asked.since is None else asked.since
    if asked.initial and not asked.resuming:
        listing = await storage.records(asked.prefix)
        for key, record in listing.items:
            first.append(event("put", _put(key, record, asked.values)))
        since = listing.revision
        first.append(event("synced", {"revision": since}, since))
    return await EventStream(hub, request, asked).stream(since, first)


def _parse(request: IRequest) -> _Asked:
    prefix = query_text(request, "prefix") or ""
    since = _revision(query_text(request, "since"), "since")
    last_id = request.getHeader(b"last-event-id")
    resuming = last_id is not None
    if resuming:
        # A browser reconnects to the same URL: what it saw last wins.
        since = _revision(last_id.decode("latin-1"), "Last-Event-ID")
    values, initial = _flag(request, "values"), _flag(request, "initial")
    wait_text = query_text(request, "wait")
    wait = None
    if wait_text is not None:
        if not _SECONDS.fullmatch(wait_text):
            raise ApiError(400, "bad_query", "wait must be a number of seconds")
        wait = min(float(wait_text), MAX_WAIT)
    if initial and (wait is not None or (since is not None and not resuming)):
        raise ApiError(
            400, "bad_query", "initial is for a stream without since or wait"
        )
    return _Asked(prefix, since, resuming, values, initial, wait)


def _revision(text: str | None, name: str) -> int | None:
    if text is None:
        return None
    if not _WHOLE_NUMBER.fullmatch(text):
        raise ApiError(400, "bad_query", f"{name} must be a revision, a whole number")
    return int(text)


def _flag(request: IRequest, name: str) -> bool:
    text = query_text(request, name)
    if text in (None, "0", "false"):
        return False
    if text in ("", "1", "true"):
        return True
    raise ApiError(400, "bad_query", f"{name} must be 1 or 0")


def _check(hub: Hub, since: int) -> None:
    """
    @raise HistoryGone: unless the changes after C{since} can be had: some
        are no longer kept, or C{since} is past the store's revision (the
        changes up to it were lost in a crash, and their revisions are
        taken again by other writes).
    """
    history = hub.history
    history.check(since)
    if hub.exact and since > history.revision:
        raise HistoryGone(since, history.floor, history.revision)


def _gone(error: HistoryGone) -> ApiError:
    return ApiError(
        410,
        "history_gone",
        str(error),
        details={"oldest": error.oldest, "revision": error.revision},
    )


def _admit(hub: Hub, watcher: IWatcher, since: int) -> None:
    """Check that a watch from C{since} can be served, and add C{watcher}."""
    if not hub.ready:
        raise ApiError(
            503,
            "unavailable",
            "the change log has not been read yet",
            headers={b"Retry-After": b"1"},
        )
    try:
        _check(hub, since)
        hub.add(watcher)
    except HistoryGone as e:
        raise _gone(e) from None
    except TooManyWatchers as e:
        raise ApiError(
            503, "too_many_watchers", str(e), {b"Retry-After": b"5"}
        ) from None


@implementer(IWatcher, IPushProducer)
class EventStream:
    """
    A stream of Server-Sent Events. It is sent changes as they come while
    its client keeps up; when the connection backs up, it stops and only
    counts what it owes, to catch up from the history when the client
    reads again, or to end with a C{compacted} event when it owes more
    than the hub's C{lag_bytes} or the history lost what it owes.
    """

    def __init__(self, hub: Hub, request: IRequest, asked: _Asked) -> None:
        self.prefix = asked.prefix
        self._hub = hub
        self._request = request
        self._values = asked.values
        # The newest revision the client knows of.
        self._after = 0
        self._live = False
        self._paused = False
        self._owed = 0
        self._sent = False
        self._ended = False
        self._done: Deferred[bytes] = Deferred(lambda _: self._gone())

    def __repr__(self) -> str:
        return f"<EventStream {self.prefix!r} after {self._after}>"

    def stream(self, since: int, first: list[bytes]) -> Deferred[bytes]:
        """
        Send C{first}, then the changes after C{since}; fires when the
        stream has ended (Klein then finishes the response).
        """
        self._after = since
        _admit(self._hub, self, since)
        request = self._request
        request.setHeader(b"Content-Type", b"text/event-stream")
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"X-Accel-Buffering", b"no")
        request.registerProducer(self, True)
        # A stream without initial state starts with its revision, which a
        # client resumes from if it is cut before the first change.
        start = b"retry: %d\n" % (RETRY_MILLISECONDS,)
        start += b"\n" if first else b"id: %d\n\n" % (since,)
        request.write(start + b"".join(first))
        self._catch_up()
        return self._done

    def _gone(self) -> None:
        """The client went away: Klein cancelled the response."""
        self._ended = True
        self._hub.remove(self)

    def deliver(self, batch: Batch) -> None:
        events = batch.sse(self._values)
        if self._live and len(events) > self._hub.lag_bytes:
            # Too much to write at once: from the history, a change at a
            # time, as far as the client reads.
            self._live = False
            self._catch_up()
            return
        if not self._live:
            self._owed += len(events)
            if self._owed > self._hub.lag_bytes:
                self._hub.dropped += 1
                self.end("the client read too slowly: it fell too far behind")
            return
        if batch.first > self._after:
            # The usual case: the events joined once for every watcher.
            self._after = batch.last
            self._sent = True
            self._request.write(events)
            return
        for change in batch.changes:
            if change.revision > self._after:
                self._send(change)

    def _send(self, change: Change) -> int:
        """Send C{change}; how many bytes that took."""
        self._after = change.revision
        self._sent = True
        data = change.sse(self._values)
        self._request.write(data)
        return len(data)

    def _catch_up(self) -> None:
        try:
            for change in self._hub.history.after(self._after, self.prefix):
                self._owed = max(0, self._owed - self._send(change))
                if self._paused or self._ended:
                    return
        except HistoryGone as e:
            self.end(str(e))
            return
        self._live = True
        self._owed = 0

    def tick(self, revision: int, progress: bytes) -> None:
        if self._sent:
            self._sent = False
        elif self._live and not self._paused and not self._ended:
            if self._after > revision:  # watching from a revision ahead
                revision = self._after
                progress = event("progress", {"revision": revision}, revision)
            self._after = revision
            self._request.write(progress)

    def end(self, reason: str | None) -> None:
        if self._ended:
            return
        self._ended = True
        self._hub.remove(self)
        if reason is None and self._live and not self._paused:
            # The server is stopping, after its last write: the client,
            # told the revision it has seen everything up to, resumes from
            # there (the restarted history starts at it).
            self._request.write(b"id: %d\n\n" % (max(self._hub.revision, self._after),))
        if reason is not None:
            history = self._hub.history
            compacted = {
                "reason": reason,
                "last": self._after,
                "oldest": history.floor,
                "revision": history.revision,
            }
            self._request.write(event("compacted", compacted))
        self._request.unregisterProducer()
        self._done.callback(b"")

    def pauseProducing(self) -> None:
        self._paused = True
        self._live = False

    def resumeProducing(self) -> None:
        self._paused = False
        if not (self._live or self._ended):
            self._catch_up()

    def stopProducing(self) -> None:
        """The connection is going: Klein cancels the response."""


@implementer(IWatcher, IPushProducer)
class LongPoll:
    """
    One JSON answer: the changes after C{since} at once if there are any,
    else the first to come, else none at the end of the wait, with the
    revision to poll from next.
    """

    def __init__(self, hub: Hub, request: IRequest, asked: _Asked) -> None:
        self.prefix = asked.prefix
        self._hub = hub
        self._request = request
        self._values = asked.values
        self._after = hub.revision if asked.since is None else asked.since
        self._wait = asked.wait
        self._timer: Any = None
        self._done: Deferred[bytes] = Deferred(lambda _: self._stop())

    def __repr__(self) -> str:
        return f"<LongPoll {self.prefix!r} after {self._after}>"

    def answer(self) -> Deferred[bytes]:
        """The answer's body, at once or after a wait."""
        hub = self._hub
        if not hub.ready:
            _admit(hub, self, self._after)  # raises: not ready
        try:
            _check(hub, self._after)
            found = list(
                itertools.islice(
                    hub.history.after(self._after, self.prefix), MOST_EVENTS + 1
                )
            )
        except HistoryGone as e:
            raise _gone(e) from None
        if found or not self._wait:
            return succeed(self._body(found))
        _admit(hub, self, self._after)
        self._timer = hub.clock.callLater(self._wait, self._answer, [])
        # Registered as a stream is, so that a client that goes away (a FIN,
        # which is not a half-close here) frees its place at once.
        self._request.registerProducer(self, True)
        return self._done

    def _stop(self) -> None:
        self._hub.remove(self)
        if self._timer is None:
            return
        if self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._request.channel is not None:  # None: the client has gone
            self._request.unregisterProducer()

    def pauseProducing(self) -> None:
        """Nothing is sent until the answer, which is one write."""

    resumeProducing = stopProducing = pauseProducing

    def _body(self, changes: list[Change]) -> bytes:
        events: list[dict[str, Any]] = []
        size = 0
        for change in changes[:MOST_EVENTS]:
            document = change.document(self._values)
            size += len(json.dumps(document))
            if events and size > MOST_BYTES:
                break
            events.append(document)
        revision = (
            events[-1]["revision"] if events else max(self._hub.told, self._after)
        )
        document = {
            "events": events,
            "revision": revision,
            "more": len(events) < len(changes),
        }
        return json_body(self._request, 200, document)

    def _answer(self, changes: list[Change]) -> None:
        self._stop()
        self._done.callback(self._body(changes))

    def deliver(self, batch: Batch) -> None:
        changes = [change for change in batch.changes if change.revision > self._after]
        if changes:
            self._answer(changes)

    def tick(self, revision: int, progress: bytes) -> None:
        """A long poll ends at its timeout, not with progress events."""

    def end(self, reason: str | None) -> None:
        if reason is None:
            self._answer([])
            return
        self._stop()
        history = self._hub.history
        self._done.errback(
            _gone(HistoryGone(self._after, history.floor, history.revision))
        )


def _put(key: str, record: Any, values: bool) -> dict[str, Any]:
    data = {
        "type": "put",
        "key": key,
        "revision": record.version,
        "content_type": record.content_type,
    }
    if values:
        data["value"] = encode_value(record.value)
    return data
