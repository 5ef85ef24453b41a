"""
Tokens as clients meet them: every endpoint by every kind of token,
checked against one table, through both ways a request is answered (the
connection's fast path, over a real loopback socket, and twisted.web's
resource, through C{StubTreq}); paths that try to climb out of a prefix;
listings and watches that show only what a token may read; reloads that
add and revoke tokens while requests and watches run; logs without tokens.
"""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import urlsplit

from hypothesis import given
from hypothesis import strategies as st
from treq.client import HTTPClient
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock, deferLater
from twisted.internet.threads import blockingCallFromThread, deferToThread
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool
from twisted.web.http_headers import Headers

from ersid.auth import TokenAccess, add_token, remove_token
from ersid.embedded.memory import DictStorage
from ersid.metrics import Metrics
from ersid.watch.history import History
from ersid.watch.hub import Hub
from ersid.web.app import Service
from ersid.web.site import makeSite
from ersid.web.watch import serve_watch

from .._helpers import (
    captured_log,
    http,
    http_with_pool,
    model_settings,
    raw_exchange,
    refusal,
    serve,
)
from .._sse import EventReader

BASE = "http://ersid.test"

# What each kind of token may do: the rows of the table.
_KINDS = {
    "none": None,
    "wrong": {},
    "other": {"read": ("other/",)},
    "read": {"read": ("app/",)},
    "write": {"write": ("app/",)},
    "metrics": {"metrics": True},
    "admin": {"admin": True},
}

# The endpoints, each: method, path, headers, body, and what it needs
# ("read", "write", or None for /_health, which anyone may ask).
_ENDPOINTS = {
    "get": ("GET", "/app/k", {}, None, "read"),
    "head": ("HEAD", "/app/k", {}, None, "read"),
    "conditional get": ("GET", "/app/k", {"If-None-Match": '"0"'}, None, "read"),
    "put": ("PUT", "/app/k", {}, b"new", "write"),
    "post": ("POST", "/app/k", {}, b"new", "write"),
    "conditional put": ("PUT", "/app/k", {"If-Match": "ETAG"}, b"new", "write"),
    "create": ("PUT", "/app/n", {"If-None-Match": "*"}, b"new", "write"),
    "refresh": ("PATCH", "/app/k", {"Ersid-TTL": "60"}, None, "write"),
    "delete": ("DELETE", "/app/k", {}, None, "write"),
    "list": ("GET", "/_keys?prefix=app/", {}, None, "read"),
    "poll": ("GET", "/_watch?prefix=app/&since=0&wait=0", {}, None, "read"),
    "health": ("GET", "/_health", {}, None, None),
    "metrics": ("GET", "/_metrics", {}, None, "metrics"),
}


def _expected(kind: str, needs: str | None) -> int:
    """The table: the status class each kind of token gets."""
    if kind in ("none", "wrong"):
        return 200 if (needs is None and kind == "none") else 401
    if needs == "metrics":
        return 200 if kind in ("metrics", "admin") else 403
    if kind == "metrics":
        return 200 if needs is None else 403
    if needs is None or kind == "admin" or kind == "write":
        return 200
    if kind == "read" and needs == "read":
        return 200
    return 403


class _Tokens(TestCase):
    """A store behind a service whose tokens are in a file of the test's."""

    def setUp(self):
        self.path = os.path.abspath(self.mktemp())
        self.tokens: dict[str, str | None] = {
            "none": None,
            "wrong": "ersid_" + "x" * 43,
        }
        for kind, permissions in _KINDS.items():
            if permissions:
                self.tokens[kind] = add_token(self.path, kind, **permissions)
        self.access = TokenAccess(self.path)
        self.clock = Clock()
        self.hub = Hub(History(), self.clock)
        self.storage = DictStorage(publish=self.hub.publish)
        self.service = Service(
            self.storage,
            hub=self.hub,
            access=self.access,
            # No figures of the process, read in a thread: StubTreq would
            # need flushing for them.
            metrics=Metrics(self.storage, self.hub.collectors, process=False),
        )

    def headers(self, kind: str, **more: str) -> dict[str, str]:
        token = self.tokens[kind]
        if token is None:
            return dict(more)
        return {"Authorization": f"Bearer {token}", **more}

    def run_async(self, coroutine) -> Deferred:
        return Deferred.fromCoroutine(coroutine)


