"""
The connection: deadlines for a request's head, no more answers than the
client reads, one reading of every request (what a proxy in front could
read another way is refused), and a client that closes its side first.
Over an in-memory transport, on a Clock, and over loopback sockets.
"""

from __future__ import annotations

import gc
import json
import re
import tracemalloc
import weakref
from urllib.parse import urlsplit

from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from ersid.embedded.memory import DictStorage
from ersid.listening import ConnectionBudget
from ersid.storage import Record
from ersid.web.app import Service
from ersid.web.protocol import MOST_WAITING
from ersid.web.reading import MAX_FIELDS, MAX_HEAD_BYTES, MAX_TARGET_BYTES
from ersid.web.site import makeSite

from .._helpers import raw_exchange, refusal, serve

VALUE = b"v" * 100_000
GET = b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n"


class _BufferingTransport(StringTransport):
    """
    A transport that, like Twisted's, asks its producer to pause once more
    than 64 KiB wait to be sent, and to resume once the client has read
    them all (L{read}).
    """

    paused = False

    def write(self, data: bytes) -> None:
        super().write(data)
        if len(self.value()) > 65536 and self.producer and not self.paused:
            self.paused = True
            self.producer.pauseProducing()

    def writeSequence(self, data: list[bytes]) -> None:
        self.write(b"".join(data))

    def read(self) -> bytes:
        """What the client reads: everything sent so far."""
        sent = self.value()
        self.clear()
        if self.paused:
            self.paused = False
            if self.producer is not None:
                self.producer.resumeProducing()
        return sent


class _ClockedChannelTestCase(TestCase):
    def setUp(self, storage=None, max_value_size=1000):
        self.clock = Clock()
        self.storage = storage or DictStorage(
            [("big", Record(VALUE, version=1))], revision=1
        )
        service = Service(self.storage, max_value_size)
        self.site = makeSite(service, body_timeout=30, reactor=self.clock)
        self.channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5))
        self.transport = _BufferingTransport()
        self.channel.makeConnection(self.transport)
        self.addCleanup(self.channel.connectionLost, None)

    def responses(self, data: bytes) -> list[bytes]:
        """The status lines in C{data}."""
        return re.findall(rb"HTTP/1\.1 \d{3} [^\r]*", data)


class HeadDeadlineTests(_ClockedChannelTestCase):
    """A request's line and headers must arrive within 30 seconds."""

    def test_headers_trickling_in_cut_off_at_the_deadline(self):
        self.clock.advance(7)  # whenever the connection was last used
        self.channel.dataReceived(b"GET /big HTTP/1.1\r\n")
        for _ in range(29):
            self.clock.advance(1)
            self.channel.dataReceived(b"X")  # slowloris: a byte at a time
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(1)
        error = refusal(self, self.transport.value(), 408)
        self.assertEqual(error["error"], "request_timeout")
        self.assertTrue(self.transport.disconnecting)

    def test_each_request_has_its_own_deadline(self):
        for _ in range(3):
            self.clock.advance(20)
            self.channel.dataReceived(b"GET /missing HTTP/1.1\r\n")
            self.clock.advance(29)
            self.channel.dataReceived(b"Host: x\r\n\r\n")
        self.assertEqual(len(self.responses(self.transport.value())), 3)
        self.assertFalse(self.transport.disconnecting)

    def test_a_slow_body_is_not_a_slow_head(self):
        self.channel.dataReceived(
            b"PUT /k HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n"
        )
        for _ in range(20):
            self.clock.advance(1)
            self.channel.dataReceived(b"x")
        self.clock.advance(59)
        self.assertEqual(
            self.responses(self.transport.value()), [b"HTTP/1.1 201 Created"]
        )
        self.assertFalse(self.transport.disconnecting)


