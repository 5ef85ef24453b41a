"""
The REST API over a real loopback socket, where the connection itself is
what is tested: body limits before buffering, HEAD, keep-alive.
"""

from __future__ import annotations

import json

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from ersid.memory import DictStorage
from ersid.rest import Service, makeSite

from ._helpers import raw_exchange

LIMIT = 1000


class LoopbackTests(TestCase):
    def setUp(self):
        self.storage = DictStorage()
        endpoint = serverFromString(reactor, "tcp:0:interface=127.0.0.1")
        listening = endpoint.listen(makeSite(Service(self.storage, LIMIT)))

        def listened(port):
            self.addCleanup(port.stopListening)
            self.port = port.getHost().port
            self.url = f"http://127.0.0.1:{self.port}"

        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(self.pool.closeCachedConnections)
        return listening.addCallback(listened)

    def run_async(self, coroutine) -> Deferred:
        return Deferred.fromCoroutine(coroutine)

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