class MatrixTests(_Tokens):
    async def _matrix(self, client, base: str) -> None:
        failures = []
        for kind in _KINDS:
            for name, (method, path, extra, body, needs) in _ENDPOINTS.items():
                await self.storage.set("app/k", b"old", "text/plain")
                await self.storage.delete("app/n")
                current = f'"{(await self.storage.get("app/k")).version}"'
                extra = {h: current if v == "ETAG" else v for h, v in extra.items()}
                response = await client.request(
                    method, base + path, headers=self.headers(kind, **extra), data=body
                )
                content = await response.content()
                expected = _expected(kind, needs)
                if response.code // 100 != expected // 100 or (
                    expected >= 400 and response.code != expected
                ):
                    failures.append((kind, name, response.code, expected))
                    continue
                if expected >= 400:
                    if method != "HEAD":
                        error = {401: "unauthorized", 403: "forbidden"}[expected]
                        self.assertEqual(json.loads(content)["error"], error)
                    self.assertEqual(
                        response.headers.getRawHeaders("www-authenticate") is not None,
                        expected == 401,
                    )
                    # Refused: nothing changed.
                    self.assertEqual((await self.storage.get("app/k")).value, b"old")
                    self.assertIsNone(await self.storage.get("app/n"))
                elif name == "health":
                    details = "storage" in json.loads(content)
                    self.assertEqual(details, kind != "none", kind)
        self.assertEqual(failures, [])

    def test_through_twisted_web(self):
        return self.run_async(self._matrix(StubTreq(self.service.resource()), BASE))

    def test_through_the_connection(self):
        async def check():
            base = await serve(self, self.service)
            await self._matrix(http(), base)

        return self.run_async(check())

    def test_the_description_names_the_permissions_of_the_table(self):
        """/_openapi.json says, per operation, what the table checks."""

        async def check():
            response = await StubTreq(self.service.resource()).get(
                BASE + "/_openapi.json"
            )
            paths = json.loads(await response.content())["paths"]
            for method, path, _, _, needs in _ENDPOINTS.values():
                route = "/{key}" if path.startswith("/app/") else path.split("?")[0]
                operation = paths[route][method.lower()]
                self.assertEqual(operation["x-ersid-permission"], needs or "none")
                self.assertIn("401", operation["responses"])
                self.assertEqual("403" in operation["responses"], needs is not None)
            self.assertEqual(paths["/_openapi.json"]["get"]["security"], [])

        return self.run_async(check())

    def test_challenges(self):
        async def check():
            http = StubTreq(self.service.resource())
            cases = {
                None: 'Bearer realm="ersid"',
                "Bearer ersid_unknown": 'Bearer realm="ersid", error="invalid_token"',
                "Basic dXNlcjpwYXNz": 'Bearer realm="ersid", error="invalid_request"',
                "Bearer": 'Bearer realm="ersid", error="invalid_request"',
            }
            for authorization, challenge in cases.items():
                headers = (
                    {} if authorization is None else {"Authorization": authorization}
                )
                response = await http.get(BASE + "/app/k", headers=headers)
                self.assertEqual(response.code, 401)
                self.assertEqual(
                    response.headers.getRawHeaders("www-authenticate"), [challenge]
                )
            # Two Authorization lines are no token.
            response = await http.get(
                BASE + "/app/k",
                headers={"Authorization": [f"Bearer {self.tokens['admin']}"] * 2},
            )
            self.assertEqual(response.code, 401)
            # The scheme is case-insensitive (RFC 9110, 11.1).
            response = await http.get(
                BASE + "/_keys",
                headers={"Authorization": f"bearer {self.tokens['admin']}"},
            )
            self.assertEqual(response.code, 200)

        return self.run_async(check())


