"""
Listening ports. A plain port number means TCP on the loopback interface
only; anything else is a Twisted endpoint description (C{tcp:8080:...},
C{unix:/run/ersid.sock}, C{ssl:8443:...}). L{Listener} listens while it
runs, logs where, and turns a port it cannot have into one line; a
L{ConnectionBudget} keeps clients from taking the file descriptors the
daemon needs for its own files.
"""

from __future__ import annotations

import ipaddress
import resource
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet import endpoints
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IListeningPort,
    IProtocolFactory,
    IReactorTime,
)
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.python.usage import UsageError

from ersid.startup import StartupError, one_line_exit

__all__ = [
    "ConnectionBudget",
    "Listener",
    "endpoint_description",
    "optional_endpoint_description",
    "reachable",
]

# File descriptors kept from clients for the daemon's own use: the journal,
# snapshots (temporary file, directory, the pipe to the forked writer),
# database connections, the manhole's files, logs.
_RESERVE = 64

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
    @ivar public_refusal: if given, why the service must not listen on an
        address other machines can reach, and what to do instead: it then
        refuses to start rather than serve there.
    """

    def __init__(
        self,
        what: str,
        description: str,
        factory: IProtocolFactory,
        reactor: Any,
        budget: ConnectionBudget | None = None,
        public_refusal: str | None = None,
    ) -> None:
        self.what = what
        self.public_refusal = public_refusal
        self._budget = budget
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

    def _listen(self, port: IListeningPort) -> IListeningPort | None:
        address = port.getHost()
        if self.public_refusal is not None and reachable(address):
            port.stopListening()
            refusal = (
                f"the {self.what} would listen on {address.host}, "  # type: ignore[attr-defined]
                f"which other machines can reach, {self.public_refusal}"
            )
            if self._starting:
                self._refusal = refusal
            else:  # an endpoint that listens later: none of Ersid's own
                _log.error("{why}", why=refusal)
            return None
        if self._budget is not None:
            self._budget.add_port(port)
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


def reachable(address: IAddress) -> bool:
    """Whether other machines may reach C{address}: an IP address not of loopback."""
    host = getattr(address, "host", None)
    if not isinstance(host, str):
        return False  # a UNIX socket
    try:
        ip = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return True
    mapped = getattr(ip, "ipv4_mapped", None)
    return not (mapped or ip).is_loopback


class Sheddable(Protocol):
    """A connection the budget may close when it runs short: one not in use."""

    def shed(self) -> bool:
        """Close the connection if it is idle; whether it did."""


class ConnectionBudget:
    """
    How many connections the daemon holds open at once, at most: its limit
    of open files, less a reserve for its own files, so that a flood of
    clients cannot leave the journal or a snapshot without a descriptor.

    At the limit the listeners stop accepting (the kernel queues new
    connections in their backlogs), and connections that hold a place
    without using it (idle, or sending their headers slowly) are closed to
    make room, once a second while the budget is spent; both are logged.
    Connections report themselves with L{opened} and L{closed};
    L{counting} wraps a factory whose connections do not.
    """

    def __init__(self, limit: int, clock: IReactorTime) -> None:
        self.limit = limit
        self._clock = clock
        self._open: set[Sheddable] = set()
        self._count = 0
        self._ports: list[IListeningPort] = []
        self._relieving: IDelayedCall | None = None

    @classmethod
    def of_this_process(cls, clock: IReactorTime) -> ConnectionBudget:
        """
        The budget the open-file limit allows, raised to its hard limit
        first, as servers do (the default soft limit is often 1024).
        """
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != hard:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
                soft = hard
            except (ValueError, OSError):
                pass
        if soft == resource.RLIM_INFINITY:
            soft = 1 << 20
        return cls(max(soft - _RESERVE, 1), clock)

    def spent(self) -> bool:
        """
        Whether the budget is spent: a factory then builds no protocol, and
        Twisted closes the connection it accepted at once (a listening port
        accepts many at a time, before it can be paused).
        """
        return self._count >= self.limit

    def add_port(self, port: IListeningPort) -> None:
        """Pause and resume C{port} with the budget."""
        self._ports.append(port)
        if self._relieving is not None:
            port.stopReading()  # type: ignore[attr-defined]

    def opened(self, connection: Sheddable | None) -> None:
        """A connection was accepted (C{None}: one never shed)."""
        self._count += 1
        if connection is not None:
            self._open.add(connection)
        if self._count >= self.limit and self._relieving is None:
            for port in self._ports:
                # Twisted's listening ports read to accept: not reading,
                # they leave new connections in the kernel's backlog.
                port.stopReading()  # type: ignore[attr-defined]
            _log.warn(
                "{count} connections open, the most the limit of open files "
                "allows while keeping {reserve} for Ersid's own files; new "
                "connections wait, and idle or slow ones are closed",
                count=self._count,
                reserve=_RESERVE,
            )
            self._relieve()

    def closed(self, connection: Sheddable | None) -> None:
        """A connection ended."""
        self._count -= 1
        self._open.discard(connection)  # type: ignore[arg-type]
        if self._relieving is not None and self._count < self.limit:
            self._relieving.cancel()
            self._relieving = None
            for port in self._ports:
                port.startReading()  # type: ignore[attr-defined]
            _log.info("Accepting connections again")

    def _relieve(self) -> None:
        self._relieving = self._clock.callLater(1, self._relieve)
        for connection in list(self._open):
            connection.shed()

    def counting(self, factory: IProtocolFactory) -> IProtocolFactory:
        """C{factory}, its connections counted (never shed)."""
        return _Counted(factory, self)


class _CountedProtocol(ProtocolWrapper):
    def connectionMade(self) -> None:
        self.factory.budget.opened(None)
        super().connectionMade()

    def connectionLost(self, reason: Failure) -> None:
        self.factory.budget.closed(None)
        super().connectionLost(reason)


class _Counted(WrappingFactory):
    protocol = _CountedProtocol

    def __init__(self, factory: IProtocolFactory, budget: ConnectionBudget) -> None:
        super().__init__(factory)
        self.budget = budget

    def buildProtocol(self, addr: IAddress) -> ProtocolWrapper | None:
        if self.budget.spent():
            return None
        return super().buildProtocol(addr)
