"""
The web site that serves the API: twisted.web's site and request over
L{Channel}, with the limits a public server needs (body size and
deadline, one unambiguous reading of every request) and without
per-request work a one-resource site does not need.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.http import datetimeToString, parse_qs, unquote
from twisted.web.server import Request, Site

from ersid.files import create_private
from ersid.listening import ConnectionBudget
from ersid.startup import StartupError
from ersid.web.app import Service
from ersid.web.channel import DEFAULT_HEAD_TIMEOUT, DEFAULT_SEND_TIMEOUT, Channel
from ersid.web.errors import ApiError, empty

__all__ = ["DEFAULT_BODY_TIMEOUT", "makeSite"]

DEFAULT_BODY_TIMEOUT = 30.0

_ALLOW_ANY = b"GET, HEAD, PUT, POST, DELETE"


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
    as soon as the size is known, before buffering it (its deadline is the
    channel's). Its body is kept in memory, bounded by that size: a full
    temporary directory cannot fail it. It also refuses, before reading the
    body, headers that could be read two ways (see L{Channel.head_received}).

    It also processes itself with less work than a twisted.web request (see
    L{process} and L{requestReceived}).
    """

    defaultContentType = None
    _refused = False
    _received = 0
    _postpath: list[bytes] | None = None

    def process(self) -> None:
        """
        Twisted's C{process} less the work this site does not need, a tenth
        of the cost of a small request: no traversal (the site's resource is
        a leaf), no C{postpath} unless Klein asks for it, the Date header
        formatted once a second, and no Server header advertising versions.

        A request target in absolute form (C{http://host/key}), which
        HTTP/1.1 servers must accept, is served as its path; twisted.web
        would take the whole URL for the path. C{*} is answered to
        C{OPTIONS}, the one method it is meant for.
        """
        site = self.site = self.channel.site
        self.responseHeaders.setRawHeaders(b"Date", [site.date_header()])
        self.prepath = []
        self.sitepath = []
        if self.path == b"*" and self.method == b"OPTIONS":
            self.setHeader(b"Allow", _ALLOW_ANY)
            self.write(empty(self, 200))
            self.finish()
            return
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
        channel = self.channel
        site = channel.site
        ambiguity = channel.head_received()
        if ambiguity is not None:
            self._refuse(ApiError(400, "bad_request", ambiguity))
            return
        if length is not None and length > site.max_body_size:
            self._refuse(ApiError.value_too_large(site.max_body_size))
            return
        self.content = BytesIO()

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        site = self.channel.site
        if self._received > site.max_body_size:
            self._refuse(ApiError.value_too_large(site.max_body_size))
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """
        Twisted's C{requestReceived} less the look for a form to parse, which
        this site never does.
        """
        if self._refused:
            return
        self.content.seek(0)
        self.method, self.uri, self.clientproto = command, path, version
        self.path, question_mark, query = path.partition(b"?")
        self.args = parse_qs(query, keep_blank_values=True) if question_mark else {}
        if self.channel.may_answer(self):
            self.process()

    def parseCookies(self) -> None:
        """The API reads no cookies: leave them unparsed."""

    def _refuse(self, error: ApiError) -> None:
        """Stop reading this request and answer C{error} (see L{Channel.refuse})."""
        self._refused = True
        self.content = None
        # No "100 Continue": the client should not send the body at all.
        self.requestHeaders.removeHeader(b"Expect")
        self.channel.refuse(error)


class _Site(Site):
    """
    The API's site: requests bounded by C{max_body_size} bytes, heads by
    C{head_timeout} seconds, bodies by C{body_timeout} seconds, unread
    responses by C{send_timeout} seconds, connections by C{budget}; the
    Date header formatted once a second, and no access log unless asked
    for: a log line per request costs more than the rest of a small request.
    """

    protocol = Channel
    displayTracebacks = False
    head_timeout = DEFAULT_HEAD_TIMEOUT
    send_timeout = DEFAULT_SEND_TIMEOUT
    # Connections leaving their answers unread, each holding up to a value
    # or so of them in memory: at most this many at a time.
    most_unread = 128

    def __init__(
        self,
        service: Service,
        access_log: str | None,
        body_timeout: float,
        reactor: IReactorTime | None,
        budget: ConnectionBudget | None,
    ) -> None:
        super().__init__(
            service.resource(),
            logPath=None if access_log in (None, "-") else access_log,
            requestFactory=_BoundedRequest,
            reactor=reactor,
        )
        self.max_body_size = service.max_value_size
        self.body_timeout = body_timeout
        self.budget = budget
        self.unread: dict[Channel, None] = {}
        self.date_header = _DateHeader(self.reactor)
        self._logging = access_log is not None

    def buildProtocol(self, addr: Any) -> Channel | None:
        if self.budget is not None and self.budget.spent():
            return None  # closed at once; the budget keeps descriptors for files
        return super().buildProtocol(addr)

    def log(self, request: Request) -> None:
        if self._logging:
            super().log(request)


def makeSite(
    service: Service,
    access_log: str | None = None,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
    reactor: IReactorTime | None = None,
    budget: ConnectionBudget | None = None,
) -> Site:
    """
    The web site serving C{service}, with request bodies capped at the
    service's maximum value size and C{body_timeout} seconds, connections
    counted in C{budget}, and an access log in the combined format only if
    asked for (C{"-"} for the daemon's log; the file is made mode 0600).
    """
    if access_log not in (None, "-"):
        try:
            create_private(access_log)
        except OSError as e:
            raise StartupError(f"access log {access_log}: {e.strerror}") from None
    return _Site(service, access_log, body_timeout, reactor, budget)