# Pieces of request targets that might smuggle a key out of "app/".
_PIECES = [
    "app",
    "/",
    "%2F",
    "%2f",
    "%252F",
    "..",
    ".",
    "%2E%2E",
    "secret",
    "x",
    "%C3%A9",
    "%00",
    "?",
    "#",
]


class EscapeTests(_Tokens):
    def test_no_target_climbs_out_of_a_prefix(self):
        """
        Whatever the target, a token that may write only under C{app/}
        writes nothing elsewhere, and one that may read only there reads
        nothing else: raw targets as sent, over a real socket.
        """

        @model_settings(200)
        @given(
            st.sampled_from(["", "http://ersid.test"]),
            st.lists(st.sampled_from(_PIECES), min_size=1, max_size=8),
        )
        def holds(form, pieces):
            target = (form + "/" + "".join(pieces)).encode("ascii")
            blockingCallFromThread(
                reactor, lambda: Deferred.fromCoroutine(self._attempt(target))
            )

        async def run():
            self.port = int(urlsplit(await serve(self, self.service)).port)
            await deferToThread(holds)

        return self.run_async(run())

    async def _attempt(self, target: bytes) -> None:
        for key in await self._keys():
            await self.storage.delete(key)
        await self.storage.set("secret/x", b"s3cret", "text/plain")
        await self.storage.set("appx", b"s3cret", "text/plain")
        put = await self._exchange(b"PUT", target, "write", b"pwned")
        keys = await self._keys()
        outside = {
            key: (await self.storage.get(key)).value
            for key in keys
            if not key.startswith("app/")
        }
        self.assertEqual(outside, {"secret/x": b"s3cret", "appx": b"s3cret"}, target)
        if put.startswith((b"HTTP/1.1 201", b"HTTP/1.1 204")):
            self.assertEqual(len([k for k in keys if k.startswith("app/")]), 1)
        got = await self._exchange(b"GET", target, "read", None)
        self.assertNotIn(b"s3cret", got, target)

    async def _keys(self) -> list[str]:
        return (await self.storage.keys("", None, 1000)).items

    async def _exchange(self, method, target, kind, body) -> bytes:
        lines = [
            method + b" " + target + b" HTTP/1.1",
            b"Host: ersid.test",
            b"Authorization: Bearer " + self.tokens[kind].encode(),
            b"Connection: close",
        ]
        if body is not None:
            lines.append(b"Content-Length: %d" % (len(body),))
        return await raw_exchange(
            self.port, b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")
        )


