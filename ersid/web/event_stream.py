"""
L{EventStream}: a watch as Server-Sent Events, flow-controlled: it follows
the hub while its client keeps up, and catches up from the history when
the client reads again.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.web.iweb import IRequest
from zope.interface import implementer

from ersid.watch.history import Batch, Change, HistoryGone, event
from ersid.watch.hub import Hub, IWatcher
from ersid.web.watch_query import Readable, WatchQuery, admit

__all__ = ["RETRY_MILLISECONDS", "EventStream"]

# How soon a browser's EventSource reconnects.
RETRY_MILLISECONDS = 1000


@implementer(IWatcher, IPushProducer)
class EventStream:
    """
    A stream of Server-Sent Events. It is sent changes as they come while
    its client keeps up; when the connection backs up, it stops and only
    counts what it owes, to catch up from the history when the client
    reads again, or to end with a C{compacted} event when it owes more
    than the hub's C{lag_bytes} or the history lost what it owes.
    """

    def __init__(
        self, hub: Hub, request: IRequest, asked: WatchQuery, readable: Readable
    ) -> None:
        self.prefix = asked.prefix
        self._readable = readable
        self._hub = hub
        self._request = request
        self._values = asked.values
        # The newest revision the client knows of.
        self._after = 0
        self._live = False
        # Whether the client had every readable change up to _after when
        # the connection backed up.
        self._caught_up = False
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
        admit(self._hub, self, since)
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
        readable = self._readable.batch(batch)
        if readable is None:
            if self._live or (self._caught_up and not self._owed):
                # The client has all it may read up to here: a history
                # trimmed past these changes owes it nothing.
                self._after = max(self._after, batch.last)
            return
        batch = readable
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
            changes = self._hub.history.after(self._after, self.prefix)
            for change in self._readable.changes(changes):
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
        self._close()

    def revoke(self, reason: str) -> None:
        """
        The token the watch was made with was revoked: end with a
        C{revoked} event; the client needs a token again to go on.
        """
        if not self._ended:
            revoked = {"reason": reason, "last": self._after}
            self._request.write(event("revoked", revoked))
            self._close()

    def _close(self) -> None:
        self._ended = True
        self._hub.remove(self)
        self._request.unregisterProducer()
        self._done.callback(b"")

    def pauseProducing(self) -> None:
        self._paused = True
        self._caught_up = self._live
        self._live = False

    def resumeProducing(self) -> None:
        self._paused = False
        if not (self._live or self._ended):
            self._catch_up()

    def stopProducing(self) -> None:
        """The connection is going: Klein cancels the response."""
