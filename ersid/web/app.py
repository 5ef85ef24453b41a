"""
The HTTP API: L{Service}, one Klein application over an L{IStorage}, the
one definition of the API.

Keys live at C{/<key>} (their routes are L{ersid.web.keys.KEY_ROUTES});
paths whose first segment starts with C{_} belong to the API itself
(C{/_keys}, C{/_watch}, C{/_health}, C{/_metrics}, C{/_snapshot},
C{/_openapi.json}). Every error is JSON (see
L{ersid.web.errors}).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from typing import Any, NoReturn

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.exceptions import MethodNotAllowed, NotFound

from ersid.auth import Grant, IAccess, NotAuthenticated, NotPermitted, OpenAccess
from ersid.metrics import CONTENT_TYPE, Metrics
from ersid.snapshots.streaming import IBackups
from ersid.storage import (
    IImmediateReads,
    IStorage,
    PreconditionFailed,
    Record,
    StorageUnavailable,
)
from ersid.watch.hub import Hub
from ersid.web.backup import SnapshotRoute
from ersid.web.conditions import etag
from ersid.web.errors import ApiError, access_refused, json_body
from ersid.web.fastpath import FastPath
from ersid.web.keys import KEY_ROUTES, KeyRoute
from ersid.web.pages import UI_PATH, ui_file
from ersid.web.parsing import list_limit, query_text
from ersid.web.permitted import readable_keys
from ersid.web.watch import serve_watch

__all__ = ["DEFAULT_MAX_VALUE_SIZE", "Service"]

DEFAULT_MAX_VALUE_SIZE = 1024 * 1024

_log = Logger()
_OPENAPI = resources.files("ersid.web").joinpath("openapi.json").read_bytes()


class Service:
    """
    The REST service: one Klein app whose routes define the whole API.

    @ivar storage: the live L{IStorage}.
    @ivar max_value_size: the largest value accepted, in bytes.
    @ivar read_now: the storage's L{IImmediateReads.get_now}, if it has one:
        reads from memory need no Deferred.
    @ivar hub: where the storage's changes are published, for C{/_watch};
        without one, there is no C{/_watch}.
    @ivar access: who may do what (L{IAccess}); anyone anything, by default.
    @ivar metrics: what C{/_metrics} shows; without it, there is none.
    @param backups: the backend's online backups, for C{/_snapshot};
        without them, there is none.
    """

    app = Klein()

    def __init__(
        self,
        storage: IStorage,
        max_value_size: int = DEFAULT_MAX_VALUE_SIZE,
        health: Callable[[], dict[str, Any]] = dict,
        hub: Hub | None = None,
        access: IAccess | None = None,
        metrics: Metrics | None = None,
        backups: IBackups | None = None,
    ) -> None:
        self.storage = storage
        self._snapshots = SnapshotRoute(backups)
        self.metrics = metrics
        self.hub = hub
        self.access: IAccess = OpenAccess() if access is None else access
        self.max_value_size = max_value_size
        self._health = health
        self.read_now: Callable[[str], Record | None] | None = (
            storage.get_now if IImmediateReads.providedBy(storage) else None
        )
        self._key_routes = {
            method: route for route in KEY_ROUTES for method in route.methods
        }

    def key_route(self, method: bytes, path: bytes) -> KeyRoute | None:
        """
        The key route answering C{method} on C{path}, if it is a key's:
        paths starting with C{/_} are the API's own, C{/} no key's.
        """
        if path[1:2] in (b"_", b""):
            return None
        return self._key_routes.get(method)

    def grant_of(self, request: IRequest) -> Grant:
        """
        What C{request}'s token may do.

        @raise NotAuthenticated: if it has no token, or an unknown one.
        """
        return self.access.grant(request.requestHeaders.getRawHeaders(b"authorization"))

    def resource(self) -> FastPath:
        """The API as a web resource (see L{FastPath})."""
        return FastPath(self)

    @app.handle_errors(Exception)
    def render_failure(self, request: IRequest, failure: Failure) -> bytes:
        """Render any failure as a JSON error; only bugs give a 500."""
        error = failure.value
        if isinstance(error, ApiError):
            return error.render(request)
        if isinstance(error, (NotAuthenticated, NotPermitted)):
            return access_refused(error).render(request)
        if isinstance(error, PreconditionFailed):
            if error.current is None and request.method in (b"DELETE", b"PATCH"):
                # Without its conditions the delete or refresh would be a
                # 404, so RFC 9110 (13.2.1) has them ignored.
                message = f"no such key: {error.key!r}"
                return ApiError(404, "not_found", message).render(request)
            if error.current is not None:
                request.setHeader(b"ETag", etag(error.current.version))
            message = "the key's current state does not match the request's condition"
            return ApiError(412, "precondition_failed", message).render(request)
        if isinstance(error, StorageUnavailable):
            request.setHeader(b"Retry-After", b"1")
            message = f"storage unavailable: {error}"
            return ApiError(503, "unavailable", message).render(request)
        if isinstance(error, NotFound):
            return ApiError(404, "not_found", "no such endpoint").render(request)
        if isinstance(error, MethodNotAllowed):
            allowed = ", ".join(error.valid_methods or ())
            request.setHeader(b"Allow", allowed.encode("ascii"))
            message = f"method not allowed here; allowed: {allowed}"
            return ApiError(405, "method_not_allowed", message).render(request)
        _log.failure("Unexpected error serving {uri}", failure, uri=request.uri)
        internal = ApiError(500, "internal", "internal error; see the server log")
        return internal.render(request)

    @app.route("/_health", methods=["GET"])
    async def health(self, request: IRequest) -> bytes:
        """
        Report whether the daemon is serving and how its storage is; to a
        request without a token, when tokens are needed, only the status.
        """
        document: dict[str, Any] = {"status": "ok", "storage": self.storage.name}
        status = 200
        details = self.access.open or request.getHeader(b"authorization") is not None
        if details:
            self.grant_of(request)
        try:
            document["keys"], document["revision"] = await self.storage.stats()
        except StorageUnavailable as e:
            document.update(status="unavailable", error=str(e))
            status = 503
        document.update(self._health())
        if self.hub is not None:
            document["watch"] = self.hub.health()
        snapshot = document.get("snapshot") or {}
        journal = document.get("journal") or {}
        if status == 200 and (snapshot.get("ok") is False or journal.get("error")):
            document["status"] = "degraded"
        if not details:
            document = {"status": document["status"]}
        return json_body(request, status, document)

    @app.route("/_metrics", methods=["GET"])
    async def scrape(self, request: IRequest) -> bytes:
        """The daemon's metrics, in Prometheus's text format."""
        if self.metrics is None:
            raise ApiError(
                404, "not_found", "this server counts nothing (--no-metrics)"
            )
        self.grant_of(request).require_metrics()
        body = await self.metrics.render()
        request.setHeader(b"Content-Type", CONTENT_TYPE)
        request.setHeader(b"Content-Length", b"%d" % (len(body),))
        request.setHeader(b"Cache-Control", b"no-store")
        return body

    @app.route("/_snapshot", methods=["GET"])
    async def snapshot(self, request: IRequest) -> bytes:
        """
        Stream a backup to an admin: the store at one revision, as the
        snapshot file the daemon loads at startup. Not a HEAD, which
        werkzeug routes with GET: it would take a backup for nothing.
        """
        if request.method != b"GET":
            raise MethodNotAllowed(valid_methods=["GET"])
        return await self._snapshots.serve(request, self.grant_of(request))

    @app.route("/_openapi.json", methods=["GET"])
    def openapi(self, request: IRequest) -> bytes:
        """The OpenAPI description of this API."""
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Content-Length", b"%d" % (len(_OPENAPI),))
        request.setHeader(b"Cache-Control", b"no-cache")
        return _OPENAPI

    @app.route("/_ui", methods=["GET"])
    def ui_entry(self, request: IRequest) -> bytes:
        """The key browser lives at /_ui/, where its files' names resolve."""
        request.setResponseCode(308)
        request.setHeader(b"Location", UI_PATH)
        request.setHeader(b"Content-Length", b"0")
        return b""

    @app.route("/_ui/", methods=["GET"])
    @app.route("/_ui/<name>", methods=["GET"])
    def ui(self, request: IRequest, name: str = "") -> bytes:
        """The key browser: its page, script and style, public as they hold no data."""
        return ui_file(request, name)

    @app.route("/_keys", methods=["GET"])
    async def list_keys(self, request: IRequest) -> bytes:
        """
        List keys in order, by prefix, a page at a time: those the token
        may read, saying so if that left some out.
        """
        grant = self.grant_of(request)
        prefix = query_text(request, "prefix") or ""
        after = query_text(request, "after")
        limit = list_limit(request)
        readable = grant.require_some(prefix)
        listing = await readable_keys(self.storage, prefix, readable, after, limit + 1)
        keys = listing.items
        next_cursor = keys[limit - 1] if len(keys) > limit else None
        page = {"keys": keys[:limit], "next": next_cursor, "revision": listing.revision}
        if readable is not None:
            page["filtered"] = True
        return json_body(request, 200, page)

    @app.route("/_watch", methods=["GET"])
    async def watch(self, request: IRequest) -> bytes:
        """Stream the changes under a prefix, or wait for the next (long poll)."""
        if self.hub is None:
            raise ApiError(404, "not_found", "this server keeps no history to watch")
        grant = self.grant_of(request)
        return await serve_watch(self.hub, self.storage, request, grant)

    @app.route("/", methods=["GET", "HEAD", "PUT", "POST", "PATCH", "DELETE"])
    def root(self, request: IRequest) -> NoReturn:
        """There is no empty key."""
        raise ApiError(400, "bad_key", "the key must not be empty")


def _klein_handler(route: KeyRoute) -> Callable[..., bytes | Deferred[bytes]]:
    """The key route as a Klein route handler of C{/<path:_>}."""

    def handler(service: Service, request: IRequest, _: str) -> bytes | Deferred[bytes]:
        return route.respond(service, request)

    handler.__name__ = route.name
    handler.__doc__ = route.doc
    return handler


def _register_key_routes() -> None:
    for route in KEY_ROUTES:
        methods = [method.decode("ascii") for method in route.methods]
        Service.app.route("/<path:_>", methods=methods)(_klein_handler(route))


_register_key_routes()
