"""
A request as the HTTP layer reads it (L{Head}), and the light request a key
route answers on the fast path (L{KeyRequest}): the few members of
twisted.web's C{IRequest} that the key routes use, and a response written
as bytes in one piece.
"""

from __future__ import annotations

from http import HTTPStatus
from io import BytesIO
from typing import Any

import attrs
from twisted.internet.interfaces import IAddress

from ersid.web.errors import NO_BODY_CODES, ApiError

__all__ = ["Fields", "Head", "KeyRequest", "refusal", "status_line"]

_STATUS_LINES: dict[int, bytes] = {}


def status_line(code: int) -> bytes:
    """C{HTTP/1.1 <code> <reason>} and its line end."""
    line = _STATUS_LINES.get(code)
    if line is None:
        try:
            reason = HTTPStatus(code).phrase.encode("ascii")
        except ValueError:
            reason = b"Unknown"
        line = _STATUS_LINES[code] = b"HTTP/1.1 %d %s\r\n" % (code, reason)
    return line


def refusal(error: ApiError, date: bytes) -> bytes:
    """
    The response to a request that is refused before it is read whole:
    C{error}, and the connection closes.
    """
    body = error.body()
    lines = [
        *(name + b": " + value for name, value in error.headers.items()),
        b"Date: " + date,
        b"Content-Type: application/json",
        b"Content-Length: %d" % (len(body),),
        b"Cache-Control: no-store",
        b"Connection: close",
    ]
    return status_line(error.status) + b"\r\n".join(lines) + b"\r\n\r\n" + body


class Fields(dict[bytes, list[bytes]]):
    """
    A request's header fields: every line of each, by lower-case name; with
    the one method of twisted.web's C{Headers} the API's code uses.
    """

    def getRawHeaders(self, name: bytes) -> list[bytes] | None:
        return self.get(name if name.islower() else name.lower())


@attrs.frozen(eq=False)
class Head:
    """
    A request whose line, headers and body have been read.

    @ivar target: the request target as sent, e.g. C{/key?x=1}.
    @ivar version: C{b"HTTP/1.1"} or C{b"HTTP/1.0"}.
    @ivar keep_alive: whether the connection stays open after the answer.
    """

    method: bytes
    target: bytes
    version: bytes
    fields: Fields
    body: bytes
    keep_alive: bool


class KeyRequest:
    """
    A key request, for its L{ersid.web.keys.KeyRoute}: read like a
    twisted.web request, answered with L{response}.
    """

    __slots__ = (
        "_body",
        "_content",
        "_peer",
        "clientproto",
        "code",
        "method",
        "path",
        "requestHeaders",
        "responseHeaders",
        "sentLength",
        "uri",
    )

    def __init__(self, head: Head, path: bytes, peer: IAddress) -> None:
        self.code = 200
        self.sentLength = 0
        self._content: BytesIO | None = None
        self.method = head.method
        self.uri = head.target
        self.path = path
        self.clientproto = head.version
        self.requestHeaders = head.fields
        self.responseHeaders: dict[bytes, bytes] = {}
        self._body = head.body
        self._peer = peer

    @property
    def content(self) -> BytesIO:
        """The body, as twisted.web gives it; made only for requests that read it."""
        if self._content is None:
            self._content = BytesIO(self._body)
        return self._content

    def getHeader(self, name: bytes) -> bytes | None:
        lines = self.requestHeaders.get(name.lower())
        return None if lines is None else lines[-1]

    def setHeader(self, name: bytes, value: bytes) -> None:
        self.responseHeaders[name] = value

    def setResponseCode(self, code: int, message: Any = None) -> None:
        self.code = code

    def getClientAddress(self) -> IAddress:
        return self._peer

    def response(self, body: bytes, date: bytes, close: bool) -> bytes:
        """
        The whole response with C{body}: none for C{HEAD}, 204 and 304, as
        HTTP has it; a C{Content-Length} unless the route set one.
        """
        code = self.code
        headers = self.responseHeaders
        if code in NO_BODY_CODES:
            body = b""
        elif b"Content-Length" not in headers:
            headers[b"Content-Length"] = b"%d" % (len(body),)
        if self.method == b"HEAD":
            body = b""
        self.sentLength = len(body)
        parts = [_STATUS_LINES.get(code) or status_line(code), b"Date: ", date]
        for name, value in headers.items():
            parts += (b"\r\n", name, b": ", value)
        if close:
            parts.append(b"\r\nConnection: close")
        parts += (b"\r\n\r\n", body)
        return b"".join(parts)