class ReadableTests(_Tokens):
    """Listings and watches show only the keys a token may read."""

    def setUp(self):
        super().setUp()
        self.tokens["mixed"] = add_token(
            self.path, "mixed", read=("b/", "d/1"), write=("b/x/",)
        )
        self.access.reload()
        self.http = StubTreq(self.service.resource())

    async def fill(self) -> list[str]:
        keys = [f"{p}{n}" for p in ("a/", "b/", "b/x/", "c/", "d/") for n in range(3)]
        for key in keys:
            await self.storage.set(key, key.encode(), "text/plain")
        return keys

    async def pages(self, kind: str, prefix: str, limit: int) -> list[dict]:
        pages, after = [], None
        while True:
            query = f"/_keys?prefix={prefix}&limit={limit}"
            if after is not None:
                query += f"&after={after}"
            response = await self.http.get(BASE + query, headers=self.headers(kind))
            self.assertEqual(response.code, 200)
            page = json.loads(await response.content())
            pages.append(page)
            after = page["next"]
            if after is None:
                return pages

    def test_a_listing_shows_only_readable_keys_page_after_page(self):
        async def check():
            keys = await self.fill()
            readable = [k for k in keys if k.startswith(("b/", "d/1"))]
            for limit in (1, 2, 5, 100):
                pages = await self.pages("mixed", "", limit)
                listed = [key for page in pages for key in page["keys"]]
                self.assertEqual(listed, readable, limit)
                self.assertTrue(all(page["filtered"] for page in pages))
            (page,) = await self.pages("mixed", "b/", 100)
            self.assertNotIn("filtered", page)  # it may read all of b/
            self.assertEqual(page["keys"], [k for k in keys if k.startswith("b/")])
            (page,) = await self.pages("admin", "", 100)
            self.assertEqual(page["keys"], keys)
            self.assertNotIn("filtered", page)
            response = await self.http.get(
                BASE + "/_keys?prefix=c/", headers=self.headers("mixed")
            )
            self.assertEqual(response.code, 403)

        return self.run_async(check())

    def test_a_watch_tells_only_of_readable_keys(self):
        async def check():
            base = await serve(self, self.service)
            readers = {}
            for kind in ("mixed", "admin"):
                response = await http().get(
                    base + "/_watch?initial=1",
                    headers=self.headers(kind),
                    unbuffered=True,
                )
                self.assertEqual(response.code, 200)
                readers[kind] = reader = EventReader()
                response.deliverBody(reader)
                self.addCleanup(_close, reader)
            await self.storage.set("b/0", b"before", "text/plain")
            await readers["admin"].until(lambda r: len(r.events) >= 2)
            keys = await self.fill()
            await self.storage.set("c/0", b"", "text/plain")
            await self.storage.delete("b/1")
            for reader in readers.values():
                await reader.until(lambda r: r.events[-1][2].get("type") == "delete")
            seen = [data.get("key") for _, _, data in readers["mixed"].events]
            changed = [k for k in keys if k.startswith(("b/", "d/1"))]
            self.assertEqual(seen, [None, "b/0", *changed, "b/1"])
            everything = [data.get("key") for _, _, data in readers["admin"].events]
            self.assertEqual(everything, [None, "b/0", *keys, "c/0", "b/1"])
            poll = await self.http.get(
                BASE + "/_watch?since=0&wait=0", headers=self.headers("mixed")
            )
            events = json.loads(await poll.content())["events"]
            self.assertEqual({e["key"] for e in events}, {*changed, "b/0", "b/1"})

        return self.run_async(check())


def _close(reader: EventReader) -> Deferred[None]:
    if reader.transport is not None and not reader.ended.called:
        reader.transport.stopProducing()
    return reader.ended


