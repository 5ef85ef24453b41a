"""
The REST API over a real loopback socket, where the connection itself is
what is tested: body limits before buffering, HEAD, keep-alive.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import treq
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    connectProtocol,
)
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from ersid.embedded.memory import DictStorage
from ersid.web.app import Service
from ersid.web.site import makeSite

from .._helpers import raw_exchange, refusal, serve

LIMIT = 1000


class _ServedTestCase(TestCase):
    """An Ersid REST service on a loopback port chosen by the OS."""

    def setUp(self):
        self.storage = DictStorage()
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(self.pool.closeCachedConnections)

        async def start():
            self.url = await serve(self, Service(self.storage, LIMIT))
            self.port = urlsplit(self.url).port

        return Deferred.fromCoroutine(start())

    def run_async(self, coroutine) -> Deferred:
        return Deferred.fromCoroutine(coroutine)


class LoopbackTests(_ServedTestCase):
    def assert_refused_as_too_large(self, response: bytes) -> None:
        head, _, body = response.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 413 "), response)
        self.assertNotIn(b"100 Continue", head)
        self.assertEqual(json.loads(body)["error"], "value_too_large")
        self.assertIsNone(self.successResultOf(self.storage.get("big")))

    def test_round_trip_over_keep_alive(self):
        async def check():
            for i in range(3):
                response = await treq.put(
                    f"{self.url}/k{i}", data=b"v%d" % i, pool=self.pool
                )
                await response.content()
                self.assertEqual(response.code, 201)
            response = await treq.get(f"{self.url}/k2", pool=self.pool)
            self.assertEqual(await response.content(), b"v2")

        return self.run_async(check())

    def test_declared_length_over_limit_refused_before_body(self):
        """
        A Content-Length over the limit is answered with 413 from the
        headers alone: the body is never sent, nor asked for.
        """
        request = (
            b"PUT /big HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
            b"Expect: 100-continue\r\n\r\n" % (LIMIT + 1,)
        )
        return self.run_async(raw_exchange(self.port, request)).addCallback(
            self.assert_refused_as_too_large
        )

    def test_chunked_body_growing_over_limit_cut_off(self):
        def chunk(data: bytes) -> bytes:
            return b"%x\r\n%s\r\n" % (len(data), data)

        head = b"PUT /big HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        pieces = [head] + [chunk(b"x" * 300) for _ in range(4)]
        return self.run_async(raw_exchange(self.port, *pieces)).addCallback(
            self.assert_refused_as_too_large
        )

    def test_body_at_limit_accepted(self):
        async def check():
            response = await treq.put(
                f"{self.url}/k", data=b"x" * LIMIT, pool=self.pool
            )
            await response.content()
            self.assertEqual(response.code, 201)
            self.assertEqual(
                len(self.successResultOf(self.storage.get("k")).value), LIMIT
            )

        return self.run_async(check())

    def test_head_reports_length(self):
        async def check():
            await treq.put(f"{self.url}/k", data=b"12345", pool=self.pool)
            response = await raw_exchange(
                self.port, b"HEAD /k HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            head, _, body = response.partition(b"\r\n\r\n")
            self.assertIn(b"\r\nContent-Length: 5", head)
            self.assertEqual(body, b"")

        return self.run_async(check())

    def test_form_content_type_kept_byte_exact(self):
        """
        curl -d sends a form content type; the body is stored as it is, not
        parsed as a form.
        """

        async def check():
            await treq.post(
                f"{self.url}/k",
                data=b"a=1&b=%FF",
                headers={"Content-Type": "application/x-www-form-urlencoded"},
                pool=self.pool,
            )
            response = await treq.get(f"{self.url}/k", pool=self.pool)
            self.assertEqual(await response.content(), b"a=1&b=%FF")

        return self.run_async(check())


class _ClockedTestCase(TestCase):
    """The site over an in-memory connection, its time told by a Clock."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)  # Tue, 14 Nov 2023 22:13:20 GMT
        self.storage = DictStorage()
        self.site = makeSite(
            Service(self.storage, LIMIT), body_timeout=30, reactor=self.clock
        )
        self.connect()

    def connect(self) -> None:
        """A new client connection, as C{self.channel} and C{self.transport}."""
        address = IPv4Address("TCP", "127.0.0.1", 50000)
        self.channel = self.site.buildProtocol(address)
        self.transport = StringTransport()
        self.channel.makeConnection(self.transport)
        self.addCleanup(self.channel.connectionLost, None)


