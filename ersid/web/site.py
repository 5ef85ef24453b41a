"""
The web site that serves the API: twisted.web's HTTP/1.1 channel and
request, with the limits a public server needs (body size and deadline) and
without per-request work a one-resource site does not need.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.python.failure import Failure
from twisted.web.http import (
    RESPONSES,
    HTTPChannel,
    datetimeToString,
    parse_qs,
    unquote,
)
from twisted.web.server import Request, Site

from ersid.web.app import Service
from ersid.web.errors import ApiError

__all__ = ["DEFAULT_BODY_TIMEOUT", "makeSite"]

DEFAULT_BODY_TIMEOUT = 30.0


class _Channel(HTTPChannel):
    """
    An HTTP/1.1 connection without costs twisted.web pays for every
    request, together a tenth of a small one.

    Its idle timeout (a client that sends nothing for C{timeOut} seconds,
    while no request of its is being answered, is dropped) keeps one timer
    per connection, which checks when it fires whether the connection was
    idle all along and otherwise waits again; twisted.web cancels a timer
    and makes a new one around every request. And it makes the objects for
    its local and remote addresses once, not for every request (the local
    one with a system call).
    """

    _idle_since: float | None = None
    _idle_timer: IDelayedCall | None = None
    _host: IAddress | None = None
    _peer: IAddress | None = None

    def setTimeout(self, period: float | None) -> float | None:
        previous, self.timeOut = self.timeOut, period
        if period is None:
            self._idle_since = None
        else:
            self._idle_since = self.site.reactor.seconds()
            if self._idle_timer is None:
                self._idle_timer = self.callLater(period, self._check_idle)
        return previous

    def resetTimeout(self) -> None:
        if self._idle_since is not None:
            self._idle_since = self.site.reactor.seconds()

    def _check_idle(self) -> None:
        self._idle_timer = None
        if self._idle_since is None or self.timeOut is None:
            return  # answering a request; setTimeout sets a timer afterwards
        remaining = self._idle_since + self.timeOut - self.site.reactor.seconds()
        if remaining > 0:
            self._idle_timer = self.callLater(remaining, self._check_idle)
        else:
            self.timeoutConnection()

    def connectionLost(self, reason: Failure) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        super().connectionLost(reason)

    def getHost(self) -> IAddress:
        if self._host is None:
            self._host = super().getHost()
        return self._host

    def getPeer(self) -> IAddress:
        if self._peer is None:
            self._peer = super().getPeer()
        return self._peer

    def refuse(self, error: ApiError) -> None:
        """
        Answer C{error} on the raw connection and close it, for a request
        that was not parsed far enough to respond through the usual
        machinery.
        """
        body = error.body()
        reason = RESPONSES.get(error.status, b"Error")
        head = (
            b"HTTP/1.1 %d %s\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: %d\r\n"
            b"Connection: close\r\n\r\n" % (error.status, reason, len(body))
        )
        self.transport.write(head + body)
        self.loseConnection()

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


class _DateHeader:
    """
    The value of the Date header, formatted once a second instead of once a
    request.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._second = -1
        self._value = b""

    def __call__(self) -> bytes:
        second = int(self._clock.seconds())
        if second != self._second:
            self._second = second
            self._value = datetimeToString(second)
        return self._value


def _path_of_absolute_form(target: bytes) -> bytes | None:
    """
    The path of an C{http} or C{https} URL (C{/} if it has none), or
    C{None} if C{target} is no such URL.
    """
    scheme, separator, rest = target.partition(b"://")
    if not separator or scheme.lower() not in (b"http", b"https"):
        return None
    slash = rest.find(b"/")
    return b"/" if slash == -1 else rest[slash:]