class ReloadTests(_Tokens):
    """C{SIGHUP}'s reload: new tokens pass at once, removed ones are refused at once."""

    def kept_alive(self) -> HTTPClient:
        """A client that keeps its connections: the server remembers their tokens."""
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = 1
        self.addCleanup(pool.closeCachedConnections)
        return http_with_pool(pool)

    def test_reload_under_load(self):
        """
        While clients read and write on kept-alive connections and watch,
        a token is removed and another added: the removed one is refused
        from the next request on, on the very connections it used; its
        watches end with a C{revoked} event; the others never notice.
        """

        async def check():
            base = await serve(self, self.service)
            client = self.kept_alive()
            watches = {}
            for kind in ("write", "read"):
                response = await client.get(
                    base + "/_watch?prefix=app/",
                    headers=self.headers(kind),
                    unbuffered=True,
                )
                watches[kind] = reader = EventReader()
                response.deliverBody(reader)
                self.addCleanup(_close, reader)
            poll = client.get(
                base + "/_watch?prefix=app/quiet/&wait=50", headers=self.headers("read")
            )

            async def load(kind: str, rounds: int) -> list[int]:
                codes = []
                for n in range(rounds):
                    method = "PUT" if kind == "write" else "GET"
                    response = await client.request(
                        method,
                        f"{base}/app/{kind}{n % 3}",
                        headers=self.headers(kind),
                        data=b"v" if method == "PUT" else None,
                    )
                    await response.content()
                    codes.append(response.code)
                return codes

            await self.storage.set("app/read0", b"v", "text/plain")
            await self.storage.set("app/read1", b"v", "text/plain")
            await self.storage.set("app/read2", b"v", "text/plain")
            running = [load("write", 60), load("read", 60)]
            before = gatherResults([Deferred.fromCoroutine(c) for c in running])
            for _ in range(5):
                await _turn()
            remove_token(self.path, "read")
            self.tokens["new"] = add_token(self.path, "new", read=("app/",))
            self.access.reload()
            write_codes, read_codes = await before
            self.assertEqual(set(write_codes), {201, 204})
            # Some reads passed before the reload, none after.
            self.assertEqual(read_codes[0], 200)
            self.assertEqual(read_codes[-1], 401)
            cut = read_codes.index(401)
            self.assertEqual(set(read_codes[:cut]), {200})
            self.assertEqual(set(read_codes[cut:]), {401})
            response = await client.get(
                base + "/app/read0", headers=self.headers("new")
            )
            self.assertEqual(response.code, 200)
            await response.content()
            await watches["read"].ended
            name, _, data = watches["read"].events[-1]
            self.assertEqual(name, "revoked")
            self.assertIn("'read'", data["reason"])
            # The writer's watch goes on.
            await self.storage.set("app/after", b"v", "text/plain")
            await watches["write"].until(
                lambda r: r.events[-1][2].get("key") == "app/after"
            )
            self.assertFalse(watches["write"].ended.called)
            polled = await poll
            self.assertEqual(polled.code, 401)
            self.assertEqual(
                json.loads(await polled.content())["error"], "token_revoked"
            )

        return self.run_async(check())

    def test_a_changed_token_is_revoked_an_unchanged_one_is_kept(self):
        async def check():
            base = await serve(self, self.service)
            client = self.kept_alive()
            response = await client.get(base + "/app/k", headers=self.headers("read"))
            await response.content()
            kept = self.access.grant([f"Bearer {self.tokens['write']}".encode()])
            changed = self.access.grant([f"Bearer {self.tokens['read']}".encode()])
            with open(self.path) as f:
                text = f.read()
            with open(self.path, "w") as f:
                f.write(text.replace('"read": ["app/"]', '"read": ["other/"]'))
            self.access.reload()
            self.assertFalse(kept.revoked)
            self.assertTrue(changed.revoked)
            self.assertIs(
                self.access.grant([f"Bearer {self.tokens['write']}".encode()]), kept
            )
            # The same connection: its remembered grant is not used again.
            response = await client.get(base + "/app/k", headers=self.headers("read"))
            self.assertEqual(response.code, 403)
            await response.content()

        return self.run_async(check())

    def test_a_broken_file_keeps_the_tokens_and_says_why(self):
        log = captured_log(self)
        with open(self.path, "a") as f:
            f.write("{not json\n")
        self.access.reload()
        grant = self.access.grant([f"Bearer {self.tokens['admin']}".encode()])
        self.assertFalse(grant.revoked)
        self.assertTrue(
            any(
                "Tokens not reloaded" in m and f"line {len(_KINDS) - 1}" in m
                for m in log
            ),
            log,
        )
        os.chmod(self.path, 0o644)
        self.access.reload()
        self.assertTrue(any("chmod 600" in m for m in log))


class LogTests(_Tokens):
    def test_no_token_is_ever_logged(self):
        """Requests of every kind, answered or refused, logged in full: no token."""

        async def check():
            log = captured_log(self)
            await self.storage.set("app/k", b"v", "text/plain")
            site = makeSite(self.service, "-")
            resource = site.resource
            client = StubTreq(resource)
            for kind in _KINDS:
                for method, path, extra, body, _ in _ENDPOINTS.values():
                    extra = {h: '"1"' if v == "ETAG" else v for h, v in extra.items()}
                    response = await client.request(
                        method,
                        BASE + path,
                        headers=self.headers(kind, **extra),
                        data=body,
                    )
                    await response.content()
            base = await serve(self, self.service)
            for kind in _KINDS:
                response = await http().get(base + "/app/k", headers=self.headers(kind))
                await response.content()
            remove_token(self.path, "read")
            self.access.reload()
            text = "\n".join(log)
            self.assertIn("Tokens reloaded", text)
            for token in self.tokens.values():
                if token is not None:
                    self.assertNotIn(token, text)
                    self.assertNotIn(token[6:20], text)

        return self.run_async(check())


