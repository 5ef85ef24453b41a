"""
Requests off the hot path (the API's C{/_} endpoints, methods no key route
has, anything unusual): the connection (L{ersid.web.protocol}) hands them
to twisted.web as C{Request} objects, which the site's resource, the Klein
application behind L{ersid.web.fastpath.FastPath}, renders as it would on
twisted.web's own server. So the API stays declared once, in Klein.
"""

from __future__ import annotations

from io import BytesIO
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IAddress, IPushProducer, ISSLTransport
from twisted.python.failure import Failure
from twisted.web.http import Headers, parse_qs, unquote
from twisted.web.server import Request

from ersid.web.exchange import Head
from ersid.web.sending import writer

if TYPE_CHECKING:
    from ersid.web.protocol import Connection

__all__ = ["render"]


def render(connection: Connection, head: Head, path: bytes) -> Request:
    """
    Render the request C{head}, whose path is C{path}, through the site's
    resource; its response goes out on C{connection}, which is told when
    it is done (L{Connection.slow_done}).
    """
    stream = _Stream(connection, head.keep_alive)
    request = _SlowRequest(stream, parsePOSTFormSubmission=False)
    request.requestHeaders = headers = Headers()
    for name, lines in head.fields.items():
        headers.setRawHeaders(name, lines)
    request.content = BytesIO(head.body)
    _, question_mark, query = head.target.partition(b"?")
    request.method, request.clientproto = head.method, head.version
    # A target in absolute form, http://host/key, is served as its path.
    request.uri = path + question_mark + query
    request.path = path
    request.args = parse_qs(query, keep_blank_values=True) if query else {}
    request.process()
    return request


class _Stream:
    """
    What a twisted.web request writes its response through: its share of
    the connection, as twisted.web's HTTP/2 streams are.
    """

    def __init__(self, connection: Connection, keep_alive: bool) -> None:
        self.connection = connection
        self.transport = connection.transport
        # Sent at once when the socket takes it: a stream's events are many
        # small writes, each of which would otherwise cost two epoll_ctl.
        self._send = writer(self.transport)
        self.site = self.factory = connection.factory
        self._traffic = connection.factory.traffic
        self._keep_alive = keep_alive

    def getPeer(self) -> IAddress:
        return self.connection.peer

    def getHost(self) -> IAddress:
        return self.connection.host

    def isSecure(self) -> bool:
        return ISSLTransport.providedBy(self.transport)

    def writeHeaders(
        self, version: bytes, code: bytes, reason: bytes, headers: Headers
    ) -> None:
        lines = [b"HTTP/1.1 ", code, b" ", reason, b"\r\n"]
        for name, values in headers.getAllRawHeaders():
            for value in values:
                lines += (name, b": ", value, b"\r\n")
        if not self._keep_alive:
            lines.append(b"Connection: close\r\n")
        lines.append(b"\r\n")
        self.write(b"".join(lines))

    def write(self, data: bytes) -> None:
        self._send(data)
        if self._traffic is not None:
            self._traffic.sent += len(data)

    def writeSequence(self, data: list[bytes]) -> None:
        self.write(b"".join(data))

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        if not streaming:
            raise ValueError("the API streams with push producers only")
        self.connection.stream_producer = producer
        self.connection.streamed = True

    def unregisterProducer(self) -> None:
        self.connection.stream_producer = None

    def requestDone(self, request: Request) -> None:
        self.connection.slow_done(request)

    def loseConnection(self) -> None:
        self.transport.loseConnection()


class _SlowRequest(Request):
    """
    A twisted.web request that renders the site's resource directly (it is
    a leaf: there is nothing to traverse) with a Date header formatted once
    a second, no Server header advertising versions, and its C{postpath}
    made only if Klein asks for it.
    """

    defaultContentType = None
    _postpath: list[bytes] | None = None

    def process(self) -> None:
        site = self.site = self.channel.site
        self.responseHeaders.setRawHeaders(b"Date", [site.date_header()])
        self.prepath = []
        self.sitepath = []
        try:
            self.render(site.resource)
        except BaseException:
            self.processingFailed(Failure())

    @property  # type: ignore[override]
    def postpath(self) -> list[bytes]:
        if self._postpath is None:
            self._postpath = [unquote(part) for part in self.path[1:].split(b"/")]
        return self._postpath

    @postpath.setter
    def postpath(self, segments: list[bytes]) -> None:
        self._postpath = segments

    def parseCookies(self) -> None:
        """The API reads no cookies: leave them unparsed."""

    def getSession(self, *args: Any) -> Any:
        raise RuntimeError("the API keeps no sessions")
