"""
C{GET /_watch}: the changes under a prefix, as Server-Sent Events
(L{ersid.web.event_stream}) or, with C{wait}, as one JSON answer to a long
poll (L{ersid.web.long_poll}); both are watchers of the daemon's L{Hub}.
"""

from __future__ import annotations

from typing import Any

from twisted.web.iweb import IRequest

from ersid.auth import Grant, NotAuthenticated
from ersid.snapshots.format import encode_value
from ersid.storage import IStorage, Record
from ersid.watch.history import event
from ersid.watch.hub import Hub
from ersid.web.event_stream import EventStream
from ersid.web.long_poll import LongPoll
from ersid.web.permitted import readable_records
from ersid.web.watch_query import MAX_WAIT, Readable, parse_watch

__all__ = ["MAX_WAIT", "serve_watch"]


async def serve_watch(
    hub: Hub, storage: IStorage, request: IRequest, grant: Grant
) -> bytes:
    """
    Answer a watch request: a stream, a long poll, or a JSON error (raised
    before anything is sent), of changes to keys C{grant} may read. The
    body, or C{b""} once a stream has ended.
    """
    asked = parse_watch(request)
    readable_prefixes = grant.require_some(asked.prefix)
    readable = Readable(None if readable_prefixes is None else grant.may_read)
    if request.method == b"HEAD":
        request.setHeader(b"Content-Type", b"text/event-stream")
        request.setHeader(b"Cache-Control", b"no-store")
        return b""
    if asked.wait is not None:
        poll = LongPoll(hub, request, asked, readable)
        answered = poll.answer()
        if not answered.called:  # it waits, a watcher of the hub
            grant.follow(poll)
        return await answered
    first: list[bytes] = []
    since = hub.revision if asked.since is None else asked.since
    if asked.initial and not asked.resuming:
        listing = await readable_records(storage, asked.prefix, readable_prefixes)
        for key, record in listing.items:
            first.append(event("put", _put(key, record, asked.values)))
        since = listing.revision
        first.append(event("synced", {"revision": since}, since))
    if grant.revoked:  # while the initial state was read
        raise NotAuthenticated("the token was revoked", "invalid_token")
    stream = EventStream(hub, request, asked, readable)
    ended = stream.stream(since, first)
    grant.follow(stream)  # admitted: it streams until it ends
    return await ended


def _put(key: str, record: Record, values: bool) -> dict[str, Any]:
    data = {
        "type": "put",
        "key": key,
        "revision": record.version,
        "content_type": record.content_type,
    }
    if values:
        data["value"] = encode_value(record.value)
    return data
