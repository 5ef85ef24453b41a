"""
What Ersid relies on in Twisted beyond its public API, each used in one
place; if a Twisted upgrade takes one away, these fail and say where.
"""

from __future__ import annotations

import inspect

from twisted.conch.ssh.connection import SSHConnection
from twisted.conch.ssh.factory import SSHFactory
from twisted.conch.ssh.transport import SSHServerTransport
from twisted.conch.ssh.userauth import SSHUserAuthServer
from twisted.internet import reactor, tcp
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.http import HTTPChannel, Request


class TwistedPrivatesTests(TestCase):
    def test_tcp_transport_tells_what_waits_to_be_sent(self):
        """
        ersid.web.sending sends a response at once when nothing written
        before waits in the TCP transport: its dataBuffer and _tempDataLen
        say so, and writeSomeData sends.
        """
        seen: list[tuple[bytes, int]] = []
        sent: Deferred[bytes] = Deferred()

        class Server(Protocol):
            def connectionMade(self) -> None:
                transport = self.transport
                seen.append((transport.dataBuffer, transport._tempDataLen))
                self.transport.write(b"queued")
                seen.append((transport.dataBuffer, transport._tempDataLen))
                transport.loseConnection()

        class Client(Protocol):
            received = b""

            def dataReceived(self, data: bytes) -> None:
                self.received += data

            def connectionLost(self, reason: Failure) -> None:
                sent.callback(self.received)

        async def check() -> None:
            port = reactor.listenTCP(
                0, Factory.forProtocol(Server), interface="127.0.0.1"
            )
            self.addCleanup(port.stopListening)
            endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
            await connectProtocol(endpoint, Client())
            self.assertEqual(await sent, b"queued")
            self.assertEqual(seen, [(b"", 0), (b"", 6)])
            self.assertTrue(callable(tcp.Connection.writeSomeData))

        return Deferred.fromCoroutine(check())

    def test_conch_classes_log_through_a_class_attribute(self):
        """
        ersid.manhole.server quiets Conch's per-session chatter by giving its
        subclasses a _log of their own.
        """
        for cls in (SSHServerTransport, SSHUserAuthServer, SSHConnection, SSHFactory):
            found = inspect.getattr_static(cls, "_log", None)
            self.assertIsInstance(found, Logger, cls.__name__)

    def test_request_forgets_its_channel_when_the_connection_is_lost(self):
        """
        ersid.web.fastpath tells a lost connection by a request's channel
        being None, what notifyFinish would say at the price of a Deferred.
        """
        channel = HTTPChannel()
        channel.makeConnection(
            StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1))
        )
        request = Request(channel)
        self.assertIs(request.channel, channel)
        request.connectionLost(Failure(ConnectionError()))
        self.assertIsNone(request.channel)
