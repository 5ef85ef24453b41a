"""
Listening ports. A plain port number means TCP on the loopback interface
only; anything else is a Twisted endpoint description (C{tcp:8080:...},
C{unix:/run/ersid.sock}, C{ssl:8443:...}). L{Listener} listens while it
runs, logs where, and turns a port it cannot have into one line.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet import endpoints
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IAddress, IListeningPort, IProtocolFactory
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.usage import UsageError

from ersid.startup import StartupError, one_line_exit

__all__ = ["Listener", "endpoint_description", "optional_endpoint_description"]

# Twisted listens with a backlog of 50, which drops connections arriving
# in bursts of more; the kernel caps this at net.core.somaxconn.
_BACKLOG = 1024

_log = Logger()


def endpoint_description(value: str) -> str:
    """
    The endpoint description an option's C{value} means: a port number is
    TCP on 127.0.0.1 with a listen backlog for bursts of connections;
    anything else must parse as an endpoint description.

    @raise UsageError: if it does not.
    """
    if value.isascii() and value.isdigit():
        if not 0 <= int(value) <= 65535:
            raise UsageError(f"port {value} is out of range")
        return f"tcp:{value}:interface=127.0.0.1:backlog={_BACKLOG}"
    try:
        # Parsed only to check it: an endpoint keeps its reactor until it
        # listens, and the L{Listener} makes its own with the daemon's.
        endpoints.serverFromString(None, value)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UsageError(f"bad endpoint description {value!r}: {e}") from None
    return value


def optional_endpoint_description(value: str) -> str | None:
    """L{endpoint_description}, or C{None} for C{none}: that port is off."""
    return None if value == "none" else endpoint_description(value)


class Listener(Service):
    """
    Listen on an endpoint description while the service runs.

    @ivar what: what listens, for the log (C{"REST API"}).
    @ivar address: where it listens, once it does.
    """

    def __init__(
        self, what: str, description: str, factory: IProtocolFactory, reactor: Any
    ) -> None:
        self.what = what
        self.description = description
        self.address: IAddress | None = None
        self._endpoint = endpoints.serverFromString(reactor, description)
        self._factory = factory
        self._listening: Deferred[IListeningPort] | None = None
        self._starting = False
        self._refusal: str | None = None

    @one_line_exit
    def privilegedStartService(self) -> None:
        """
        Listen now, before twistd drops privileges; the endpoints Ersid
        describes (TCP, UNIX, SSL) answer at once, so a port in use stops
        the start here.
        """
        super().privilegedStartService()
        self._starting = True
        self._listening = self._endpoint.listen(self._factory)
        self._listening.addCallbacks(self._listen, self._refused)
        self._starting = False
        if self._refusal is not None:
            raise StartupError(self._refusal)

    def startService(self) -> None:
        super().startService()
        if self._listening is None:
            self.privilegedStartService()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        listening, self._listening = self._listening, None
        if listening is None:
            return succeed(None)
        listening.cancel()
        return listening.addCallback(lambda port: port and port.stopListening())

    def _listen(self, port: IListeningPort) -> IListeningPort:
        self.address = port.getHost()
        _log.info("{what} listening on {address}", what=self.what, address=self.address)
        return port

    def _refused(self, failure: Failure) -> None:
        if failure.check(CancelledError):
            return
        if self._starting:
            self._refusal = self._why(failure)
        else:  # an endpoint that listens later: none of Ersid's own
            _log.error("{why}", why=self._why(failure))

    def _why(self, failure: Failure) -> str:
        reason = failure.value
        if isinstance(reason, CannotListenError):
            reason = reason.socketError
        return f"cannot listen for the {self.what} on {self.description}: {reason}"
