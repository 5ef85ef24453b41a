"""
C{GET /_watch}: the changes under a prefix, as Server-Sent Events
(L{ersid.web.event_stream}) or, with C{wait}, as one JSON answer to a long
poll (L{ersid.web.long_poll}); both are watchers of the daemon's L{Hub}.
"""

from __future__ import annotations

from typing import Any

from twisted.web.iweb import IRequest

from ersid.snapshots.format import encode_value
from ersid.storage import IStorage, Record
from ersid.watch.history import event
from ersid.watch.hub import Hub
from ersid.web.event_stream import EventStream
from ersid.web.long_poll import LongPoll
from ersid.web.watch_query import MAX_WAIT, parse_watch

__all__ = ["MAX_WAIT", "serve_watch"]


async def serve_watch(hub: Hub, storage: IStorage, request: IRequest) -> bytes:
    """
    Answer a watch request: a stream, a long poll, or a JSON error (raised
    before anything is sent). The body, or C{b""} once a stream has ended.
    """
    asked = parse_watch(request)
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
