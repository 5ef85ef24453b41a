"""
Keys with a time to live, as a client of the HTTP API sees them: the
C{Ersid-TTL} request header, C{Ersid-Expires} and C{Ersid-TTL} on answers,
reads at the instant of expiry, C{PATCH} refreshes, conditions on expired
keys (C{If-None-Match: *} with a time to live as a lock), and the
C{expire} events of C{/_watch}. The store's clock is a L{Clock}: nothing
sleeps.
"""

from __future__ import annotations

import json
import time
from decimal import Decimal

import treq
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from ersid.embedded.memory import DictStorage
from ersid.watch.history import History
from ersid.watch.hub import Hub
from ersid.web.app import Service

from .._helpers import http
from .test_watch import _Watching

BASE = "http://ersid.test"
# The longest time to live, ten years.
MAX_TTL = "315576000"


def _start() -> int:
    """
    A whole second of today's Unix time, for the store's clock: the seconds
    left (C{Ersid-TTL}) are counted by the server's own clock.
    """
    return int(time.time())


def _at(start: int, seconds: str) -> str:
    """C{Ersid-Expires} for C{seconds} after C{start}: 6 decimals."""
    return f"{Decimal(start) + Decimal(seconds):.6f}"


class _Store(TestCase):
    """A service over a store whose clock the test turns."""

    def setUp(self):
        self.start = _start()
        self.clock = Clock()
        self.clock.advance(self.start)
        self.hub = Hub(History(), self.clock)
        self.storage = DictStorage(clock=self.clock, publish=self.hub.publish)
        self.service = Service(self.storage, hub=self.hub)

    def at(self, expires: str) -> None:
        """Turn the clock to the Unix time C{expires} (a decimal string)."""
        # The difference of two close floats is exact, and so is their sum.
        self.clock.advance(float(expires) - self.clock.seconds())
        self.assertEqual(self.clock.seconds(), float(expires))


