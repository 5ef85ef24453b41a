"""
Watching from the client: the Server-Sent Events of C{/_watch} parsed into
L{Event}s, and a watch that resumes by itself after a dropped connection
from the last revision it saw.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import attrs
import treq
from twisted.internet.defer import DeferredQueue
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater

from ersid.client.errors import (
    HistoryGone,
    NotAllowed,
    RequestRejected,
    ServerUnavailable,
)

__all__ = ["Event", "watch"]

# Seconds between attempts to reconnect: doubling from the first to the last.
_FIRST_RETRY, _LAST_RETRY = 0.25, 8.0


@attrs.frozen
class Event:
    """
    A change: C{type} C{"put"} (with C{content_type}, C{expires}, the Unix
    time a key with a time to live expires at, and C{value} when values were
    asked for), C{"delete"} or C{"expire"}, of C{key} at C{revision};
    C{data} is the event's JSON object as the server sent it.
    """

    type: str
    key: str
    revision: int
    content_type: str | None = None
    value: bytes | None = None
    data: dict[str, Any] = attrs.field(factory=dict, eq=False, repr=False)
    expires: float | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Event:
        value = data.get("value")
        if isinstance(value, dict):
            value = base64.b64decode(value["base64"])
        elif value is not None:
            value = value.encode("utf-8")
        return cls(
            data["type"],
            data["key"],
            data["revision"],
            data.get("content_type"),
            value,
            data,
            data.get("expires"),
        )


class _EventParser:
    """Split a stream of bytes into Server-Sent Events: (name, id, data)."""

    def __init__(self, received: DeferredQueue[Any]) -> None:
        self._received = received
        self._buffer = b""
        self._name = self._id = None
        self._data: list[bytes] = []

    def ended(self) -> None:
        self._received.put(None)

    def feed(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            self._line(line.rstrip(b"\r"))

    def _line(self, line: bytes) -> None:
        if not line:
            if self._data:
                data = b"\n".join(self._data).decode("utf-8")
                self._received.put((self._name or "message", self._id, data))
            elif self._id is not None:
                self._received.put(("", self._id, ""))  # where the stream starts
            self._name = self._id = None
            self._data = []
            return
        field, _, value = line.partition(b":")
        value = value[1:] if value.startswith(b" ") else value
        if field == b"event":
            self._name = value.decode("utf-8")
        elif field == b"id":
            self._id = value.decode("ascii")
        elif field == b"data":
            self._data.append(value)


class _Body(Protocol):
    """A response body fed to a parser; its end is a C{None} event."""

    def __init__(self, parser: _EventParser) -> None:
        self._parser = parser
        self._lost = False

    def dataReceived(self, data: bytes) -> None:
        self._parser.feed(data)

    def connectionLost(self, reason: Any = None) -> None:
        self._lost = True
        self._parser.ended()

    def stop(self) -> None:
        """Drop the connection, if the watch ends before the stream does."""
        if not self._lost and self.transport is not None:
            self.transport.stopProducing()


async def watch(
    http: Any, url: str, clock: Any, prefix: str, since: int | None, values: bool
) -> AsyncIterator[Event]:
    """
    The changes under C{prefix} after C{since} (C{None}: from now on), read
    from C{url}'s C{/_watch} with the treq client C{http}, for ever.

    @raise HistoryGone: when the server no longer has the changes owed.
    """
    delay = _FIRST_RETRY
    while True:
        params = {"prefix": prefix}
        if since is not None:
            params["since"] = str(since)
        if values:
            params["values"] = "1"
        received: DeferredQueue[Any] = DeferredQueue()
        try:
            response = await http.get(url + "/_watch", params=params, unbuffered=True)
        except Exception:
            response = None
        if response is not None and response.code == 503:
            await treq.content(response)  # busy, or not ready: again, later
        elif response is not None:
            if response.code != 200:
                await _refused(response)
            delay = _FIRST_RETRY
            body = _Body(_EventParser(received))
            response.deliverBody(body)
            try:
                while (item := await received.get()) is not None:
                    name, revision, data = item
                    if revision is not None:
                        since = int(revision)
                    if name in ("put", "delete", "expire"):
                        yield Event.from_json(json.loads(data))
                    elif name == "revoked":
                        raise NotAllowed(json.loads(data)["reason"])
            finally:
                body.stop()
        # The connection dropped, or could not be made: again, a bit later.
        await deferLater(clock, delay)
        delay = min(delay * 2, _LAST_RETRY)


async def _refused(response: Any) -> None:
    body = await treq.content(response)
    try:
        document = json.loads(body)
        message = document["message"]
    except (ValueError, KeyError, TypeError):
        document, message = {}, f"HTTP {response.code}"
    if response.code == 410:
        raise HistoryGone(message, document.get("oldest"), document.get("revision"))
    if response.code >= 500:
        raise ServerUnavailable(message)
    if response.code in (401, 403):
        raise NotAllowed(message)
    raise RequestRejected(message)
