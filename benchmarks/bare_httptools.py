"""
The limit of any Twisted HTTP server on CPython: a plain Twisted protocol
that parses with httptools (llhttp) and answers from a dict, with no
checks, limits or timers. Usage: bare_httptools.py PORT
"""

import sys

from httptools import HttpRequestParser
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol

VALUES: dict[bytes, bytes] = {}


class BareHTTP(Protocol):
    def connectionMade(self) -> None:
        self.parser = HttpRequestParser(self)
        self.url = b""
        self.body: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.parser.get_method() == b"PUT":
            VALUES[self.url] = b"".join(self.body)
            self.body = []
            self.transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            return
        value = VALUES.get(self.url)
        if value is None:
            self.transport.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            return
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(value), value)
        )


if __name__ == "__main__":
    # Ersid's backlog: Twisted's default of 50 drops bursts of connections.
    reactor.listenTCP(
        int(sys.argv[1]),
        Factory.forProtocol(BareHTTP),
        backlog=1024,
        interface="127.0.0.1",
    )
    print("listening", flush=True)
    reactor.run()
