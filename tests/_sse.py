"""Reading Server-Sent Events in the tests, from a socket or a fake request."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol


class EventReader(Protocol):
    """
    A watch stream's body, parsed into C{(name, id, data)} events; C{last_id}
    is what a browser would send as C{Last-Event-ID} (an C{id:} alone counts).
    """

    def __init__(self) -> None:
        self.events: list[tuple[str, str | None, Any]] = []
        self.last_id: str | None = None
        self.ended: Deferred[None] = Deferred()
        self._buffer = b""
        self._waiting: list[tuple[Any, Deferred[None]]] = []

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        *blocks, self._buffer = self._buffer.split(b"\n\n")
        for block in blocks:
            fields = dict(
                line.split(b": ", 1) for line in block.split(b"\n") if b": " in line
            )
            ident = fields.get(b"id")
            if ident is not None:
                self.last_id = ident.decode()
            if b"data" in fields:
                self.events.append(
                    (
                        fields[b"event"].decode(),
                        None if ident is None else ident.decode(),
                        json.loads(fields[b"data"]),
                    )
                )
        for condition, waiting in list(self._waiting):
            if condition(self):
                self._waiting.remove((condition, waiting))
                waiting.callback(None)

    def connectionLost(self, reason: Any = None) -> None:
        self.ended.callback(None)

    def until(self, condition) -> Deferred[None]:
        """Fires when C{condition(self)} holds."""
        waiting: Deferred[None] = Deferred()
        if condition(self):
            waiting.callback(None)
        else:
            self._waiting.append((condition, waiting))
        return waiting

    def count(self, n: int) -> Deferred[None]:
        return self.until(lambda reader: len(reader.events) >= n)

    def changes(self) -> list[tuple[str, int, str]]:
        return [
            (name, data["revision"], data["key"])
            for name, _, data in self.events
            if name in ("put", "delete")
        ]