class _BoundedRequest(Request):
    """
    A request that refuses a body larger than its site's C{max_body_size}
    as soon as the size is known, before buffering it, and a body that takes
    longer than C{body_timeout} seconds to arrive, however steadily it
    trickles in (Twisted's idle timeout restarts with every byte, and closes
    a connection whose body never starts after a minute).

    The deadline's timer is set only once a body turns out not to arrive in
    one piece, which a small body almost always does.

    It also processes itself with less work than a twisted.web request (see
    L{process} and L{requestReceived}).
    """

    defaultContentType = None
    _refused = False
    _received = 0
    _expected: int | None = 0
    _started = 0.0
    _deadline: Any = None
    _postpath: list[bytes] | None = None

    def process(self) -> None:
        """
        Twisted's C{process} less the work this site does not need, a tenth
        of the cost of a small request: no traversal (the site's resource is
        a leaf), no C{postpath} unless Klein asks for it, the Date header
        formatted once a second, and no Server header advertising versions.

        A request target in absolute form (C{http://host/key}), which
        HTTP/1.1 servers must accept, is served as its path; twisted.web
        would take the whole URL for the path. C{*} is left to twisted.web
        for C{OPTIONS}, the one method it is meant for.
        """
        if self.path == b"*" and self.method == b"OPTIONS":
            return super().process()
        site = self.site = self.channel.site
        self.responseHeaders.setRawHeaders(b"Date", [site.date_header()])
        self.prepath = []
        self.sitepath = []
        if not self.path.startswith(b"/"):
            path = _path_of_absolute_form(self.path)
            if path is None:
                message = "the request target must be a path, such as /key"
                error = ApiError(400, "bad_request_target", message)
                self.write(error.render(self))
                self.finish()
                return
            self.path = path
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

    def gotLength(self, length: int | None) -> None:
        site = self.channel.site
        if length is not None and length > site.max_body_size:
            self._refuse(ApiError.value_too_large(site.max_body_size))
            return
        super().gotLength(length)
        self._expected = length
        if length != 0:
            self._started = site.reactor.seconds()

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        site = self.channel.site
        if self._received > site.max_body_size:
            self._refuse(ApiError.value_too_large(site.max_body_size))
            return
        super().handleContentChunk(data)
        if self._deadline is None and self._received != self._expected:
            remaining = self._started + site.body_timeout - site.reactor.seconds()
            self._deadline = site.reactor.callLater(max(remaining, 0), self._too_slow)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """
        Twisted's C{requestReceived} less the look for a form to parse, which
        this site never does.
        """
        if self._deadline is not None:
            self._cancel_deadline()
        if self._refused:
            return
        self.content.seek(0)
        self.method, self.uri, self.clientproto = command, path, version
        self.path, question_mark, query = path.partition(b"?")
        self.args = parse_qs(query, keep_blank_values=True) if question_mark else {}
        self.process()

    def parseCookies(self) -> None:
        """The API reads no cookies: leave them unparsed."""

    def connectionLost(self, reason: Any) -> None:
        self._cancel_deadline()
        super().connectionLost(reason)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()

    def _too_slow(self) -> None:
        seconds = self.channel.site.body_timeout
        message = f"the request body did not arrive within {seconds} seconds"
        self._refuse(ApiError(408, "request_timeout", message))

    def _refuse(self, error: ApiError) -> None:
        """Stop reading this request and answer C{error} (see L{_Channel.refuse})."""
        self._refused = True
        self._cancel_deadline()
        self.content = None
        # No "100 Continue": the client should not send the body at all.
        self.requestHeaders.removeHeader(b"Expect")
        self.channel.refuse(error)


class _Site(Site):
    """
    The API's site: requests bounded by C{max_body_size} bytes and
    C{body_timeout} seconds, the Date header formatted once a second, and
    no access log unless asked for: a log line per request costs more than
    the rest of a small request.
    """

    protocol = _Channel
    displayTracebacks = False

    def __init__(
        self,
        service: Service,
        access_log: str | None,
        body_timeout: float,
        reactor: IReactorTime | None,
    ) -> None:
        super().__init__(
            service.resource(),
            logPath=None if access_log in (None, "-") else access_log,
            requestFactory=_BoundedRequest,
            reactor=reactor,
        )
        self.max_body_size = service.max_value_size
        self.body_timeout = body_timeout
        self.date_header = _DateHeader(self.reactor)
        self._logging = access_log is not None

    def log(self, request: Request) -> None:
        if self._logging:
            super().log(request)


def makeSite(
    service: Service,
    access_log: str | None = None,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
    reactor: IReactorTime | None = None,
) -> Site:
    """
    The web site serving C{service}, with request bodies capped at the
    service's maximum value size and C{body_timeout} seconds, and an access
    log in the combined format only if asked for (C{"-"} for the daemon's
    log).
    """
    return _Site(service, access_log, body_timeout, reactor)
