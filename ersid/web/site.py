"""
The factory of the API's connections (L{ersid.web.protocol.Connection}):
the limits they share, the connection budget, the Date header and the
access log.
"""

from __future__ import annotations

import os
from typing import IO, Any

from twisted.internet.interfaces import IProtocolNegotiationFactory, IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.web.http import combinedLogFormatter, datetimeToLogString, datetimeToString
from twisted.web.resource import IResource
from zope.interface import implementer

from ersid.files import create_private, open_private
from ersid.listening import ConnectionBudget
from ersid.startup import StartupError
from ersid.web.app import Service
from ersid.web.protocol import Connection
from ersid.web.traffic import Traffic

__all__ = [
    "DEFAULT_ABORT_TIMEOUT",
    "DEFAULT_BODY_TIMEOUT",
    "DEFAULT_HEAD_TIMEOUT",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_SEND_TIMEOUT",
    "ApiSite",
    "makeSite",
]

# Seconds a request line and headers may take to arrive, however steadily
# they trickle in: slowloris sends a byte every few seconds.
DEFAULT_HEAD_TIMEOUT = 30.0
DEFAULT_BODY_TIMEOUT = 30.0
# Seconds a keep-alive connection may stay silent between requests.
DEFAULT_IDLE_TIMEOUT = 60.0
# Seconds a client may leave responses unread before it is dropped.
DEFAULT_SEND_TIMEOUT = 60.0
# Seconds a closing connection may take to send what is left.
DEFAULT_ABORT_TIMEOUT = 15.0

_log = Logger()


class _Once:
    """
    A text of the time, formatted once a second instead of once a request;
    C{now}, the time it was last asked at (a response's time, for free).
    """

    def __init__(self, clock: IReactorTime, format: Any) -> None:
        self._clock = clock
        self._format = format
        self._second = -1
        self._value: Any = None
        self.now = 0.0

    def __call__(self) -> Any:
        self.now = now = self._clock.seconds()
        second = int(now)
        if second != self._second:
            self._second = second
            self._value = self._format(second)
        return self._value


@implementer(IProtocolNegotiationFactory)
class ApiSite(Factory):
    """
    The API's connections: requests bounded by the service's maximum value
    size and C{max_body_size} bytes, heads by C{head_timeout} seconds,
    bodies by C{body_timeout}, silence by C{idle_timeout}, unread responses
    by C{send_timeout}, connections by C{budget}; rendered, off the fast
    path, by C{resource}. No access log unless asked for: a log line per
    request costs more than the rest of a small request.
    """

    head_timeout = DEFAULT_HEAD_TIMEOUT
    idle_timeout = DEFAULT_IDLE_TIMEOUT
    send_timeout = DEFAULT_SEND_TIMEOUT
    abort_timeout = DEFAULT_ABORT_TIMEOUT
    # Connections leaving their answers unread, each holding up to a value
    # or so of them in memory: at most this many at a time.
    most_unread = 128
    # What twisted.web's requests ask of their site.
    displayTracebacks = False
    noisy = False

    def __init__(
        self,
        service: Service,
        access_log: str | None,
        body_timeout: float,
        reactor: IReactorTime,
        budget: ConnectionBudget | None,
        traffic: Traffic | None = None,
    ) -> None:
        self.service = service
        self.traffic = traffic
        self.resource: IResource = service.resource()
        self.reactor = reactor
        self.body_timeout = body_timeout
        self.budget = budget
        self.unread: dict[Connection, None] = {}
        self.date_header = _Once(reactor, datetimeToString)
        self._log_time = _Once(reactor, datetimeToLogString)
        self._access_log = access_log
        self._log_file: IO[str] | None = None
        self.logging = access_log is not None

    def startFactory(self) -> None:
        if self._access_log not in (None, "-"):
            flags = os.O_WRONLY | os.O_APPEND
            descriptor = open_private(self._access_log, flags, follow=True)
            self._log_file = os.fdopen(descriptor, "a", buffering=1)

    def stopFactory(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def acceptableProtocols(self) -> list[bytes]:
        """
        HTTP/1.1 for TLS's ALPN. Without a protocol to agree on, Twisted's TLS
        fails the handshake of every client offering some, curl included.
        """
        return [b"http/1.1"]

    def buildProtocol(self, addr: Any) -> Connection | None:
        if self.budget is not None and self.budget.spent():
            return None  # closed at once; the budget keeps descriptors for files
        return Connection(self)

    def log(self, request: Any) -> None:
        """A line in the combined log format for C{request}, if logging."""
        if not self.logging:
            return
        line = combinedLogFormatter(self._log_time(), request)
        if self._log_file is not None:
            self._log_file.write(line + "\n")
        else:
            _log.info("{line}", line=line)


def makeSite(
    service: Service,
    access_log: str | None = None,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
    reactor: IReactorTime | None = None,
    budget: ConnectionBudget | None = None,
    traffic: Traffic | None = None,
) -> ApiSite:
    """
    The connections serving C{service}, with request bodies capped at the
    service's maximum value size and C{body_timeout} seconds, counted in
    C{budget} and in C{traffic} (for C{/_metrics}), and an access log in the combined format only if asked for
    (C{"-"} for the daemon's log; the file is made mode 0600).
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    if access_log not in (None, "-"):
        try:
            create_private(access_log)
        except OSError as e:
            raise StartupError(f"access log {access_log}: {e.strerror}") from None
    return ApiSite(service, access_log, body_timeout, reactor, budget, traffic)