async def _turn() -> None:
    await deferLater(reactor, 0)


class _MemoryRequest:
    """What a watch writes to, in memory, its connection paused at will."""

    def __init__(self, query: dict[bytes, list[bytes]]) -> None:
        self.args = query
        self.method = b"GET"
        self.requestHeaders = Headers()
        self.producer: Any = None
        self.reader = EventReader()

    def getHeader(self, name: bytes) -> bytes | None:
        return None

    def setHeader(self, name: bytes, value: bytes) -> None:
        pass

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.reader.dataReceived(data)


class RevocationTests(_Tokens):
    def test_refused_watches_do_not_stop_a_revocation(self):
        """
        Watches refused (410, history gone) leave nothing behind that a
        revocation trips on: the token's live watch ends, its kept-alive
        connection is refused, and the reload is logged.
        """

        async def check():
            log = captured_log(self)
            base = await serve(self, self.service)
            for _ in range(3):
                response = await http().get(
                    base + "/_watch?since=1000000", headers=self.headers("read")
                )
                self.assertEqual(response.code, 410)
                await response.content()
            response = await http().get(
                base + "/_watch?prefix=app/",
                headers=self.headers("read"),
                unbuffered=True,
            )
            live = EventReader()
            response.deliverBody(live)
            self.addCleanup(_close, live)
            remove_token(self.path, "read")
            self.access.reload()
            await live.ended
            self.assertEqual(live.events[-1][0], "revoked")
            self.assertTrue(any("Tokens reloaded" in line for line in log))

        return self.run_async(check())

    def test_hidden_changes_past_the_history_owe_nothing(self):
        """
        A watch whose token reads only C{a/}, its connection backed up
        while more changes than the history keeps go to other keys, owes
        its client nothing: it goes on, without C{compacted}.
        """

        async def check():
            hub = Hub(History(0, 10), self.clock)
            storage = DictStorage(publish=hub.publish)
            request = _MemoryRequest({b"prefix": [b""]})
            grant = self.access.grant([f"Bearer {self.tokens['read']}".encode()])
            stream = Deferred.fromCoroutine(serve_watch(hub, storage, request, grant))
            await storage.set("app/1", b"v", "text/plain")
            request.producer.pauseProducing()
            for n in range(30):
                await storage.set(f"other/{n}", b"v", "text/plain")
            request.producer.resumeProducing()
            await storage.set("app/2", b"v", "text/plain")
            names = [(name, data.get("key")) for name, _, data in request.reader.events]
            self.assertEqual(names, [("put", "app/1"), ("put", "app/2")])
            self.assertFalse(stream.called)
            stream.cancel()
            stream.addErrback(lambda _: None)

        return self.run_async(check())


class StrangerTests(_Tokens):
    def test_no_body_is_read_for_a_stranger(self):
        """
        A request with a body and no known token is refused once its head
        is in: no C{100 Continue}, no value's worth of it buffered.
        """

        async def check():
            port = int(urlsplit(await serve(self, self.service)).port)
            for authorization in (b"", b"Authorization: Bearer ersid_nope\r\n"):
                sent = await raw_exchange(
                    port,
                    b"PUT /app/x HTTP/1.1\r\nHost: h\r\nContent-Length: 1000000\r\n"
                    b"Expect: 100-continue\r\n" + authorization + b"\r\n",
                )
                self.assertNotIn(b"100 Continue", sent)
                self.assertEqual(refusal(self, sent, 401)["error"], "unauthorized")
                self.assertIn(b"WWW-Authenticate: Bearer", sent)
            self.assertIsNone(await self.storage.get("app/x"))
            # An empty body is no body: the health check of a client that
            # sends Content-Length: 0 is answered, the connection kept.
            sent = await raw_exchange(
                port,
                b"GET /_health HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n"
                b"GET /_health HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
            )
            self.assertEqual(sent.count(b"HTTP/1.1 200 OK"), 2, sent)
            self.assertEqual(sent.count(b'{"status": "ok"}'), 2, sent)

        return self.run_async(check())