class ResponseHeaderTests(_ClockedTestCase):
    def response_head(self, request: bytes) -> list[bytes]:
        self.transport.clear()
        self.channel.dataReceived(request)
        return self.transport.value().partition(b"\r\n\r\n")[0].split(b"\r\n")

    def test_date_header_tells_the_current_second(self):
        self.clock.advance(0.7)
        get = b"GET /missing HTTP/1.1\r\nHost: x\r\n\r\n"
        self.assertIn(b"Date: Tue, 14 Nov 2023 22:13:20 GMT", self.response_head(get))
        self.clock.advance(0.2)
        self.assertIn(b"Date: Tue, 14 Nov 2023 22:13:20 GMT", self.response_head(get))
        self.clock.advance(0.2)
        self.assertIn(b"Date: Tue, 14 Nov 2023 22:13:21 GMT", self.response_head(get))

    def test_no_server_header_advertising_versions(self):
        head = self.response_head(b"GET /missing HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(head[0].startswith(b"HTTP/1.1 404 "), head)
        self.assertFalse([line for line in head if line.lower().startswith(b"server:")])

    def test_options_star_answered_by_twisted(self):
        head = self.response_head(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(head[0].startswith(b"HTTP/1.1 200 "), head)

    def test_api_endpoints_routed_by_klein_see_their_path(self):
        self.channel.dataReceived(
            b"PUT /a%2Fb HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nv"
        )
        self.transport.clear()
        self.channel.dataReceived(b"GET /_keys?prefix=a HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _, body = self.transport.value().partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 200 "), head)
        self.assertEqual(json.loads(body)["keys"], ["a/b"])

    def test_query_and_cookies_are_not_part_of_the_key(self):
        self.channel.dataReceived(
            b"PUT /k?version=2 HTTP/1.1\r\nHost: x\r\nCookie: a=b; c=d\r\n"
            b"Content-Length: 1\r\n\r\nv"
        )
        self.transport.clear()
        self.channel.dataReceived(b"GET /k HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _, body = self.transport.value().partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/1.1 200 "), head)
        self.assertEqual(body, b"v")


