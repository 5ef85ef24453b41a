"""
The REST API, driven in memory through L{StubTreq}.
"""

from __future__ import annotations

import json
from urllib.parse import quote, urlencode

from hypothesis import given, settings
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail
from twisted.trial.unittest import TestCase
from zope.interface import implementer_only

from ersid.embedded.memory import DictStorage
from ersid.storage import IStorage, Record
from ersid.web.app import Service
from ersid.web.parsing import MAX_KEY_BYTES

BASE = "http://ersid.test"


class _BrokenStorage(DictStorage):
    """A bug in reads answered at once."""

    def get_now(self, key):
        raise ZeroDivisionError("a bug")


@implementer_only(IStorage)
class _BrokenLaterStorage(DictStorage):
    """A bug in reads answered through a Deferred."""

    def get(self, key):
        return fail(ZeroDivisionError("a bug"))


class RestTests(TestCase):
    def setUp(self):
        self.storage = DictStorage()
        self.service = Service(
            self.storage, max_value_size=64, health=lambda: {"snapshot": None}
        )
        self.http = StubTreq(self.service.resource())

    def run_async(self, coroutine) -> Deferred:
        return Deferred.fromCoroutine(coroutine)

    async def request(self, method, path, body=b"", headers=None):
        response = await self.http.request(
            method, BASE + path, data=body, headers=headers or {}
        )
        content = await response.content()
        return response, content

    async def expect_error(self, method, path, status, code, **kw):
        response, content = await self.request(method, path, **kw)
        self.assertEqual(response.code, status, content)
        self.assertEqual(
            response.headers.getRawHeaders("content-type"), ["application/json"]
        )
        self.assertEqual(json.loads(content)["error"], code)
        return response

    def test_lab_round_trip(self):
        async def check():
            response, _ = await self.request("POST", "/mykey", b"myvalue")
            self.assertEqual(response.code, 201)
            response, content = await self.request("GET", "/mykey")
            self.assertEqual((response.code, content), (200, b"myvalue"))

        return self.run_async(check())

    def test_put_created_then_replaced_with_etags(self):
        async def check():
            created, _ = await self.request("PUT", "/k", b"1")
            replaced, _ = await self.request("PUT", "/k", b"2")
            self.assertEqual(created.code, 201)
            self.assertEqual(replaced.code, 204)
            first = created.headers.getRawHeaders("etag")[0]
            second = replaced.headers.getRawHeaders("etag")[0]
            self.assertNotEqual(first, second)
            got, _ = await self.request("GET", "/k")
            self.assertEqual(got.headers.getRawHeaders("etag"), [second])

        return self.run_async(check())

    def test_binary_value_and_content_type(self):
        value = b"\x00\xff\x00binary\r\n\x00"

        async def check():
            await self.request(
                "PUT", "/bin", value, headers={"Content-Type": ["image/png"]}
            )
            response, content = await self.request("GET", "/bin")
            self.assertEqual(content, value)
            headers = response.headers
            self.assertEqual(headers.getRawHeaders("content-type"), ["image/png"])
            self.assertEqual(response.length, len(value))
            self.assertEqual(
                headers.getRawHeaders("x-content-type-options"), ["nosniff"]
            )
            # Opened as a page, a value runs nothing and has no origin.
            self.assertEqual(
                headers.getRawHeaders("content-security-policy"), ["sandbox"]
            )

        return self.run_async(check())

    def test_default_content_type(self):
        async def check():
            await self.request("PUT", "/k", b"v")
            response, _ = await self.request("GET", "/k")
            self.assertEqual(
                response.headers.getRawHeaders("content-type"),
                ["application/octet-stream"],
            )

        return self.run_async(check())

    def test_head(self):
        async def check():
            await self.request("PUT", "/k", b"12345")
            response, content = await self.request("HEAD", "/k")
            self.assertEqual((response.code, content), (200, b""))
            self.assertTrue(response.headers.getRawHeaders("etag"))
            missing, _ = await self.request("HEAD", "/missing")
            self.assertEqual(missing.code, 404)

        return self.run_async(check())

    def test_missing_key(self):
        return self.run_async(
            self.expect_error("GET", "/another_key", 404, "not_found")
        )

    def test_delete(self):
        async def check():
            await self.request("PUT", "/k", b"v")
            response, _ = await self.request("DELETE", "/k")
            self.assertEqual(response.code, 204)
            await self.expect_error("GET", "/k", 404, "not_found")
            await self.expect_error("DELETE", "/k", 404, "not_found")

        return self.run_async(check())

    def test_hierarchical_and_percent_decoded_keys(self):
        async def check():
            await self.request("PUT", "/a/b/c", b"1")
            await self.request("PUT", "/" + quote("clé ü/x", safe=""), b"2")
            self.assertEqual(
                self.successResultOf(self.storage.get("a/b/c")).value, b"1"
            )
            self.assertEqual(
                self.successResultOf(self.storage.get("clé ü/x")).value, b"2"
            )
            _, content = await self.request("GET", "/a%2Fb%2Fc")
            self.assertEqual(content, b"1")

        return self.run_async(check())

    def test_bad_keys(self):
        async def check():
            await self.expect_error("PUT", "/%FF", 400, "bad_key", body=b"x")
            await self.expect_error("GET", "/%C3", 400, "bad_key")
            await self.expect_error("PUT", "/", 400, "bad_key", body=b"x")
            await self.expect_error("PUT", "/_mine", 400, "reserved_key", body=b"x")
            # An endpoint of the API's own answers other methods with 405.
            response = await self.expect_error(
                "POST", "/_keys", 405, "method_not_allowed"
            )
            self.assertEqual(response.headers.getRawHeaders("Allow"), ["GET, HEAD"])
            await self.expect_error("PUT", "/_health", 405, "method_not_allowed")
            await self.expect_error("GET", "/_nothing", 400, "reserved_key")
            self.assertEqual(self.successResultOf(self.storage.stats()), (0, 0))

        return self.run_async(check())

    def test_caches_keep_nothing_that_changes(self):
        """
        Listings, health and errors may not be stored by a cache; values
        may, but must be checked again with their ETag before reuse.
        """

        async def check():
            await self.request("PUT", "/k", b"v")
            for path, expected in [
                ("/_health", "no-store"),
                ("/_keys", "no-store"),
                ("/missing", "no-store"),
                ("/k", "no-cache"),
            ]:
                response, _ = await self.request("GET", path)
                self.assertEqual(
                    response.headers.getRawHeaders("Cache-Control"), [expected], path
                )

        return self.run_async(check())

    def test_key_length_limit(self):
        async def check():
            longest = "k" * MAX_KEY_BYTES
            response, _ = await self.request("PUT", "/" + longest, b"x")
            self.assertEqual(response.code, 201)
            await self.expect_error("PUT", "/" + longest + "k", 414, "key_too_long")
            # Counted in bytes of UTF-8, not characters.
            await self.expect_error("PUT", "/" + "é" * 128, 414, "key_too_long")

        return self.run_async(check())

    def test_value_too_large_changes_nothing(self):
        async def check():
            await self.request("PUT", "/k", b"small")
            await self.expect_error("PUT", "/k", 413, "value_too_large", body=b"x" * 65)
            _, content = await self.request("GET", "/k")
            self.assertEqual(content, b"small")
            response, _ = await self.request("PUT", "/k", b"x" * 64)
            self.assertEqual(response.code, 204)

        return self.run_async(check())

    def test_bad_content_type(self):
        async def check():
            for content_type in [
                b"x" * 300,
                b"text/\xe9",
                b"a\x01b",
                b"a\tb",
                b"a\x7fb",
                b"a/b, c/d",  # two media types in one
                b"text",
                b"text/plain; charset",
                b'text/plain; a="unterminated',
            ]:
                await self.expect_error(
                    "PUT",
                    "/k",
                    400,
                    "bad_content_type",
                    body=b"x",
                    headers={b"Content-Type": [content_type]},
                )
            self.assertEqual(await self.storage.stats(), (0, 0))

        return self.run_async(check())

    def test_media_types_kept_byte_exact(self):
        async def check():
            for content_type in [
                "text/plain",
                "text/plain; charset=utf-8",
                'multipart/form-data;boundary="a b;c"',
                "application/vnd.api+json ; q=1;",
            ]:
                response, _ = await self.request(
                    "PUT", "/k", b"v", headers={"Content-Type": [content_type]}
                )
                self.assertLess(response.code, 300, content_type)
                response, _ = await self.request("GET", "/k")
                self.assertEqual(
                    response.headers.getRawHeaders("Content-Type"), [content_type]
                )

        return self.run_async(check())

    def test_content_type_a_header_cannot_hold_is_escaped(self):
        """
        The Python API stores any content type; over HTTP, what a header
        cannot carry comes back escaped rather than as a 500.
        """

        async def check():
            await self.storage.set("k", b"v", "x/\u00e9\x01\U0001f511")
            response, content = await self.request("GET", "/k")
            self.assertEqual((response.code, content), (200, b"v"))
            self.assertEqual(
                response.headers.getRawHeaders(b"Content-Type"),
                [b"x/\\xe9\\x01\\U0001f511"],
            )

        return self.run_async(check())

    def test_if_match_is_compare_and_set(self):
        async def check():
            created, _ = await self.request("PUT", "/k", b"1")
            etag = created.headers.getRawHeaders("etag")[0]
            ok, _ = await self.request("PUT", "/k", b"2", headers={"If-Match": [etag]})
            self.assertEqual(ok.code, 204)
            stale = await self.expect_error(
                "PUT",
                "/k",
                412,
                "precondition_failed",
                body=b"3",
                headers={"If-Match": [etag]},
            )
            self.assertEqual(
                stale.headers.getRawHeaders("etag"), ok.headers.getRawHeaders("etag")
            )
            _, content = await self.request("GET", "/k")
            self.assertEqual(content, b"2")
            await self.expect_error(
                "PUT",
                "/k",
                412,
                "precondition_failed",
                body=b"3",
                headers={"If-Match": ["W/" + ok.headers.getRawHeaders("etag")[0]]},
            )
            await self.expect_error(
                "PUT",
                "/other",
                412,
                "precondition_failed",
                body=b"3",
                headers={"If-Match": ["*"]},
            )
            self.assertIsNone(self.successResultOf(self.storage.get("other")))

        return self.run_async(check())

    def test_if_none_match_star_creates_only(self):
        async def check():
            headers = {"If-None-Match": ["*"]}
            created, _ = await self.request("PUT", "/k", b"1", headers=headers)
            self.assertEqual(created.code, 201)
            await self.expect_error(
                "PUT", "/k", 412, "precondition_failed", body=b"2", headers=headers
            )
            _, content = await self.request("GET", "/k")
            self.assertEqual(content, b"1")
            # RFC 9110: If-None-Match with the current ETag fails a write.
            await self.expect_error(
                "PUT",
                "/k",
                412,
                "precondition_failed",
                body=b"2",
                headers={"If-None-Match": ['"1"']},
            )

        return self.run_async(check())

    def test_conditional_delete(self):
        async def check():
            created, _ = await self.request("PUT", "/k", b"1")
            await self.expect_error(
                "DELETE",
                "/k",
                412,
                "precondition_failed",
                headers={"If-Match": ['"999"']},
            )
            etag = created.headers.getRawHeaders("etag")
            response, _ = await self.request("DELETE", "/k", headers={"If-Match": etag})
            self.assertEqual(response.code, 204)

        return self.run_async(check())

    def test_get_if_none_match_not_modified(self):
        async def check():
            created, _ = await self.request("PUT", "/k", b"1")
            etag = created.headers.getRawHeaders("etag")[0]
            response, content = await self.request(
                "GET", "/k", headers={"If-None-Match": [etag]}
            )
            self.assertEqual((response.code, content), (304, b""))
            response, content = await self.request(
                "GET", "/k", headers={"If-None-Match": ['"0", W/' + etag]}
            )
            self.assertEqual(response.code, 304)
            response, content = await self.request(
                "GET", "/k", headers={"If-None-Match": ['"0"']}
            )
            self.assertEqual((response.code, content), (200, b"1"))

        return self.run_async(check())

    def test_etags_too_long_to_be_a_version_match_nothing(self):
        """
        An entity tag of thousands of digits (more than Python converts to
        an int) names no version: no 500.
        """
        huge = '"' + "9" * 5000 + '"'

        async def check():
            await self.request("PUT", "/k", b"1")
            response, content = await self.request(
                "GET", "/k", headers={"If-None-Match": [huge]}
            )
            self.assertEqual((response.code, content), (200, b"1"))
            for method in ("PUT", "DELETE"):
                await self.expect_error(
                    method,
                    "/k",
                    412,
                    "precondition_failed",
                    headers={"If-Match": [huge]},
                )
            self.assertEqual((await self.storage.get("k")).value, b"1")

        return self.run_async(check())

    def test_list_keys(self):
        async def check():
            for key in ["app/b", "app/a", "app/c", "other"]:
                await self.request("PUT", "/" + key, b"x")
            response, content = await self.request("GET", "/_keys?prefix=app/&limit=2")
            self.assertEqual(response.code, 200)
            page = json.loads(content)
            # Each page says the revision it reflects, to watch from.
            expected = {"keys": ["app/a", "app/b"], "next": "app/b", "revision": 4}
            self.assertEqual(page, expected)
            await self.request("DELETE", "/other")
            _, content = await self.request(
                "GET", "/_keys?prefix=app/&limit=2&after=app/b"
            )
            expected = {"keys": ["app/c"], "next": None, "revision": 5}
            self.assertEqual(json.loads(content), expected)
            _, content = await self.request("GET", "/_keys")
            self.assertEqual(len(json.loads(content)["keys"]), 3)

        return self.run_async(check())

    def test_list_keys_bad_query(self):
        async def check():
            for query in [
                "limit=0",
                "limit=1001",
                "limit=x",
                "limit=-1",
                "limit=" + "9" * 5000,  # more digits than Python makes an int of
                "limit=%C2%B2",  # a superscript two: a digit to isdigit()
                "limit=%D9%A3",  # an Arabic-Indic three: a number to int()
                "prefix=%FF",
            ]:
                await self.expect_error("GET", "/_keys?" + query, 400, "bad_query")

        return self.run_async(check())

    def test_health(self):
        async def check():
            await self.request("PUT", "/k", b"v")
            response, content = await self.request("GET", "/_health")
            self.assertEqual(response.code, 200)
            self.assertEqual(
                json.loads(content),
                {
                    "status": "ok",
                    "storage": "dict",
                    "keys": 1,
                    "revision": 1,
                    "snapshot": None,
                },
            )

        return self.run_async(check())

    def test_health_degraded_when_snapshot_failed(self):
        self.service = Service(
            self.storage, health=lambda: {"snapshot": {"ok": False, "error": "full"}}
        )
        self.http = StubTreq(self.service.resource())

        async def check():
            _, content = await self.request("GET", "/_health")
            self.assertEqual(json.loads(content)["status"], "degraded")

        return self.run_async(check())

    def test_method_not_allowed(self):
        async def check():
            response = await self.expect_error("TRACE", "/k", 405, "method_not_allowed")
            self.assertEqual(
                response.headers.getRawHeaders("allow"),
                ["DELETE, GET, HEAD, PATCH, POST, PUT"],
            )

        return self.run_async(check())

    def test_unavailable_storage_is_503(self):
        async def check():
            await self.request("PUT", "/k", b"v")
            self.storage.close()
            response = await self.expect_error(
                "PUT", "/k", 503, "unavailable", body=b"new"
            )
            self.assertEqual(response.headers.getRawHeaders("retry-after"), ["1"])
            _, content = await self.request("GET", "/k")
            self.assertEqual(content, b"v")

        return self.run_async(check())

    def test_unexpected_error_is_json_without_traceback(self):
        async def check():
            for storage in _BrokenStorage(), _BrokenLaterStorage():
                self.http = StubTreq(Service(storage).resource())
                response, content = await self.request("GET", "/k")
                self.assertEqual(response.code, 500)
                self.assertEqual(json.loads(content)["error"], "internal")
                self.assertNotIn(b"Traceback", content)
                self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

        return self.run_async(check())

    def test_odd_paths_never_give_server_errors(self):
        paths = [
            "//x",
            "/a//b",
            "/a/",
            "/%00",
            "/%",
            "/%zz",
            "/a/../b",
            "/./x",
            "/" + "%FF" * 300,
            "/%E2%82",
            "/_keys/x",
            "/_health/",
            "/?x=1",
        ]

        async def check():
            for method in ["GET", "PUT", "DELETE", "HEAD", "POST", "OPTIONS"]:
                for path in paths:
                    response, content = await self.request(method, path, b"v")
                    self.assertLess(response.code, 500, (method, path, content))

        return self.run_async(check())

    def test_stored_record_seen_by_api(self):
        """A record written straight to storage is served at once."""
        self.storage = DictStorage([("k", Record(b"direct", "text/plain", 5))], 5)
        self.http = StubTreq(Service(self.storage).resource())

        async def check():
            response, content = await self.request("GET", "/k")
            self.assertEqual(content, b"direct")
            self.assertEqual(response.headers.getRawHeaders("etag"), ['"5"'])

        return self.run_async(check())


