"""
The key routes, C{/<key>}, declared once in L{KEY_ROUTES}: the Klein
application registers them as its routes, and the fast path in front of
it (L{ersid.web.fastpath}) calls them directly.

Each route is a storage call and a renderer: C{start} checks the request
and makes one storage call; C{render} makes the response of that call's
outcome. Kept apart, the two let the fast path render and finish a
response in one callback.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

from ersid.auth import Grant
from ersid.storage import PreconditionFailed, Record, WriteResult
from ersid.web.conditions import etag, read_condition, write_precondition
from ersid.web.errors import ApiError, empty
from ersid.web.parsing import content_type_of, header_value, key_of, read_body, ttl_of

if TYPE_CHECKING:
    from ersid.web.app import Service

__all__ = ["KEY_ROUTES", "KeyRoute"]


@attrs.frozen
class KeyRoute:
    """
    The route of C{/<key>} for some methods.

    @ivar name: the route's name in the Klein application.
    @ivar writes: whether it writes the key, or only reads it.
    @ivar start: checks a request for a key and makes one storage call;
        returns its outcome, or a Deferred of it.
    @ivar render: makes the response of that outcome: sets the status and
        headers, returns the body.
    """

    name: str
    methods: tuple[bytes, ...]
    writes: bool
    start: Callable[[Service, IRequest, str], Any]
    render: Callable[[Any, IRequest], bytes]
    doc: str

    def call(self, service: Service, request: IRequest, grant: Grant) -> Any:
        """
        C{start}, if C{grant} allows it: the outcome.

        @raise NotPermitted: if it does not.
        """
        key = key_of(request)
        grant.require(key, self.writes)
        return self.start(service, request, key)

    def respond(self, service: Service, request: IRequest) -> bytes | Deferred[bytes]:
        """The response: C{start}, then C{render} of its outcome."""
        outcome = self.call(service, request, service.grant_of(request))
        if isinstance(outcome, Deferred):
            return outcome.addCallback(self.render, request)
        return self.render(outcome, request)

    def body(self, service: Service, outcome: Any, request: IRequest) -> bytes:
        """
        The response body of C{outcome}, what C{start} returned or its
        Deferred gave (a L{Failure} included), its status and headers set.
        """
        if not isinstance(outcome, Failure):
            try:
                return self.render(outcome, request)
            except Exception:
                outcome = Failure()
        return service.render_failure(request, outcome)


def _not_found(request: IRequest) -> ApiError:
    return ApiError(404, "not_found", f"no such key: {key_of(request)!r}")


def _get(
    service: Service, request: IRequest, key: str
) -> Record | Deferred[Record | None] | None:
    if service.read_now is not None:
        return service.read_now(key)
    return service.storage.get(key)


def _expiry_headers(request: IRequest, expires: float | None) -> None:
    """
    C{Ersid-Expires}, the Unix time a key expires at, and C{Ersid-TTL}, the
    seconds left then, by this server's clock; neither for a lasting key.
    """
    if expires is not None:
        left = max(expires - time.time(), 0.001)
        request.setHeader(b"Ersid-Expires", b"%.6f" % (expires,))
        request.setHeader(b"Ersid-TTL", b"%.3f" % (left,))


def _render_record(record: Record | None, request: IRequest) -> bytes:
    if record is None:
        raise _not_found(request)
    request.setHeader(b"ETag", etag(record.version))
    if record.expires is not None:
        _expiry_headers(request, record.expires)
    request.setHeader(b"X-Content-Type-Options", b"nosniff")
    # A value a browser shows as a page (text/html, an SVG) runs nothing
    # and is of no origin: it cannot read what the key browser keeps.
    request.setHeader(b"Content-Security-Policy", b"sandbox")
    request.setHeader(b"Cache-Control", b"no-cache")
    status = read_condition(request, record)
    if status == 412:
        raise PreconditionFailed(key_of(request), record)
    if status == 304:
        return empty(request, 304)
    request.setHeader(b"Content-Type", header_value(record.content_type))
    if request.method == b"HEAD":
        request.setHeader(b"Content-Length", b"%d" % (len(record.value),))
        return b""
    # Content-Length is set when the body is written.
    return record.value


def _set(service: Service, request: IRequest, key: str) -> Deferred[WriteResult]:
    precondition = write_precondition(request)
    content_type = content_type_of(request)
    ttl = ttl_of(request)
    value = read_body(request, service.max_value_size)
    return service.storage.set(key, value, content_type, precondition, ttl)


def _render_write(result: WriteResult, request: IRequest) -> bytes:
    request.setHeader(b"ETag", etag(result.version))
    _expiry_headers(request, result.expires)
    return empty(request, 201 if result.created else 204)


def _refresh(
    service: Service, request: IRequest, key: str
) -> Deferred[WriteResult | None]:
    precondition = write_precondition(request)
    ttl = ttl_of(request)
    if ttl is None:
        raise ApiError(
            400, "bad_ttl", "a refresh needs Ersid-TTL, the seconds the key lives on"
        )
    request.content.seek(0)
    if request.content.read(1):
        raise ApiError(400, "bad_body", "a refresh has no body; PUT writes values")
    return service.storage.refresh(key, ttl, precondition)


def _render_refresh(result: WriteResult | None, request: IRequest) -> bytes:
    if result is None:
        raise _not_found(request)
    return _render_write(result, request)


def _delete(service: Service, request: IRequest, key: str) -> Deferred[bool]:
    return service.storage.delete(key, write_precondition(request))


def _render_delete(deleted: bool, request: IRequest) -> bytes:
    if not deleted:
        raise _not_found(request)
    return empty(request, 204)


KEY_ROUTES = (
    KeyRoute(
        "get_key",
        (b"GET", b"HEAD"),
        False,
        _get,
        _render_record,
        "Return a value byte for byte, with its content type and ETag.",
    ),
    KeyRoute(
        "set_key",
        (b"PUT", b"POST"),
        True,
        _set,
        _render_write,
        "Store the body: 201 for a new key, 204 for a replaced one.",
    ),
    KeyRoute(
        "refresh_key",
        (b"PATCH",),
        True,
        _refresh,
        _render_refresh,
        "Give a key a new time to live, keeping its value: 204, or 404.",
    ),
    KeyRoute(
        "delete_key",
        (b"DELETE",),
        True,
        _delete,
        _render_delete,
        "Remove a key: 204, or 404 if there was none.",
    ),
)