class ExpiryTests(_Store):
    def setUp(self):
        super().setUp()
        self.http = StubTreq(self.service.resource())

    def run_async(self, coroutine) -> Deferred:
        return Deferred.fromCoroutine(coroutine)

    async def request(self, method, path, body=None, headers=None):
        response = await self.http.request(
            method, BASE + path, data=body, headers=headers or {}
        )
        return response, await response.content()

    async def error(self, method, path, status, code, **kw) -> None:
        response, content = await self.request(method, path, **kw)
        self.assertEqual(response.code, status, content)
        self.assertEqual(
            response.headers.getRawHeaders("content-type"), ["application/json"]
        )
        self.assertEqual(json.loads(content)["error"], code, content)
        self.assertIsNone(response.headers.getRawHeaders("ersid-expires"))

    async def keys(self, prefix: str = "") -> dict:
        response, content = await self.request("GET", f"/_keys?prefix={prefix}")
        self.assertEqual(response.code, 200)
        return json.loads(content)

    def expiry_of(self, response) -> str | None:
        """
        C{Ersid-Expires} of an answer (C{None} without it), checking that
        C{Ersid-TTL} comes with it, in seconds with 3 decimals.
        """
        expires = response.headers.getRawHeaders("ersid-expires")
        left = response.headers.getRawHeaders("ersid-ttl")
        if expires is None:
            self.assertIsNone(left)
            return None
        self.assertEqual(len(expires), 1)
        self.assertEqual(len(left), 1)
        self.assertRegex(left[0], r"\A[0-9]+\.[0-9]{3}\Z")
        return expires[0]

    def assertSecondsLeft(self, response) -> None:
        """
        C{Ersid-TTL} is what C{Ersid-Expires} leaves by the server's own
        clock (the Unix time, not the store's L{Clock}), at least 0.001.
        """
        expires = self.expiry_of(response)
        self.assertIsNotNone(expires)
        left = float(response.headers.getRawHeaders("ersid-ttl")[0])
        # Counted a moment ago, to 3 decimals.
        least = max(float(expires) - time.time(), 0.001) - 0.001
        self.assertTrue(least <= left <= least + 1, (left, least))

    def test_accepted_ttls(self):
        async def check():
            forms = ["30", "0.5", "1.000001", "0.000001", MAX_TTL, "007"]
            for n, ttl in enumerate(forms):
                method = "PUT" if n % 2 else "POST"
                response, _ = await self.request(
                    method, f"/k{n}", b"v", {"Ersid-TTL": [ttl]}
                )
                self.assertEqual(response.code, 201, ttl)
                self.assertEqual(self.expiry_of(response), _at(self.start, ttl), ttl)
                self.assertSecondsLeft(response)
                response, content = await self.request("GET", f"/k{n}")
                self.assertEqual((response.code, content), (200, b"v"), ttl)
                self.assertEqual(self.expiry_of(response), _at(self.start, ttl), ttl)
            self.assertEqual(
                (await self.keys())["keys"], [f"k{n}" for n in range(len(forms))]
            )

        return self.run_async(check())

    def test_refused_ttls_change_nothing(self):
        async def check():
            created, _ = await self.request("PUT", "/k", b"old", {"Ersid-TTL": ["60"]})
            etag = created.headers.getRawHeaders("etag")
            revision = (await self.keys())["revision"]
            for ttl in [
                ["0"],
                ["0.000000"],
                ["-1"],
                ["1e3"],
                ["abc"],
                [""],
                [" 5 5"],
                ["400000000"],
                ["315576000.000001"],
                ["1.0000001"],
                ["00000000001"],
                ["5", "5"],
            ]:
                for method in ("PUT", "POST", "PATCH"):
                    body = None if method == "PATCH" else b"new"
                    headers = {"Ersid-TTL": ttl}
                    await self.error(
                        method, "/k", 400, "bad_ttl", body=body, headers=headers
                    )
                    await self.error(
                        method, "/absent", 400, "bad_ttl", body=body, headers=headers
                    )
                response, content = await self.request("GET", "/k")
                self.assertEqual((response.code, content), (200, b"old"), ttl)
                self.assertEqual(response.headers.getRawHeaders("etag"), etag)
                self.assertEqual(self.expiry_of(response), _at(self.start, "60"))
                await self.error("GET", "/absent", 404, "not_found")
                self.assertEqual(
                    await self.keys(),
                    {"keys": ["k"], "next": None, "revision": revision},
                )

        return self.run_async(check())

    def test_expiry_headers_on_writes_and_reads(self):
        async def check():
            response, _ = await self.request("PUT", "/k", b"v", {"Ersid-TTL": ["30"]})
            self.assertEqual(response.code, 201)
            expires = _at(self.start, "30")
            self.assertEqual(self.expiry_of(response), expires)
            self.assertSecondsLeft(response)
            for method in ("GET", "HEAD"):
                response, _ = await self.request(method, "/k")
                self.assertEqual(response.code, 200)
                self.assertEqual(self.expiry_of(response), expires, method)
                self.assertSecondsLeft(response)
            # A 304 says when the copy the client holds expires.
            response, _ = await self.request(
                "GET", "/k", headers={"If-None-Match": ['"1"']}
            )
            self.assertEqual(response.code, 304)
            self.assertEqual(self.expiry_of(response), expires)
            # Replaced with another time to live, then with none: lasting.
            response, _ = await self.request("PUT", "/k", b"w", {"Ersid-TTL": ["60"]})
            self.assertEqual(response.code, 204)
            self.assertEqual(self.expiry_of(response), _at(self.start, "60"))
            response, _ = await self.request("PUT", "/k", b"x")
            self.assertEqual(response.code, 204)
            self.assertIsNone(self.expiry_of(response))
            self.at(_at(self.start, "3600"))
            for method in ("GET", "HEAD"):
                response, content = await self.request(method, "/k")
                self.assertEqual(response.code, 200, method)
                self.assertIsNone(self.expiry_of(response))
            self.assertEqual(content, b"")  # HEAD
            # A key written without one never had one.
            response, _ = await self.request("POST", "/lasting", b"v")
            self.assertEqual(response.code, 201)
            self.assertIsNone(self.expiry_of(response))
            response, _ = await self.request("GET", "/lasting")
            self.assertIsNone(self.expiry_of(response))

        return self.run_async(check())

    def test_reads_at_the_instant_of_expiry(self):
        async def check():
            await self.request("PUT", "/a/k", b"v", {"Ersid-TTL": ["10"]})
            await self.request("PUT", "/a/lasting", b"v")
            expires = _at(self.start, "10")
            self.at(_at(self.start, "9.999999"))
            for method in ("GET", "HEAD"):
                response, _ = await self.request(method, "/a/k")
                self.assertEqual(response.code, 200, method)
                self.assertEqual(self.expiry_of(response), expires)
                self.assertSecondsLeft(response)
            self.assertEqual((await self.keys("a/"))["keys"], ["a/k", "a/lasting"])
            self.at(expires)
            await self.error("GET", "/a/k", 404, "not_found")
            response, content = await self.request("HEAD", "/a/k")
            self.assertEqual((response.code, content), (404, b""))
            self.assertIsNone(self.expiry_of(response))
            self.assertEqual((await self.keys("a/"))["keys"], ["a/lasting"])
            # Gone before the reaper came, and after.
            self.storage.reap()
            await self.error("GET", "/a/k", 404, "not_found")
            self.assertEqual((await self.keys("a/"))["keys"], ["a/lasting"])

        return self.run_async(check())

    def test_patch_refreshes(self):
        async def check():
            created, _ = await self.request(
                "PUT",
                "/k",
                b"value",
                {"Ersid-TTL": ["10"], "Content-Type": ["text/plain; charset=utf-8"]},
            )
            old = created.headers.getRawHeaders("etag")
            self.at(_at(self.start, "4"))
            response, content = await self.request(
                "PATCH", "/k", headers={"Ersid-TTL": ["60"], "If-Match": old}
            )
            self.assertEqual((response.code, content), (204, b""))
            new = response.headers.getRawHeaders("etag")
            self.assertNotEqual(new, old)
            expires = _at(self.start, "64")
            self.assertEqual(self.expiry_of(response), expires)
            self.assertSecondsLeft(response)
            # Past the old expiry, the key lives on, its value as it was.
            self.at(_at(self.start, "10"))
            response, content = await self.request("GET", "/k")
            self.assertEqual((response.code, content), (200, b"value"))
            self.assertEqual(
                response.headers.getRawHeaders("content-type"),
                ["text/plain; charset=utf-8"],
            )
            self.assertEqual(response.headers.getRawHeaders("etag"), new)
            self.assertEqual(self.expiry_of(response), expires)
            # The old ETag no longer matches, for a refresh or any write.
            for method, body in [("PATCH", None), ("PUT", b"w"), ("DELETE", None)]:
                await self.error(
                    method,
                    "/k",
                    412,
                    "precondition_failed",
                    body=body,
                    headers={"Ersid-TTL": ["5"], "If-Match": old},
                )
            response, _ = await self.request("GET", "/k")
            self.assertEqual(response.headers.getRawHeaders("etag"), new)
            self.assertEqual(self.expiry_of(response), expires)
            # A lasting key refreshed takes a time to live.
            await self.request("PUT", "/lasting", b"v")
            response, _ = await self.request(
                "PATCH", "/lasting", headers={"Ersid-TTL": ["1"]}
            )
            self.assertEqual(response.code, 204)
            self.assertEqual(self.expiry_of(response), _at(self.start, "11"))
            self.at(_at(self.start, "11"))
            await self.error("GET", "/lasting", 404, "not_found")

        return self.run_async(check())

    def test_patch_refused(self):
        async def check():
            created, _ = await self.request("PUT", "/k", b"v", {"Ersid-TTL": ["10"]})
            etag = created.headers.getRawHeaders("etag")
            await self.error("PATCH", "/k", 400, "bad_ttl")
            await self.error(
                "PATCH", "/k", 400, "bad_body", body=b"x", headers={"Ersid-TTL": ["60"]}
            )
            response, _ = await self.request("GET", "/k")
            self.assertEqual(response.headers.getRawHeaders("etag"), etag)
            self.assertEqual(self.expiry_of(response), _at(self.start, "10"))
            ttl = {"Ersid-TTL": ["60"]}
            await self.error("PATCH", "/missing", 404, "not_found", headers=ttl)
            # Expired, though not yet reaped: not there to refresh.
            self.at(_at(self.start, "10"))
            await self.error("PATCH", "/k", 404, "not_found", headers=ttl)
            await self.error("GET", "/k", 404, "not_found")
            self.assertEqual((await self.keys())["keys"], [])
            await self.error("PATCH", "/missing", 404, "not_found", headers=ttl)

        return self.run_async(check())

    def test_create_only_with_a_ttl_is_a_lock(self):
        async def check():
            acquire = {"If-None-Match": ["*"], "Ersid-TTL": ["10"]}

            async def refused(value: bytes) -> None:
                await self.error(
                    "PUT",
                    "/lock",
                    412,
                    "precondition_failed",
                    body=value,
                    headers=acquire,
                )

            response, _ = await self.request("PUT", "/lock", b"first", acquire)
            self.assertEqual(response.code, 201)
            await refused(b"second")
            self.at(_at(self.start, "9.999999"))
            await refused(b"second")
            response, content = await self.request("GET", "/lock")
            self.assertEqual(content, b"first")
            # The instant it expires, it may be taken: the reaper has not run.
            self.at(_at(self.start, "10"))
            response, _ = await self.request("PUT", "/lock", b"second", acquire)
            self.assertEqual(response.code, 201)
            self.assertEqual(self.expiry_of(response), _at(self.start, "20"))
            response, content = await self.request("GET", "/lock")
            self.assertEqual((response.code, content), (200, b"second"))
            await refused(b"third")

        return self.run_async(check())

    def test_conditions_on_an_expired_key(self):
        async def check():
            created, _ = await self.request("PUT", "/k", b"v", {"Ersid-TTL": ["5"]})
            etag = created.headers.getRawHeaders("etag")
            self.at(_at(self.start, "5"))
            for method, body in [("PUT", b"w"), ("POST", b"w")]:
                for condition in (etag, ["*"]):
                    await self.error(
                        method,
                        "/k",
                        412,
                        "precondition_failed",
                        body=body,
                        headers={"If-Match": condition},
                    )
            # Without their conditions, these would be 404s: so they are
            # (RFC 9110, 13.2.1), as for a key that never was.
            for key in ("k", "never"):
                for condition in (etag, ["*"]):
                    await self.error(
                        "DELETE",
                        f"/{key}",
                        404,
                        "not_found",
                        headers={"If-Match": condition},
                    )
                    await self.error(
                        "PATCH",
                        f"/{key}",
                        404,
                        "not_found",
                        headers={"If-Match": condition, "Ersid-TTL": ["60"]},
                    )
            # Nor does a read's If-None-Match see it: there is nothing.
            await self.error(
                "GET", "/k", 404, "not_found", headers={"If-None-Match": etag}
            )
            await self.error("DELETE", "/k", 404, "not_found")
            # Unconditionally, a write creates it anew.
            response, _ = await self.request("PUT", "/k", b"w")
            self.assertEqual(response.code, 201)
            self.assertIsNone(self.expiry_of(response))

        return self.run_async(check())