class FlowControlTests(_ClockedChannelTestCase):
    """
    Pipelined requests from a client that does not read its responses are
    answered no faster than it reads them: what waits for it is one response.
    """

    def test_pipelined_requests_wait_for_the_client_to_read(self):
        self.channel.dataReceived(GET * 20)
        self.assertEqual(len(self.responses(self.transport.value())), 1)
        self.assertLess(len(self.transport.value()), 2 * len(VALUE))
        answered = len(self.responses(self.transport.read()))
        while self.transport.value():
            self.assertEqual(len(self.responses(self.transport.value())), 1)
            answered += len(self.responses(self.transport.read()))
        self.assertEqual(answered, 20)

    def test_nothing_more_is_read_while_the_client_does_not_read(self):
        """
        Pipelined requests arriving while one is answered stay in the
        kernel, not in the daemon's memory: reading stops with answering.
        """
        self.channel.dataReceived(GET)
        self.assertEqual(self.transport.producerState, "paused")
        self.transport.read()
        self.assertEqual(self.transport.producerState, "producing")

    def test_clients_not_reading_are_bounded_all_together(self):
        """
        Each client that does not read holds up to a value of answers: when
        too many do, the one waiting longest is dropped.
        """
        self.site.most_unread = 2
        connections = []
        for port in range(3):
            channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", port))
            transport = _BufferingTransport()
            channel.makeConnection(transport)
            self.addCleanup(channel.connectionLost, None)
            channel.dataReceived(GET)
            connections.append(transport)
        self.assertEqual([t.disconnecting for t in connections], [True, False, False])
        connections[1].read()
        self.assertEqual(len(self.site.unread), 1)

    def test_a_connection_uploading_a_body_is_not_shed(self):
        self.channel.dataReceived(
            b"PUT /k HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc"
        )
        self.clock.advance(5)
        self.assertFalse(self.channel.shed())
        self.assertFalse(self.transport.disconnecting)

    def test_an_idle_connection_is_shed(self):
        self.channel.dataReceived(b"GET /missing HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(self.channel.shed())
        self.assertTrue(self.transport.disconnecting)

    def test_client_that_never_reads_is_dropped(self):
        self.channel.dataReceived(GET * 3)
        self.clock.advance(59)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(self.transport.disconnecting)

    def test_reading_in_time_keeps_the_connection(self):
        self.channel.dataReceived(GET * 3)
        answered = 0
        for _ in range(3):
            self.clock.advance(59)
            answered += len(self.responses(self.transport.read()))
        self.assertEqual(answered, 3)
        self.assertFalse(self.transport.disconnecting)


class LoopbackPipeliningTests(TestCase):
    def test_pipelined_answers_arrive_in_order(self):
        storage = DictStorage(
            [(f"k{i}", Record(b"%02d" % i * 15_000, version=i + 1)) for i in range(30)],
            revision=30,
        )

        async def check():
            url = await serve(self, Service(storage))
            requests = b"".join(
                b"GET /k%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(30)
            )
            closing = b"GET /k0 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            received = await raw_exchange(urlsplit(url).port, requests + closing)
            bodies = [
                part.partition(b"\r\n\r\n")[2][:2]
                for part in received.split(b"HTTP/1.1 200 OK")[1:]
            ]
            self.assertEqual(bodies, [b"%02d" % i for i in range(30)] + [b"00"])

        return Deferred.fromCoroutine(check())


class _RefusalTestCase(_ClockedChannelTestCase):
    def assert_refused(self, request: bytes, status: int = 400) -> dict:
        self.channel.dataReceived(request)
        error = refusal(self, self.transport.value(), status)
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.successResultOf(self.storage.keys()).items, ["big"])
        return error