class RequestTargetTests(_ClockedTestCase):
    """
    A request target in absolute form, which HTTP/1.1 servers must accept,
    names the key in its path; anything else that is not a path is refused
    with a JSON error and changes nothing.
    """

    def exchange(self, request: bytes) -> tuple[bytes, bytes]:
        self.transport.clear()
        self.channel.dataReceived(request)
        head, _, body = self.transport.value().partition(b"\r\n\r\n")
        return head.split(b"\r\n")[0], body

    def test_absolute_form_names_the_key_in_its_path(self):
        status, _ = self.exchange(
            b"PUT http://ersid.test:8080/a%2Fb?x=1 HTTP/1.1\r\n"
            b"Host: ersid.test:8080\r\nContent-Length: 1\r\n\r\nv"
        )
        self.assertTrue(status.startswith(b"HTTP/1.1 201 "), status)
        self.assertEqual(self.successResultOf(self.storage.keys()).items, ["a/b"])
        status, body = self.exchange(
            b"GET HTTPS://ersid.test/a%2Fb HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        self.assertEqual((status, body), (b"HTTP/1.1 200 OK", b"v"))
        _, body = self.exchange(
            b"GET http://ersid.test/_keys?prefix=a HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        self.assertEqual(json.loads(body)["keys"], ["a/b"])

    def test_absolute_form_without_a_path_is_the_empty_key(self):
        status, body = self.exchange(
            b"PUT http://ersid.test HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nv"
        )
        self.assertTrue(status.startswith(b"HTTP/1.1 400 "), status)
        self.assertEqual(json.loads(body)["error"], "bad_key")
        self.assertEqual(self.successResultOf(self.storage.stats()), (0, 0))

    def test_other_targets_refused(self):
        for target in [b"k", b"ftp://host/k", b"http:/k", b"ersid.test:80", b"*"]:
            self.connect()
            status, body = self.exchange(
                b"PUT " + target + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nv"
            )
            self.assertTrue(status.startswith(b"HTTP/1.1 400 "), (target, status))
            self.assertEqual(json.loads(body)["error"], "bad_request_target")
        self.assertEqual(self.successResultOf(self.storage.stats()), (0, 0))

    def test_requests_the_parser_refuses_get_a_json_error(self):
        for request, status_line, code in [
            (
                b"PUT /k HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
                b"HTTP/1.1 400 Bad Request",
                "bad_request",
            ),
            (
                b"PUT /k HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nv",
                b"HTTP/1.1 400 Bad Request",
                "bad_request",
            ),
            (
                b"GET /k HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 17000 + b"\r\n\r\n",
                b"HTTP/1.1 431 Request Header Fields Too Large",
                "header_fields_too_large",
            ),
            (
                b"GET /k HTTP/9.9\r\nHost: x\r\n\r\n",
                b"HTTP/1.1 400 Bad Request",
                "bad_request",
            ),
            (
                b"GET /k HTTP/2.0\r\nHost: x\r\n\r\n",
                b"HTTP/1.1 505 HTTP Version Not Supported",
                "http_version_not_supported",
            ),
        ]:
            self.connect()
            status, body = self.exchange(request)
            self.assertEqual(status, status_line, request[:40])
            self.assertEqual(json.loads(body)["error"], code)
            self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.successResultOf(self.storage.stats()), (0, 0))


class IdleTimeoutTests(_ClockedTestCase):
    """
    A connection that sends nothing for a minute, while none of its requests
    is being answered, is dropped; on a Clock.
    """

    GET = b"GET /k HTTP/1.1\r\nHost: x\r\n\r\n"

    def assert_dropped_after_a_minute_of_silence(self) -> None:
        self.clock.advance(59.9)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(self.transport.disconnecting)

    def test_idle_keep_alive_connection_dropped_after_a_minute(self):
        self.channel.dataReceived(self.GET)
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 404 "))
        self.assert_dropped_after_a_minute_of_silence()

    def test_each_request_restarts_the_minute(self):
        for _ in range(3):
            self.clock.advance(59)
            self.channel.dataReceived(self.GET)
        self.assertEqual(self.transport.value().count(b"HTTP/1.1 404 "), 3)
        self.assert_dropped_after_a_minute_of_silence()

    def test_request_being_answered_is_not_timed_out(self):
        pending = _Pending()
        self.site.resource = pending
        self.channel.dataReceived(b"GET /_health HTTP/1.1\r\nHost: x\r\n\r\n")
        self.clock.advance(600)
        self.assertFalse(self.transport.disconnecting)
        pending.requests[0].finish()
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 200 "))
        self.assert_dropped_after_a_minute_of_silence()

    def test_no_timer_left_behind_by_a_closed_connection(self):
        self.channel.dataReceived(self.GET)
        self.channel.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class _Pending(Resource):
    """A resource that answers only when told to."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list = []

    def render(self, request):
        self.requests.append(request)
        return NOT_DONE_YET


class SlowClientTests(_ClockedTestCase):
    """A body that trickles in is given a deadline, measured on a Clock."""

    def trickle(self, length: int, seconds: int) -> None:
        """Send a PUT of C{length} bytes, one byte a second for C{seconds}."""
        self.channel.dataReceived(
            b"PUT /slow HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % length
        )
        for _ in range(seconds):
            self.clock.advance(1)
            self.channel.dataReceived(b"x")

    def test_body_one_byte_a_second_cut_off_at_deadline(self):
        self.trickle(100, 29)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(1)
        error = refusal(self, self.transport.value(), 408)
        self.assertEqual(error["error"], "request_timeout")
        self.assertTrue(self.transport.disconnecting)
        self.assertIsNone(self.successResultOf(self.storage.get("slow")))

    def test_chunked_body_trickling_its_framing_cut_off_at_deadline(self):
        """
        Chunk sizes, extensions and trailers carry no body bytes: a client
        sending them a byte at a time still meets the deadline.
        """
        for framing in [b"3;" + b"x" * 40, b"0\r\nTrailer: " + b"x" * 40]:
            self.connect()
            self.channel.dataReceived(
                b"PUT /slow HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            for byte in framing[:29]:
                self.clock.advance(1)
                self.channel.dataReceived(bytes([byte]))
            self.assertFalse(self.transport.disconnecting)
            self.clock.advance(1)
            error = refusal(self, self.transport.value(), 408)
            self.assertEqual(error["error"], "request_timeout")
        self.assertIsNone(self.successResultOf(self.storage.get("slow")))

    def test_body_that_never_starts_cut_off_at_deadline(self):
        self.trickle(100, 0)
        self.clock.advance(29.9)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(0.1)
        error = refusal(self, self.transport.value(), 408)
        self.assertEqual(error["error"], "request_timeout")
        self.assertIsNone(self.successResultOf(self.storage.get("slow")))

    def test_slow_but_complete_body_accepted(self):
        self.trickle(10, 10)
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 201 "))
        self.assertEqual(
            self.successResultOf(self.storage.get("slow")).value, b"x" * 10
        )
        self.clock.advance(60)
        self.assertNotIn(b"408", self.transport.value())


class ManyClientsTests(_ServedTestCase):
    def test_slow_client_does_not_hold_up_others(self):
        async def check():
            slow = await connectProtocol(
                TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), Protocol()
            )
            slow.transport.write(
                b"PUT /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nx"
            )
            for i in range(20):
                response = await treq.put(f"{self.url}/k{i}", data=b"v", pool=self.pool)
                self.assertEqual(response.code, 201)
                await response.content()
            slow.transport.loseConnection()
            self.assertIsNone(self.successResultOf(self.storage.get("slow")))

        return self.run_async(check())

    def test_a_thousand_concurrent_connections(self):
        pool = HTTPConnectionPool(reactor, persistent=False)

        async def one(i: int) -> None:
            response = await treq.put(f"{self.url}/c/{i}", data=b"%d" % i, pool=pool)
            self.assertEqual(response.code, 201)
            await response.content()
            response = await treq.get(f"{self.url}/c/{i}", pool=pool)
            self.assertEqual(await response.content(), b"%d" % i)

        async def check():
            await gatherResults([Deferred.fromCoroutine(one(i)) for i in range(1000)])
            self.assertEqual(self.successResultOf(self.storage.stats())[0], 1000)

        return self.run_async(check())


class AccessLogTests(TestCase):
    def test_each_request_logged_with_its_client(self):
        """
        With C{--access-log}, every request on a keep-alive connection, on
        the fast path or not, is a line in the combined format, naming the
        client's address.
        """
        path = self.mktemp()
        site = makeSite(Service(DictStorage()), access_log=path, reactor=Clock())
        site.doStart()
        channel = site.buildProtocol(None)
        client = IPv4Address("TCP", "10.0.0.7", 50000)
        channel.makeConnection(StringTransport(peerAddress=client))
        channel.dataReceived(
            b"PUT /k HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nv"
            b"GET /k HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /_keys?limit=1 HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        channel.connectionLost(None)
        site.doStop()
        with open(path) as log:
            lines = log.read().splitlines()
        self.assertEqual(len(lines), 3, lines)
        for line, request, status in zip(
            lines,
            ["PUT /k", "GET /k", "GET /_keys?limit=1"],
            ["201", "200", "200"],
            strict=True,
        ):
            self.assertTrue(line.startswith('"10.0.0.7" - - ['), line)
            self.assertIn(f'"{request} HTTP/1.1" {status} ', line)
