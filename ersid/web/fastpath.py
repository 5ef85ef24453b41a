"""
The API as a twisted.web resource, for the requests the connection hands
to twisted.web (L{ersid.web.slowpath}) and for any twisted.web server
(the tests' C{StubTreq}): requests for keys go straight to their key route
(L{ersid.web.keys.KEY_ROUTES}), skipping Klein's per-request routing and
Deferred plumbing; everything else (the C{/_} endpoints, unknown methods)
is rendered by Klein.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from ersid.web.errors import NO_BODY_CODES, ApiError
from ersid.web.keys import KeyRoute

if TYPE_CHECKING:
    from ersid.web.app import Service

__all__ = ["FastPath"]


class FastPath(Resource):
    """
    The API as one leaf resource. Paths that are not UTF-8 get a JSON 400
    here, since Klein would answer them in plain text.
    """

    isLeaf = True

    def __init__(self, service: Service) -> None:
        super().__init__()
        self._service = service
        self._klein = service.app.resource()
        self._routes = service.app.url_map.bind("api")
        rules = list(service.app.url_map.iter_rules())
        self._methods = {
            method.encode("ascii") for rule in rules for method in rule.methods or ()
        }
        # The API's own endpoints, /_health and others: any other method
        # there is a 405, not a key starting with '_'.
        self._endpoints = {
            rule.rule.encode("ascii"): {m.encode("ascii") for m in rule.methods or ()}
            for rule in rules
            if rule.rule.startswith("/_")
        }
        # And those with a variable part (/_ui/<name>), by what precedes it.
        self._endpoint_folders = [
            (path.partition(b"<")[0], methods)
            for path, methods in self._endpoints.items()
            if b"<" in path
        ]

    def render(self, request: IRequest) -> bytes | int:
        route = self._service.key_route(request.method, request.path)
        if route is None:
            try:
                unquote_to_bytes(request.path).decode("utf-8")
            except UnicodeDecodeError:
                error = ApiError(400, "bad_key", "the path is not valid UTF-8")
                return error.render(request)
            allowed = self._endpoint_methods(request.path) or self._methods
            if request.method not in allowed:
                return self._not_allowed(request)
            return self._klein.render(request)
        try:
            grant = self._service.grant_of(request)
            outcome = route.call(self._service, request, grant)
        except Exception:
            outcome = Failure()
        if isinstance(outcome, Deferred):
            # Rendered and finished in one callback: a Deferred's callbacks
            # cost a microsecond each.
            outcome.addBoth(self._respond, route, request)
            return NOT_DONE_YET
        body = route.body(self._service, outcome, request)
        if request.code in NO_BODY_CODES:
            _finish(body, request)
            return NOT_DONE_YET
        # twisted.web writes it with its Content-Length in one go.
        return body

    def _endpoint_methods(self, path: bytes) -> set[bytes] | None:
        """The methods of the API's own endpoint at C{path}, if it is one."""
        methods = self._endpoints.get(path)
        if methods is None:
            for folder, in_folder in self._endpoint_folders:
                if path.startswith(folder):
                    return in_folder
        return methods

    def _not_allowed(self, request: IRequest) -> bytes:
        """
        405 for a method no route has. Methods are case-sensitive (RFC
        9110), which Klein's routing, upper-casing them, is not.
        """
        path = unquote_to_bytes(request.path).decode("utf-8")
        methods = self._endpoint_methods(request.path)
        if methods is None:
            methods = self._routes.allowed_methods(path)
        else:
            methods = [method.decode("ascii") for method in methods]
        allowed = ", ".join(sorted(methods))
        request.setHeader(b"Allow", allowed.encode("ascii"))
        message = f"method not allowed here; allowed: {allowed}"
        return ApiError(405, "method_not_allowed", message).render(request)

    def _respond(self, outcome: Any, route: KeyRoute, request: IRequest) -> None:
        _finish(route.body(self._service, outcome, request), request)


def _finish(body: bytes, request: IRequest) -> None:
    """
    Write a body that came late; twisted.web sets Content-Length only for
    bodies returned at once, and must not for 204 and 304.
    """
    # A request's channel is None once its connection is lost (what
    # notifyFinish() would say, at the price of a Deferred per request).
    if not request.finished and request.channel is not None:
        if request.code not in NO_BODY_CODES and request.method != b"HEAD":
            request.setHeader(b"Content-Length", b"%d" % (len(body),))
        if body:
            request.write(body)
        request.finish()