class StrictParsingTests(_RefusalTestCase):
    """
    What a proxy in front and Ersid could read differently is refused with
    a JSON 400 (413 for a length no body can have), the connection closed,
    and nothing stored.
    """

    def test_transfer_codings_other_than_chunked(self):
        for coding in [b"identity", b"gzip, chunked", b"chunked, gzip", b"x"]:
            with self.subTest(coding=coding):
                self.setUp()
                self.assert_refused(
                    b"PUT /k HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: %s\r\n\r\n"
                    b"3\r\nabc\r\n0\r\n\r\n" % coding
                )

    def test_length_and_chunked_together(self):
        self.assert_refused(
            b"PUT /k HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        )

    def test_two_lengths(self):
        self.assert_refused(
            b"PUT /k HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
            b"Content-Length: 4\r\n\r\nabcd"
        )

    def test_folded_header_lines(self):
        for name in [b"Transfer-Encoding", b"Content-Length", b"X-Other"]:
            with self.subTest(name=name):
                self.setUp()
                self.assert_refused(
                    b"PUT /k HTTP/1.1\r\nHost: x\r\n%s:\r\n chunked\r\n\r\n" % name
                )

    def test_host_missing_or_repeated_in_http_1_1(self):
        self.assert_refused(b"GET /big HTTP/1.1\r\n\r\n")
        self.setUp()
        self.assert_refused(b"GET /big HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")

    def test_hosts_that_are_no_host(self):
        for host in [b"a b", b"a/b", b"a@b", b"[::1", b"a:b"]:
            self.setUp()
            self.assert_refused(b"GET /big HTTP/1.1\r\nHost: %s\r\n\r\n" % host)

    def test_hosts_that_are(self):
        for host in [b"", b"example.com", b"127.0.0.1:8080", b"[::1]:80", b"xn--a-b"]:
            self.setUp()
            self.channel.dataReceived(b"GET /big HTTP/1.1\r\nHost: %s\r\n\r\n" % host)
            self.assertEqual(
                self.responses(self.transport.value()), [b"HTTP/1.1 200 OK"], host
            )

    def test_transfer_encoding_in_http_1_0(self):
        """RFC 9112 6.1: the framing of such a message is faulty."""
        self.assert_refused(
            b"PUT /k HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nv\r\n0\r\n\r\n"
        )

    def test_two_content_types(self):
        self.assert_refused(
            b"PUT /k HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
            b"Content-Type: image/png\r\nContent-Length: 1\r\n\r\nv"
        )

    def test_length_of_thousands_of_digits(self):
        """Python cannot read such a number; no body is that long."""
        error = self.assert_refused(
            b"PUT /k HTTP/1.1\r\nHost: x\r\nContent-Length: %s\r\n\r\nv"
            % (b"9" * 4400),
            413,
        )
        self.assertEqual(error["error"], "value_too_large")

    def test_zero_padded_length_is_read(self):
        self.channel.dataReceived(
            b"PUT /k HTTP/1.1\r\nHost: x\r\nContent-Length: %s1\r\n\r\nv"
            % (b"0" * 4400)
        )
        self.assertEqual(
            self.responses(self.transport.value()), [b"HTTP/1.1 201 Created"]
        )
        self.assertEqual(self.successResultOf(self.storage.get("k")).value, b"v")


class BudgetTests(_ClockedChannelTestCase):
    def test_connections_over_the_budget_are_closed_at_once(self):
        """
        A listening port accepts many connections at a time, before the
        budget can pause it: those over the budget get no protocol.
        """
        budget = ConnectionBudget(1, self.clock)
        site = makeSite(Service(DictStorage()), reactor=self.clock, budget=budget)
        address = IPv4Address("TCP", "127.0.0.1", 6)
        first = site.buildProtocol(address)
        first.makeConnection(StringTransport())
        self.assertIsNone(site.buildProtocol(address))
        first.connectionLost(None)
        self.assertIsNotNone(site.buildProtocol(address))


class MethodTests(_ClockedChannelTestCase):
    """Methods are case-sensitive (RFC 9110); unknown ones get a JSON 405."""

    def answer(self, request: bytes) -> tuple[list[bytes], bytes]:
        self.transport.clear()
        self.channel.dataReceived(request)
        head, _, body = self.transport.value().partition(b"\r\n\r\n")
        return head.split(b"\r\n"), body

    def test_methods_in_the_wrong_case(self):
        for method in [b"Delete", b"delete", b"head", b"Get", b"put", b"QUERY"]:
            with self.subTest(method=method):
                self.setUp()
                head, body = self.answer(
                    b"%s /big HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n" % method
                )
                self.assertEqual(head[0], b"HTTP/1.1 405 Method Not Allowed")
                self.assertIn(b"Allow: DELETE, GET, HEAD, PATCH, POST, PUT", head)
                self.assertEqual(json.loads(body)["error"], "method_not_allowed")
        self.assertEqual(self.successResultOf(self.storage.get("big")).value, VALUE)

    def test_options_star(self):
        head, body = self.answer(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(head[0], b"HTTP/1.1 200 OK")
        self.assertIn(b"Allow: DELETE, GET, HEAD, PATCH, POST, PUT", head)
        self.assertFalse([line for line in head if line.lower().startswith(b"server")])
        self.assertEqual(body, b"")


class _SlowStorage(DictStorage):
    """A store whose writes complete a reactor turn later, as a journal's do."""

    def set(self, *args, **kwargs):
        written = super().set(*args, **kwargs)
        later = Deferred()
        reactor.callLater(0, written.chainDeferred, later)
        return later


class HalfCloseTests(TestCase):
    def test_pipelined_requests_before_the_close_all_answered(self):
        storage = _SlowStorage()

        async def check():
            url = await serve(self, Service(storage))
            put = b"PUT /k%d HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nv"
            received = await raw_exchange(
                urlsplit(url).port, put % 1 + put % 2 + put % 3, half_close=True
            )
            self.assertEqual(received.count(b"HTTP/1.1 201 Created"), 3, received)
            self.assertEqual((await storage.keys()).items, ["k1", "k2", "k3"])

        return Deferred.fromCoroutine(check())

    def test_client_that_closes_its_side_gets_its_answer(self):
        """As C{printf 'PUT ...' | nc host port} does."""
        storage = _SlowStorage()

        async def check():
            url = await serve(self, Service(storage))
            received = await raw_exchange(
                urlsplit(url).port,
                b"PUT /k HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nv",
                half_close=True,
            )
            self.assertTrue(received.startswith(b"HTTP/1.1 201 Created"), received)
            self.assertEqual((await storage.get("k")).value, b"v")

        return Deferred.fromCoroutine(check())


class SmugglingTests(_RefusalTestCase):
    """
    What llhttp itself refuses (bare LF line ends, bad chunk sizes, white
    space before a colon, a request line without a version) is answered
    in JSON too.
    """

    def test_bare_line_feeds(self):
        self.assert_refused(b"PUT /k HTTP/1.1\nHost: x\nContent-Length: 1\n\nv")
        self.setUp()
        self.assert_refused(b"PUT /k HTTP/1.1\r\nHost: x\nContent-Length: 1\r\n\r\nv")

    def test_bad_chunk_sizes(self):
        for size in [b"-1", b"0x3", b"3 3", b"g", b"", b"1" * 30]:
            with self.subTest(size=size):
                self.setUp()
                self.assert_refused(
                    b"PUT /k HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"%s\r\nabc\r\n0\r\n\r\n" % size
                )

    def test_white_space_before_a_colon(self):
        self.assert_refused(
            b"PUT /k HTTP/1.1\r\nHost: x\r\nContent-Length : 1\r\n\r\nv"
        )

    def test_other_http_versions(self):
        for line, status in [
            (b"PUT /k HTTP/2.0", 505),
            (b"PUT /k HTTP/0.9", 505),
            (b"PUT /k HTTP/1.2", 400),
            (b"PUT /k", 505),
        ]:
            with self.subTest(line=line):
                self.setUp()
                self.assert_refused(
                    line + b"\r\nHost: x\r\nContent-Length: 1\r\n\r\nv", status
                )

    def test_a_refused_request_ends_the_connection(self):
        """What follows a refused request is not read as a request."""
        self.assert_refused(
            b"PUT /k HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
            b"PUT /smuggled HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nv"
        )

    def test_requests_before_a_refused_one_are_answered_in_order(self):
        self.channel.dataReceived(
            b"GET /big HTTP/1.1\r\nHost: x\r\n\r\nGET /big HTTP/1.1\r\n\r\n"
        )
        self.assertEqual(
            self.responses(self.transport.read() + self.transport.read()),
            [b"HTTP/1.1 200 OK", b"HTTP/1.1 400 Bad Request"],
        )
        self.assertTrue(self.transport.disconnecting)


class LimitTests(_ClockedChannelTestCase):
    """
    A request's target and header fields are bounded, however they arrive:
    over the limits, a JSON 414 or 431 and the connection closed.
    """

    def answer(self, *chunks: bytes) -> tuple[bytes, dict | None]:
        for chunk in chunks:
            self.channel.dataReceived(chunk)
        head, _, body = self.transport.value().partition(b"\r\n\r\n")
        status = head.split(b"\r\n")[0]
        return status, json.loads(body) if body[:1] == b"{" else None

    def test_header_lines_over_the_limit(self):
        fields = b"".join(b"X-%d: 1\r\n" % i for i in range(MAX_FIELDS))
        status, error = self.answer(
            b"GET /big HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n"
        )
        self.assertEqual(status, b"HTTP/1.1 431 Request Header Fields Too Large")
        self.assertEqual(error["error"], "header_fields_too_large")
        self.assertTrue(self.transport.disconnecting)

    def test_header_lines_at_the_limit(self):
        fields = b"".join(b"X-%d: 1\r\n" % i for i in range(MAX_FIELDS - 1))
        status, _ = self.answer(b"GET /big HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n")
        self.assertEqual(status, b"HTTP/1.1 200 OK")

    def test_one_header_trickling_in_without_end(self):
        """
        llhttp hands over a field only once it ends; the bytes of one that
        never does are counted as they come, and bounded.
        """
        self.channel.dataReceived(b"GET /big HTTP/1.1\r\nHost: x\r\nX: ")
        for _ in range(MAX_HEAD_BYTES // 1000):
            self.channel.dataReceived(b"a" * 1000)
        self.assertEqual(self.transport.value(), b"")
        status, error = self.answer(b"a" * 1000)
        self.assertEqual(status, b"HTTP/1.1 431 Request Header Fields Too Large")
        self.assertEqual(error["error"], "header_fields_too_large")

    def test_header_bytes_at_the_limit_in_small_pieces(self):
        value = b"a" * (MAX_HEAD_BYTES - 200)
        request = b"GET /big HTTP/1.1\r\nHost: x\r\nX: " + value + b"\r\n\r\n"
        pieces = [request[i : i + 100] for i in range(0, len(request), 100)]
        status, _ = self.answer(*pieces)
        self.assertEqual(status, b"HTTP/1.1 200 OK")

    def test_a_long_target(self):
        status, error = self.answer(
            b"GET /big?" + b"a" * MAX_TARGET_BYTES + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        self.assertEqual(status, b"HTTP/1.1 414 Request-URI Too Long")
        self.assertEqual(error["error"], "target_too_long")


class ContinueTests(_ClockedChannelTestCase):
    """
    C{Expect: 100-continue}: the client is told to send its body, unless its
    declared length is refused first.
    """

    PUT = (
        b"PUT /k HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )

    def test_continue_then_the_answer(self):
        self.channel.dataReceived(self.PUT % 1)
        self.assertEqual(self.transport.read(), b"HTTP/1.1 100 Continue\r\n\r\n")
        self.channel.dataReceived(b"v")
        self.assertEqual(
            self.responses(self.transport.value()), [b"HTTP/1.1 201 Created"]
        )
        self.assertEqual(self.successResultOf(self.storage.get("k")).value, b"v")

    def test_too_large_refused_without_continue(self):
        self.channel.dataReceived(self.PUT % 1001)
        sent = self.transport.value()
        self.assertNotIn(b"100 Continue", sent)
        self.assertEqual(refusal(self, sent, 413)["error"], "value_too_large")
        self.assertTrue(self.transport.disconnecting)

    def test_continue_waits_for_the_answers_before_it(self):
        """A 100 follows the responses to earlier requests, in order."""
        streaming = self.site.resource = _Streaming()
        self.channel.dataReceived(
            b"GET /_stream HTTP/1.1\r\nHost: x\r\n\r\n" + self.PUT % 1
        )
        self.assertNotIn(b"100 Continue", self.transport.read())
        streaming.producer.request.unregisterProducer()
        streaming.producer.request.finish()
        self.assertTrue(
            self.transport.read().endswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        )
        self.channel.dataReceived(b"v")
        self.assertEqual(
            self.responses(self.transport.read()), [b"HTTP/1.1 201 Created"]
        )

    def test_no_continue_in_http_1_0(self):
        self.channel.dataReceived(
            b"PUT /k HTTP/1.0\r\nContent-Length: 1\r\nExpect: 100-continue\r\n\r\n"
        )
        self.assertEqual(self.transport.value(), b"")


class PersistenceTests(_ClockedChannelTestCase):
    """Keep-alive in HTTP/1.1 unless the client says close; never in 1.0."""

    def test_http_1_0_answered_then_closed(self):
        self.channel.dataReceived(
            b"GET /big HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" + GET
        )
        sent = self.transport.read()
        self.assertEqual(self.responses(sent), [b"HTTP/1.1 200 OK"])
        self.assertIn(b"\r\nConnection: close\r\n\r\n", sent)
        self.assertTrue(self.transport.disconnecting)

    def test_connection_close_answered_then_closed(self):
        self.channel.dataReceived(
            b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, close\r\n\r\n"
            + GET
        )
        self.assertEqual(self.responses(self.transport.read()), [b"HTTP/1.1 200 OK"])
        self.assertEqual(self.transport.read(), b"")
        self.assertTrue(self.transport.disconnecting)

    def test_upgrade_answered_then_closed(self):
        """No upgrade is offered: the request is answered, then nothing more."""
        self.channel.dataReceived(
            b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\n"
            b"Upgrade: websocket\r\n\r\n" + GET
        )
        self.assertEqual(self.responses(self.transport.read()), [b"HTTP/1.1 200 OK"])
        self.assertTrue(self.transport.disconnecting)

    def test_chunked_body_with_extensions_and_trailers(self):
        self.channel.dataReceived(
            b"PUT /k HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2;name=value\r\nab\r\n1\r\nc\r\n0\r\nContent-Type: image/png\r\n\r\n"
            + b"GET /k HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        sent = self.transport.value()
        self.assertEqual(
            self.responses(sent), [b"HTTP/1.1 201 Created", b"HTTP/1.1 200 OK"]
        )
        record = self.successResultOf(self.storage.get("k"))
        self.assertEqual(
            (record.value, record.content_type), (b"abc", "application/octet-stream")
        )


class _Streaming(Resource):
    """A resource answering with a stream, its producer a push producer."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.producer = _Producer()

    def render_GET(self, request):
        self.producer.request = request
        request.registerProducer(self.producer, True)
        request.write(b"x" * 100_000)
        return NOT_DONE_YET


@implementer(IPushProducer)
class _Producer:
    paused = False
    request = None

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        pass


class StreamingTests(_ClockedChannelTestCase):
    def test_a_stream_pauses_while_the_client_does_not_read(self):
        """
        A response streamed off the fast path (as a watch will be) is told
        to pause while the client leaves it unread, and to resume.
        """
        streaming = self.site.resource = _Streaming()
        self.channel.dataReceived(b"GET /_stream HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(streaming.producer.paused)
        self.transport.read()
        self.assertFalse(streaming.producer.paused)
        request = streaming.producer.request
        request.unregisterProducer()
        request.finish()
        self.channel.dataReceived(GET)
        self.assertEqual(self.responses(self.transport.value()), [b"HTTP/1.1 200 OK"])


class _HeldStorage(DictStorage):
    """A store whose writes are answered when the test releases them."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[tuple[Deferred, Deferred]] = []

    def set(self, *args, **kwargs):
        later = Deferred()
        self.held.append((later, super().set(*args, **kwargs)))
        return later

    def release(self) -> None:
        later, written = self.held.pop(0)
        written.chainDeferred(later)


class ReadAheadTests(TestCase):
    def test_pipelined_requests_read_ahead_are_bounded(self):
        """
        While a request waits on storage, the client's pipelined requests
        are read only a few ahead: the rest stay in the kernel.
        """
        storage = _HeldStorage()
        site = makeSite(Service(storage), reactor=Clock())
        connection = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        transport = StringTransport()
        connection.makeConnection(transport)
        self.addCleanup(connection.connectionLost, None)
        put = b"PUT /k HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nv"
        for _ in range(MOST_WAITING + 1):
            connection.dataReceived(put)
            self.assertEqual(transport.producerState, "producing")
        connection.dataReceived(put)
        self.assertEqual(transport.producerState, "paused")
        answered = 0
        while storage.held:
            storage.release()
            answered += 1
        self.assertEqual(transport.value().count(b"HTTP/1.1 20"), answered)
        self.assertEqual(answered, MOST_WAITING + 2)
        self.assertEqual(transport.producerState, "producing")


class ReviewFindingsTests(_ClockedChannelTestCase):
    """What a review of the connection found, each fixed."""

    def test_a_trailer_field_that_never_ends_is_bounded(self):
        self.channel.dataReceived(
            b"PUT /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"1\r\nx\r\n0\r\nX-Trailer: "
        )
        for _ in range(MAX_HEAD_BYTES // 1000):
            self.channel.dataReceived(b"a" * 1000)
        self.assertEqual(self.transport.value(), b"")
        self.channel.dataReceived(b"a" * 1000)
        error = refusal(self, self.transport.value(), 431)
        self.assertEqual(error["error"], "header_fields_too_large")
        self.assertIsNone(self.successResultOf(self.storage.get("t")))

    def test_a_body_of_many_small_chunks_takes_its_size_in_memory(self):
        self.setUp(max_value_size=200_000)
        self.channel.dataReceived(
            b"PUT /k HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        for _ in range(100):
            self.channel.dataReceived(b"1\r\nx\r\n" * 1000)
        held, _ = tracemalloc.get_traced_memory()
        self.assertLess(held, 4 * 100_000)
        self.channel.dataReceived(b"0\r\n\r\n")
        self.assertEqual(
            self.successResultOf(self.storage.get("k")).value, b"x" * 100_000
        )

    def test_bodies_read_ahead_are_bounded_in_bytes(self):
        """Pipelined bodies waiting behind a request hold a value's worth at most."""
        self.storage = storage = _HeldStorage()
        self.setUp(storage=storage)
        put = b"PUT /k HTTP/1.1\r\nHost: x\r\nContent-Length: 400\r\n\r\n" + b"v" * 400
        self.channel.dataReceived(put)
        self.channel.dataReceived(put + put)
        self.assertEqual(self.transport.producerState, "producing")
        self.channel.dataReceived(put)
        self.assertEqual(self.transport.producerState, "paused")
        while storage.held:
            storage.release()
        self.assertEqual(
            self.responses(self.transport.value()).count(b"HTTP/1.1 204 No Content"), 3
        )
        self.assertEqual(self.transport.producerState, "producing")

    def test_deadlines_stand_still_while_the_daemon_does_not_read(self):
        """
        A head cut in two by a pause of the daemon's making (the client not
        reading an answer) is not the client's slowness.
        """
        self.channel.dataReceived(GET + b"GET /big HTTP/1.1\r\nHo")
        self.assertEqual(self.transport.producerState, "paused")
        self.clock.advance(45)
        self.transport.read()
        self.channel.dataReceived(b"st: x\r\n\r\n")
        self.assertEqual(self.responses(self.transport.read()), [b"HTTP/1.1 200 OK"])
        self.clock.advance(29)
        self.channel.dataReceived(b"GET /big HTTP/1.1\r\n")
        self.clock.advance(30)
        self.assertEqual(
            refusal(self, self.transport.value(), 408)["error"], "request_timeout"
        )

    def test_a_closing_connection_not_read_is_aborted(self):
        """
        A connection closing with its last answer unsent is aborted when the
        client does not take it within 15 s.
        """
        self.channel.dataReceived(
            b"GET /missing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        self.assertTrue(self.transport.disconnecting)
        self.clock.advance(14.9)
        self.assertFalse(self.transport.disconnected)
        self.clock.advance(0.1)
        self.assertTrue(self.transport.disconnected)

    def test_a_client_not_reading_with_a_request_coming_is_dropped(self):
        """
        Reading stops while the client leaves an answer unread, and with it
        the deadline of the request it was sending: the client is dropped
        after a minute all the same.
        """
        self.channel.dataReceived(GET + b"GET /big HTTP/1.1\r\nHo")
        self.clock.advance(59.9)
        self.assertFalse(self.transport.disconnected)
        self.clock.advance(0.1)
        self.assertTrue(self.transport.disconnected)

    def test_a_second_host_is_refused_after_a_first(self):
        self.channel.dataReceived(
            GET + b"GET /big HTTP/1.1\r\nHost: x\r\nHost: evil.example\r\n\r\n"
        )
        sent = self.transport.read() + self.transport.read()
        self.assertEqual(
            self.responses(sent), [b"HTTP/1.1 200 OK", b"HTTP/1.1 400 Bad Request"]
        )

    def test_an_upgrade_request_is_answered_with_connection_close(self):
        self.channel.dataReceived(
            b"GET /missing HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\n"
            b"Upgrade: websocket\r\n\r\n"
        )
        head = self.transport.value().partition(b"\r\n\r\n")[0]
        self.assertIn(b"\r\nConnection: close", head)
        self.assertTrue(self.transport.disconnecting)

    def test_an_error_after_an_answer_sends_no_second_one(self):
        """A failure once the answer is written drops the connection: no 500."""
        self.site.logging = True

        def log(request):
            raise OSError(28, "No space left on device")

        self.site.log = log
        self.channel = self.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5))
        self.transport = _BufferingTransport()
        self.channel.makeConnection(self.transport)
        self.channel.dataReceived(b"GET /missing HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(
            self.responses(self.transport.value()), [b"HTTP/1.1 404 Not Found"]
        )
        self.assertTrue(self.transport.disconnected)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_a_closing_connection_is_shed(self):
        self.channel.dataReceived(
            b"GET /missing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        self.assertTrue(self.transport.disconnecting)
        self.assertFalse(self.transport.disconnected)
        self.assertTrue(self.channel.shed())
        self.assertTrue(self.transport.disconnected)


class MemoryTests(TestCase):
    def test_a_closed_connection_is_freed_at_once(self):
        """
        Nothing keeps a closed connection, its transport and a partial body
        alive until the garbage collector's next full pass.
        """
        gc.disable()
        self.addCleanup(gc.enable)
        lost: Deferred[None] = Deferred()
        built: list[weakref.ref] = []

        class Budget:
            """Tells when the connection it counts is lost, holding none."""

            def spent(self) -> bool:
                return False

            def opened(self, connection) -> None:
                built.append(weakref.ref(connection))

            def closed(self, connection) -> None:
                reactor.callLater(0, lost.callback, None)

        site = makeSite(Service(DictStorage()), budget=Budget())

        async def check() -> None:
            endpoint = serverFromString(reactor, "tcp:0:interface=127.0.0.1")
            port = await endpoint.listen(site)
            self.addCleanup(port.stopListening)
            await raw_exchange(
                port.getHost().port,
                b"PUT /k HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\npartial",
                half_close=True,
            )
            await lost
            await deferLater(reactor, 0, lambda: None)
            self.assertEqual(len(built), 1)
            self.assertIsNone(built[0]())

        return Deferred.fromCoroutine(check())


class NagleTests(TestCase):
    def test_a_response_in_pieces_is_not_held_for_the_clients_ack(self):
        """
        A response twisted.web writes in pieces (head, then body) must not
        wait on a kept-alive connection for the client's delayed ACK: the
        connection's socket has TCP_NODELAY.
        """
        import socket

        async def check():
            site = makeSite(Service(DictStorage()))
            built = []
            build = site.buildProtocol
            site.buildProtocol = lambda addr: built.append(build(addr)) or built[-1]
            endpoint = serverFromString(reactor, "tcp:0:interface=127.0.0.1")
            port = await endpoint.listen(site)
            self.addCleanup(port.stopListening)
            client = socket.create_connection(("127.0.0.1", port.getHost().port))
            self.addCleanup(client.close)
            for _ in range(1000):
                if built:
                    break
                await deferLater(reactor, 0.001, lambda: None)
            (connection,) = built
            handle = connection.transport.getHandle()
            self.assertTrue(handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

        return Deferred.fromCoroutine(check())
