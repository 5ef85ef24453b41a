"""
L{LongPoll}: a watch answered once, in JSON, for clients that cannot
stream: the changes waiting, or the first to come, or none at the end of
the wait.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.web.iweb import IRequest
from zope.interface import implementer

from ersid.auth import NotAuthenticated
from ersid.watch.history import Batch, Change, HistoryGone
from ersid.watch.hub import Hub, IWatcher
from ersid.web.errors import access_refused, json_body
from ersid.web.watch_query import Readable, WatchQuery, admit, check_since, gone

__all__ = ["MOST_BYTES", "MOST_EVENTS", "LongPoll"]

# The most events in one answer; the next poll gets the rest.
MOST_EVENTS = 1000
# The most bytes of events in one, but for a single larger one.
MOST_BYTES = 1024 * 1024


@implementer(IWatcher, IPushProducer)
class LongPoll:
    """
    One JSON answer: the changes after C{since} at once if there are any,
    else the first to come, else none at the end of the wait, with the
    revision to poll from next.
    """

    def __init__(
        self, hub: Hub, request: IRequest, asked: WatchQuery, readable: Readable
    ) -> None:
        self.prefix = asked.prefix
        self._readable = readable
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
            admit(hub, self, self._after)  # raises: not ready
        try:
            check_since(hub, self._after)
            changes = hub.history.after(self._after, self.prefix)
            found = list(
                itertools.islice(self._readable.changes(changes), MOST_EVENTS + 1)
            )
        except HistoryGone as e:
            raise gone(e) from None
        if found or not self._wait:
            return succeed(self._body(found))
        admit(hub, self, self._after)
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
        changes = [
            change
            for change in self._readable.changes(batch.changes)
            if change.revision > self._after
        ]
        if changes:
            self._answer(changes)

    def tick(self, revision: int, progress: bytes) -> None:
        """A long poll ends at its timeout, not with progress events."""

    def revoke(self, reason: str) -> None:
        """The token the poll was made with was revoked: a 401."""
        if not self._done.called:
            self._stop()
            revoked = NotAuthenticated(reason, "invalid_token")
            self._done.errback(access_refused(revoked, "token_revoked"))

    def end(self, reason: str | None) -> None:
        if reason is None:
            self._answer([])
            return
        self._stop()
        history = self._hub.history
        self._done.errback(
            gone(HistoryGone(self._after, history.floor, history.revision))
        )