_HEADER_BYTES = st.binary(max_size=40).filter(
    lambda value: not any(c in value for c in b"\r\n\x00")
)
_HEADER_VALUES = st.one_of(
    _HEADER_BYTES,
    # Versions of every length around those a 64-bit int and int() allow
    # (three such headers stay under twisted.web's 16 KiB for all headers).
    st.sampled_from([1, 19, 20, 21, 4300, 4301, 5000]).map(
        lambda digits: b'"' + b"9" * digits + b'"'
    ),
    st.sampled_from([b"*", b'"1"', b'W/"1"', b'"1", "2"', b"", b" ", b'"']),
)


class HeaderAndQueryFuzzTests(TestCase):
    """
    Requests with arbitrary condition and content-type headers and list
    queries: never a 5xx, every error is a JSON document, and a refused
    write changes nothing.
    """

    @settings(max_examples=300, derandomize=True, database=None, deadline=None)
    @given(
        method=st.sampled_from(["GET", "HEAD", "PUT", "DELETE"]),
        headers=st.dictionaries(
            st.sampled_from([b"If-Match", b"If-None-Match", b"Content-Type"]),
            _HEADER_VALUES.map(lambda value: [value]),
        ),
    )
    def test_key_requests_with_any_headers(self, method, headers):
        storage = DictStorage([("k", Record(b"v", version=1))], 1)
        http = StubTreq(Service(storage).resource())
        response = self.successResultOf(
            http.request(method, BASE + "/k", data=b"new", headers=headers)
        )
        content = self.successResultOf(response.content())
        self.assertLess(response.code, 500, (method, headers, content))
        if response.code >= 400:
            if method != "HEAD":
                self.assertIn("error", json.loads(content), (response.code, headers))
            self.assertEqual(self.successResultOf(storage.get("k")).value, b"v")

    @settings(max_examples=200, derandomize=True, database=None, deadline=None)
    @given(
        parameters=st.dictionaries(
            st.sampled_from(["prefix", "after", "limit"]),
            st.one_of(
                st.text(max_size=30),
                st.text(st.characters(categories=["Nd", "No"]), max_size=4),
                st.sampled_from([4, 9, 10, 4300, 4301, 6000]).map(lambda n: "9" * n),
            ),
        )
    )
    def test_listing_with_any_query(self, parameters):
        storage = DictStorage([("k", Record(b"v", version=1))], 1)
        http = StubTreq(Service(storage).resource())
        query = urlencode(parameters)
        response = self.successResultOf(http.get(f"{BASE}/_keys?{query}"))
        content = json.loads(self.successResultOf(response.content()))
        self.assertIn(response.code, (200, 400), (parameters, content))
        self.assertIn("keys" if response.code == 200 else "error", content)