class ExpiryWatchTests(_Watching, _Store):
    """The changes expiry makes, in a C{/_watch} stream over loopback."""

    def setUp(self):
        _Store.setUp(self)
        self.http = http()

    async def send(self, method: str, key: str, body=None, headers=None) -> int:
        response = await self.http.request(
            method, await self.url() + "/" + key, data=body, headers=headers
        )
        await treq.content(response)
        return response.code

    def test_put_refresh_expire_and_delete(self):
        async def check():
            reader = await self.watch("?prefix=app/&values=1")
            text = {"Content-Type": ["text/plain"]}
            ttl = {**text, "Ersid-TTL": ["10"]}
            self.assertEqual(await self.send("PUT", "app/k", b"v", ttl), 201)
            self.at(_at(self.start, "4"))
            self.assertEqual(
                await self.send("PATCH", "app/k", headers={"Ersid-TTL": ["20"]}), 204
            )
            self.at(_at(self.start, "24"))
            self.assertEqual(await self.send("GET", "app/k"), 404)
            self.assertFalse(self.storage.reap())
            # A key with a time to live deleted before it expires: a delete.
            self.assertEqual(await self.send("PUT", "app/d", b"x", ttl), 201)
            self.assertEqual(await self.send("DELETE", "app/d"), 204)
            await reader.count(5)

            def put(revision: int, key: str, expires: str, value: str) -> tuple:
                document = {
                    "type": "put",
                    "content_type": "text/plain",
                    "key": key,
                    "revision": revision,
                    "expires": float(_at(self.start, expires)),
                    "value": value,
                }
                return ("put", str(revision), document)

            self.assertEqual(
                reader.events,
                [
                    put(1, "app/k", "10", "v"),
                    put(2, "app/k", "24", "v"),
                    ("expire", "3", {"type": "expire", "key": "app/k", "revision": 3}),
                    put(4, "app/d", "34", "x"),
                    ("delete", "5", {"type": "delete", "key": "app/d", "revision": 5}),
                ],
            )

        return Deferred.fromCoroutine(check())

    def test_a_write_to_an_expired_key_expires_it_first(self):
        async def check():
            reader = await self.watch("?prefix=app/")
            ttl = {"Ersid-TTL": ["1"]}
            self.assertEqual(await self.send("PUT", "app/k", b"v", ttl), 201)
            self.at(_at(self.start, "1"))
            # Not reaped, but gone: created anew.
            self.assertEqual(await self.send("PUT", "app/k", b"w"), 201)
            await reader.count(3)
            self.assertEqual(
                [
                    (name, ident, data.get("expires"))
                    for name, ident, data in reader.events
                ],
                [
                    ("put", "1", float(_at(self.start, "1"))),
                    ("expire", "2", None),
                    ("put", "3", None),
                ],
            )
            # Nothing left for the reaper.
            self.assertFalse(self.storage.reap())
            await self.send("DELETE", "app/k")
            await reader.count(4)
            self.assertEqual(reader.events[3][:2], ("delete", "4"))

        return Deferred.fromCoroutine(check())
