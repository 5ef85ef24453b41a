"""
An HTTP/1.1 connection to the API: twisted.web's channel, strict where a
proxy in front could read a request differently, bounded in the time and
memory a client can take, and without costs twisted.web pays for every
request.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IAddress, IDelayedCall, IHalfCloseableProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES, HTTPChannel
from zope.interface import implementer

from ersid.web.errors import ApiError

if TYPE_CHECKING:
    from twisted.web.server import Request

__all__ = ["DEFAULT_HEAD_TIMEOUT", "DEFAULT_SEND_TIMEOUT", "Channel"]

# Seconds a request line and headers may take to arrive, however steadily
# they trickle in: slowloris sends a byte every few seconds.
DEFAULT_HEAD_TIMEOUT = 30.0
# Seconds a client may leave responses unread before it is dropped.
DEFAULT_SEND_TIMEOUT = 60.0
# The most digits of a body length Ersid reads: 2**63 has 19.
_LENGTH_DIGITS = 19
# A Host header (RFC 9110, 7.2): a host name, an IPv4 address or an IP
# literal in brackets, and a port; or nothing.
_HOST = re.compile(
    rb"(?:\[[0-9A-Fa-f:.]++\]|[A-Za-z0-9._~!$&'()*+,;=%-]*+)(?::[0-9]*+)?"
)

_log = Logger()


@implementer(IHalfCloseableProtocol)
class Channel(HTTPChannel):
    """
    One client connection. Beyond twisted.web's channel, it:

      - refuses in JSON, and closes, what a proxy in front might read
        differently: folded header lines, transfer codings other than
        chunked, lengths with more digits than any body could have;
      - gives a request's line and headers C{site.head_timeout} seconds to
        arrive, and a body that does not come in one piece (its bytes, or a
        chunked body's framing, trickling in) C{site.body_timeout} seconds
        from the end of the headers; drops a connection idle for
        C{timeOut} seconds: all with one timer per connection rather than
        one per request;
      - stops reading, and answering pipelined requests, while the client
        leaves responses unread, so that what one client does not read stays
        bounded; and drops it when a request of its has waited so
        C{site.send_timeout} seconds;
      - counts itself in the site's connection budget, which closes it when
        short of descriptors if it is idle;
      - answers a client that closes its side after its request (as
        C{printf ... | nc} does) before closing its own;
      - makes the objects of its addresses once, not for every request.
    """

    _idle_since: float | None = None
    _head_since: float | None = None
    _head_end = 0.0
    _body_since: float | None = None
    _version = b"HTTP/1.1"
    _idle_timer: IDelayedCall | None = None
    _send_timer: IDelayedCall | None = None
    _reading_body = False
    _client_done = False
    _hosts = 0
    _content_types = 0
    _chunked = False
    _backed_up = False
    _parked: Request | None = None
    _host: IAddress | None = None
    _peer: IAddress | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        if self.site.budget is not None:
            self.site.budget.opened(self)

    def connectionLost(self, reason: Failure) -> None:
        for timer in (self._idle_timer, self._send_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._idle_timer = self._send_timer = None
        self._parked = None
        self.site.unread.pop(self, None)
        if self.site.budget is not None:
            self.site.budget.closed(self)
        super().connectionLost(reason)

    def readConnectionLost(self) -> None:
        """The client sent all it will: answer what it asked, then close."""
        self._client_done = True
        if self._idle_since is not None:
            self.loseConnection()

    def requestDone(self, request: Request) -> None:
        super().requestDone(request)  # which starts on the next pipelined one
        if self._client_done and self._idle_since is not None:
            self.loseConnection()

    def writeConnectionLost(self) -> None:
        """Nothing more can be sent: a half-closed client gets nothing."""
        self.loseConnection()

    # Timeouts: idle between requests, and a deadline for a request's head.

    def setTimeout(self, period: float | None) -> float | None:
        previous, self.timeOut = self.timeOut, period
        if period is None:
            # The whole request is in: only answering it remains.
            self._idle_since = self._body_since = None
            self._reading_body = False
        else:
            self._idle_since = self.site.reactor.seconds()
            if self._idle_timer is None:
                self._arm(min(period, self._shortest_deadline()))
        return previous

    def resetTimeout(self) -> None:
        """
        Data came: the connection is not idle, and a request's head began,
        or its body did not come with its head.
        """
        if self._idle_since is not None:
            self._idle_since = now = self.site.reactor.seconds()
            if self._reading_body:
                if self._body_since is None:
                    self._body_since = self._head_end
            elif self._head_since is None:
                self._head_since = now

    def head_received(self) -> str | None:
        """
        A request's line and headers are in: their deadline is met. What in
        them a proxy in front could read another way, if anything.
        """
        self._head_since = None
        self._reading_body = True
        self._head_end = self.site.reactor.seconds()
        hosts, types, chunked = self._hosts, self._content_types, self._chunked
        self._hosts = self._content_types = 0
        self._chunked = False
        version = self._version
        if version == b"HTTP/1.1" and hosts != 1:
            return "an HTTP/1.1 request needs one Host header"
        if version != b"HTTP/1.1" and chunked:
            # RFC 9112 6.1: HTTP/1.0 has no transfer codings; the framing
            # of such a message is faulty.
            return "HTTP/1.0 has no Transfer-Encoding"
        if hosts > 1:
            return "a request has one Host header at most"
        if types > 1:
            return "a request has one Content-Type header at most"
        return None

    def _arm(self, seconds: float) -> None:
        self._idle_timer = self.callLater(seconds, self._check_deadlines)

    def _shortest_deadline(self) -> float:
        return min(self.site.head_timeout, self.site.body_timeout)

    def _check_deadlines(self) -> None:
        """
        Fired at least every head or body timeout while a request is read,
        so that a head or a body that began is cut off on time, whenever it
        began.
        """
        self._idle_timer = None
        if self._idle_since is None or self.timeOut is None:
            return  # answering a request; setTimeout arms the timer afterwards
        now = self.site.reactor.seconds()
        deadlines = [self._idle_since + self.timeOut, now + self._shortest_deadline()]
        for since, seconds, what in [
            (self._head_since, self.site.head_timeout, "request's headers"),
            (self._body_since, self.site.body_timeout, "request body"),
        ]:
            if since is None:
                continue
            if since + seconds <= now:
                message = f"the {what} did not arrive within {seconds} seconds"
                self.refuse(ApiError(408, "request_timeout", message))
                return
            deadlines.append(since + seconds)
        if deadlines[0] <= now:
            self.timeoutConnection()
            return
        self._arm(min(deadlines) - now)

    def shed(self) -> bool:
        """
        Close the connection if no request of its is under way, or one whose
        head has taken over a second (a head comes in one packet), or if it
        leaves its answers unread: whether it did.
        """
        if self._backed_up:
            # It has not read its answers for a while: a place and up to a
            # value's worth of memory, held unused.
            self.transport.abortConnection()
            return True
        if self._idle_since is None or self._reading_body:
            return False
        if self._head_since is not None:
            if self.site.reactor.seconds() - self._head_since < 1:
                return False
        self.loseConnection()
        return True

    # Flow control: no more answers than the client reads.

    def pauseProducing(self) -> None:
        """
        The client is not reading: read nothing more from it, and answer
        nothing more, until it does. (twisted.web stops reading only
        between requests: while one is answered, pipelined ones would pile
        up in memory.)
        """
        self._backed_up = True
        super().pauseProducing()
        self.transport.pauseProducing()
        # What clients leave unread is bounded all together, too: when too
        # many hold up to a value each, the one waiting longest is dropped.
        waiting = self.site.unread
        waiting[self] = None
        if len(waiting) > self.site.most_unread:
            oldest = next(iter(waiting))
            del waiting[oldest]
            oldest.transport.abortConnection()

    def resumeProducing(self) -> None:
        self._backed_up = False
        self.site.unread.pop(self, None)
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        super().resumeProducing()
        parked, self._parked = self._parked, None
        if parked is not None:
            parked.process()

    def may_answer(self, request: Request) -> bool:
        """
        Whether C{request} may be answered now; if not, it is, once the
        client has read the responses before it.
        """
        if not self._backed_up:
            return True
        self._parked = request
        if self._send_timer is None:
            timeout = self.site.send_timeout
            self._send_timer = self.callLater(timeout, self._not_reading)
        return False

    def _not_reading(self) -> None:
        self._send_timer = None
        _log.info(
            "Dropping {peer}: it left responses unread for {seconds} seconds",
            peer=str(self.getPeer()),
            seconds=self.site.send_timeout,
        )
        self.transport.abortConnection()

    # Parsing: strict where twisted.web is lenient, JSON where it is terse.

    def lineReceived(self, line: bytes) -> None:
        if line[:1] in (b" ", b"\t"):
            # A folded header line (obs-fold), or a request line that starts
            # with white space: RFC 9112 lets a server refuse either.
            message = "folded header lines are not accepted"
            self.refuse(ApiError(400, "bad_request", message))
            return
        super().lineReceived(line)

    def headerReceived(self, line: bytes) -> bool:
        name, colon, value = line.partition(b":")
        lowered = name.lower()
        value = value.strip(b" \t")
        if colon and lowered == b"content-length" and value.isdigit():
            # Python reads no number of over 4,300 digits; any over 19 is
            # larger than a body can be.
            digits = value.lstrip(b"0") or b"0"
            if len(digits) > _LENGTH_DIGITS:
                self.refuse(ApiError.value_too_large(self.site.max_body_size))
                return False
            line = b"Content-Length: " + digits
        elif lowered == b"host":
            self._hosts += 1
            if not _HOST.fullmatch(value):
                self.refuse(
                    ApiError(400, "bad_request", "the Host header is not a host")
                )
                return False
        elif lowered == b"content-type":
            self._content_types += 1
        elif colon and lowered == b"transfer-encoding":
            self._chunked = True
            if value.lower() != b"chunked":
                message = "the only transfer coding accepted is chunked"
                self.refuse(ApiError(400, "bad_request", message))
                return False
        return super().headerReceived(line)

    def checkPersistence(self, request: Request, version: bytes) -> bool:
        """Also notes the request's HTTP version, before its body is read."""
        self._version = version
        return super().checkPersistence(request, version)

    def refuse(self, error: ApiError) -> None:
        """
        Answer C{error} on the raw connection and close it, for a request
        that was not parsed far enough to respond through the usual
        machinery.
        """
        body = error.body()
        reason = RESPONSES.get(error.status, b"Error")
        lines = [
            b"HTTP/1.1 %d %s" % (error.status, reason),
            b"Date: " + self.site.date_header(),
            b"Content-Type: application/json",
            b"Content-Length: %d" % (len(body),),
            b"Cache-Control: no-store",
            b"Connection: close",
        ]
        head = b"\r\n".join(lines) + b"\r\n\r\n"
        self.transport.write(head + body)
        self.loseConnection()
        # Nothing more of this connection is read: what follows a refused
        # request is not a request.
        self.dataReceived = self.lineReceived = _ignore  # type: ignore[method-assign]

    def _respondToBadRequestAndDisconnect(self) -> None:
        # twisted.web answers requests it cannot parse (a bad request line,
        # Content-Length or chunk, headers over its limits) with a bare 400
        # from this private method, its one exit for them; this API answers
        # every error in JSON (tests/test_twisted.py pins the name).
        message = "the request is not valid HTTP/1.1 or its headers are too large"
        self.refuse(ApiError(400, "bad_request", message))

    def lineLengthExceeded(self, line: bytes) -> None:
        """A request line or header over 16 KiB: twisted.web just hangs up."""
        self._respondToBadRequestAndDisconnect()

    def getHost(self) -> IAddress:
        if self._host is None:
            self._host = super().getHost()
        return self._host

    def getPeer(self) -> IAddress:
        if self._peer is None:
            self._peer = super().getPeer()
        return self._peer


def _ignore(*args: Any) -> None:
    return None
