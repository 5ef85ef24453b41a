"""
Talking to an Ersid server: L{Client}, a Deferred-returning client for its
HTTP API on treq, with typed errors instead of raw responses and persistent
connections through one pool. Importing it loads no server code.

The C{ersid} command is C{ersid.client.cli}, the C{ersid-bench} benchmark
C{ersid.client.bench}.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote, urlsplit

import attrs
import treq
from hyperlink import EncodedURL
from twisted.internet.defer import Deferred
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IAgent, IResponse

from ersid.client.backup import Backup, save_snapshot
from ersid.client.errors import (
    UNREACHABLE,
    ClientError,
    ConditionFailed,
    HistoryGone,
    KeyNotFound,
    LockLost,
    LockTimeout,
    NotAllowed,
    RequestRejected,
    ServerUnavailable,
    ValueTooLarge,
    refusal,
    why,
)
from ersid.client.locking import DEFAULT_LOCK_TTL, Lock, LockRequest
from ersid.client.tls import ClientTLS, bearing
from ersid.client.watching import Event, watch

__all__ = [
    "DEFAULT_CONTENT_TYPE",
    "Backup",
    "Client",
    "ClientError",
    "ClientTLS",
    "ConditionFailed",
    "Event",
    "HistoryGone",
    "KeyNotFound",
    "Lock",
    "LockLost",
    "LockRequest",
    "LockTimeout",
    "NotAllowed",
    "RequestRejected",
    "ServerUnavailable",
    "Value",
    "ValueTooLarge",
    "check_url",
]


# What a value is stored as when its content type is not given, as the
# server does.
DEFAULT_CONTENT_TYPE = "application/octet-stream"


@attrs.frozen
class Value:
    """
    A stored value, with its content type, ETag, and the Unix time it
    expires at if it has a time to live.
    """

    data: bytes
    content_type: str
    etag: str
    expires: float | None = None


def _header(response: IResponse, name: str, default: str | None = None) -> str | None:
    return response.headers.getRawHeaders(name, [default])[0]


def _expires(response: IResponse) -> float | None:
    expires = _header(response, "ersid-expires")
    return None if expires is None else float(expires)


def _key_path(key: str) -> str:
    # Every character but unreserved ones is escaped, '/' included, so that
    # no key is changed by URL normalisation on its way ("." and ".." too).
    encoded = quote(key, safe="")
    if encoded in (".", ".."):
        encoded = encoded.replace(".", "%2E")
    return encoded


def _seconds(ttl: float) -> str:
    """A time to live as C{Ersid-TTL} has it: at most six decimals."""
    return f"{ttl:.6f}".rstrip("0").rstrip(".")


def check_url(url: str) -> str:
    """
    Return C{url} if it can name an Ersid server: http or https, a host name
    or IPv4 address, an optional port and path, no query, fragment or user
    name.

    IPv6 literals are refused: treq cannot request them (hyperlink issue 68);
    a host name that resolves to the address works.

    @raise ValueError: if it cannot, saying why.
    """
    problem = None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (a bad port raises ValueError)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            problem = "expected http://HOST[:PORT]"
        elif parts.query or parts.fragment:
            problem = "a query or fragment makes no sense here"
        elif "@" in parts.netloc:
            problem = "user names and passwords in the URL are not supported"
        elif ":" in parts.hostname:
            problem = "treq cannot use IPv6 literals; use a host name"
        else:
            EncodedURL.from_text(url).to_uri()  # as treq will, host name and all
    except ValueError as e:
        problem = str(e)
    if problem is not None:
        raise ValueError(f"bad URL {url!r}: {problem}")
    return url


class Client:
    """
    Talk to the Ersid server at C{url}, such as C{http://localhost:8080},
    with C{token} if it needs one, over HTTPS as C{tls} says (the system's
    CAs by default).

    @raise ValueError: if C{url} is not an http or https URL (L{check_url}),
        or C{token} cannot be sent.
    """

    def __init__(
        self,
        url: str,
        reactor: Any = None,
        persistent: bool = True,
        token: str | None = None,
        tls: ClientTLS | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.url = check_url(url).rstrip("/")
        self._reactor = reactor
        self.pool = HTTPConnectionPool(reactor, persistent=persistent)
        self.pool.maxPersistentPerHost = 64
        if tls is None:
            agent: IAgent = Agent(reactor, pool=self.pool)
        else:
            agent = Agent(reactor, contextFactory=tls.policy(), pool=self.pool)
        if token is not None:
            agent = bearing(agent, token)
        self._http = treq.client.HTTPClient(agent)

    async def _request(
        self, method: str, path: str, expected: tuple[int, ...], **kw: Any
    ) -> tuple[IResponse, bytes]:
        try:
            response = await self._http.request(method, self.url + path, **kw)
            body = await treq.content(response)
        except UNREACHABLE as e:
            raise ServerUnavailable(f"cannot reach {self.url}: {why(e)}") from None
        if response.code not in expected:
            raise refusal(response.code, body)
        return response, body

    def get(self, key: str) -> Deferred[Value]:
        """The value of C{key}; fails with L{KeyNotFound} if there is none."""

        async def get() -> Value:
            response, body = await self._request("GET", "/" + _key_path(key), (200,))
            return Value(
                body,
                _header(response, "content-type", DEFAULT_CONTENT_TYPE),
                _header(response, "etag", ""),
                _expires(response),
            )

        return Deferred.fromCoroutine(get())

    def set(
        self,
        key: str,
        data: bytes,
        content_type: str = DEFAULT_CONTENT_TYPE,
        if_match: str | None = None,
        create_only: bool = False,
        ttl: float | None = None,
    ) -> Deferred[str]:
        """
        Store C{data} under C{key}, only if its ETag is C{if_match} or only
        if it does not exist yet (C{create_only}), when asked to; for C{ttl}
        seconds, if given.

        @return: a Deferred firing with the new ETag.
        """
        headers = {"Content-Type": content_type}
        if if_match is not None:
            headers["If-Match"] = if_match
        if create_only:
            headers["If-None-Match"] = "*"
        if ttl is not None:
            headers["Ersid-TTL"] = _seconds(ttl)

        async def put() -> str:
            response, _ = await self._request(
                "PUT", "/" + _key_path(key), (201, 204), data=data, headers=headers
            )
            return response.headers.getRawHeaders("etag", [""])[0]

        return Deferred.fromCoroutine(put())

    def create(self, key: str, data: bytes, ttl: float) -> Deferred[tuple[bool, str]]:
        """
        Store C{data} under C{key} for C{ttl} seconds if the key is absent.

        @return: a Deferred firing with C{(True, the new ETag)}, or
            C{(False, the current ETag)} if the key exists.
        """
        headers = {"If-None-Match": "*", "Ersid-TTL": _seconds(ttl)}

        async def create() -> tuple[bool, str]:
            response, _ = await self._request(
                "PUT", "/" + _key_path(key), (201, 412), data=data, headers=headers
            )
            return response.code == 201, _header(response, "etag", "")

        return Deferred.fromCoroutine(create())

    def refresh(
        self, key: str, ttl: float, if_match: str | None = None
    ) -> Deferred[str]:
        """
        Make C{key} expire C{ttl} seconds from now, keeping its value, only
        if its ETag is C{if_match} when given.

        @return: a Deferred firing with the new ETag.
        """
        headers = {"Ersid-TTL": _seconds(ttl)}
        if if_match is not None:
            headers["If-Match"] = if_match

        async def refresh() -> str:
            response, _ = await self._request(
                "PATCH", "/" + _key_path(key), (204,), headers=headers
            )
            return _header(response, "etag", "")

        return Deferred.fromCoroutine(refresh())

    def lock(
        self, key: str, ttl: float = DEFAULT_LOCK_TTL, timeout: float | None = None
    ) -> LockRequest:
        """
        The lock C{key}, which frees itself C{ttl} seconds after its holder
        stops refreshing it; wait for it as long as C{timeout} (for ever if
        C{None}), then fail with L{LockTimeout}::

            async with client.lock("locks/deploy", ttl=10) as lock:
                ...  # lock.token fences off a former holder

        or, with Deferreds, C{client.lock(key).acquire()} and then
        C{lock.release()}. C{lock.lost} fires if the lock is lost meanwhile.
        """
        return LockRequest(self, key, ttl, timeout, self._reactor)

    def delete(self, key: str, if_match: str | None = None) -> Deferred[None]:
        """Remove C{key}; fails with L{KeyNotFound} if there is none."""
        headers = {} if if_match is None else {"If-Match": if_match}

        async def delete() -> None:
            await self._request("DELETE", "/" + _key_path(key), (204,), headers=headers)

        return Deferred.fromCoroutine(delete())

    def list(self, prefix: str = "", page_size: int = 1000) -> Deferred[list[str]]:
        """All keys starting with C{prefix}, in order, a page at a time."""

        async def list_all() -> list[str]:
            keys: list[str] = []
            after: str | None = None
            while True:
                params = {"prefix": prefix, "limit": str(page_size)}
                if after is not None:
                    params["after"] = after
                _, body = await self._request("GET", "/_keys", (200,), params=params)
                page = json.loads(body)
                keys.extend(page["keys"])
                after = page["next"]
                if after is None:
                    return keys

        return Deferred.fromCoroutine(list_all())

    def watch(
        self, prefix: str = "", since: int | None = None, values: bool = False
    ) -> AsyncIterator[Event]:
        """
        The changes under C{prefix} after revision C{since} (C{None}: from
        now on), for ever, as an async iterator of L{Event}s (with their
        values, if C{values}). A dropped connection is made again, and the
        watch resumes from the last revision seen: no change is missed or
        repeated.

        @raise HistoryGone: from the iteration, when the server no longer
            keeps the changes owed; list the keys again, then watch from the
            listing's revision.
        """
        return watch(self._http, self.url, self._reactor, prefix, since, values)

    def backup(self, path: str) -> Deferred[Backup]:
        """
        Save a snapshot of the whole store at one revision (C{/_snapshot},
        for an admin token) to C{path}, atomically: C{path} is left as it
        was unless the whole snapshot arrived. Fails with L{OSError} if the
        file cannot be written.
        """
        url = self.url + "/_snapshot"
        return Deferred.fromCoroutine(save_snapshot(self._http, url, path))

    def close(self) -> Deferred[None]:
        """Close the pool's idle connections."""
        return self.pool.closeCachedConnections()
