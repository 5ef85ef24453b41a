"""
The HTTP API: a Klein application over an L{IStorage}.

Keys live at C{/<key>}; paths whose first segment starts with C{_} belong
to the API itself (C{/_keys}, C{/_health}). Every error is a JSON object
C{{"error": code, "message": text}} with a 4xx or 5xx status.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from importlib import resources
from typing import Any, NoReturn
from urllib.parse import unquote_to_bytes

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET
from werkzeug.exceptions import MethodNotAllowed, NotFound

from ersid.storage import (
    DEFAULT_CONTENT_TYPE,
    IImmediateReads,
    IStorage,
    Precondition,
    PreconditionFailed,
    Record,
    StorageUnavailable,
    WriteResult,
)

__all__ = [
    "DEFAULT_LIST_LIMIT",
    "DEFAULT_MAX_VALUE_SIZE",
    "MAX_KEY_BYTES",
    "MAX_LIST_LIMIT",
    "Service",
]

DEFAULT_MAX_VALUE_SIZE = 1024 * 1024
MAX_KEY_BYTES = 255
DEFAULT_LIST_LIMIT = 100
MAX_LIST_LIMIT = 1000
_MAX_CONTENT_TYPE_BYTES = 255

_NO_BODY_CODES = (204, 304)
_WHOLE_NUMBER = re.compile("[0-9]{1,9}")
_PRINTABLE_ASCII = re.compile(b"[\x20-\x7e]+")

_Handler = Callable[..., Any]

_log = Logger()
_OPENAPI = resources.files("ersid").joinpath("openapi.json").read_bytes()


class ApiError(Exception):
    """
    An error the client caused or must be told about, rendered as JSON.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    @classmethod
    def value_too_large(cls, limit: int) -> ApiError:
        return cls(413, "value_too_large", f"values are at most {limit} bytes")

    @property
    def document(self) -> dict[str, str]:
        """The JSON object that tells the client."""
        return {"error": self.code, "message": self.message}

    def body(self) -> bytes:
        """The response body that tells the client."""
        return _json_bytes(self.document)

    def render(self, request: IRequest) -> bytes:
        """Set C{request}'s status and headers for this error; the body."""
        return _json_body(request, self.status, self.document)


def _json_bytes(document: dict[str, Any]) -> bytes:
    """A JSON response body: one line of UTF-8."""
    return json.dumps(document).encode("utf-8") + b"\n"


def _json_body(request: IRequest, status: int, document: dict[str, Any]) -> bytes:
    body = _json_bytes(document)
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Content-Length", b"%d" % (len(body),))
    return body


def _empty(request: IRequest, status: int) -> bytes:
    request.setResponseCode(status)
    if status not in _NO_BODY_CODES:
        request.setHeader(b"Content-Length", b"0")
    return b""


def _decode_key(raw_path: bytes) -> str:
    """
    Turn the raw request path into a key: strip the leading slash,
    percent-decode, and insist on UTF-8 within the size limit.
    """
    encoded = unquote_to_bytes(raw_path[1:]) if b"%" in raw_path else raw_path[1:]
    if not encoded:
        raise ApiError(400, "bad_key", "the key must not be empty")
    if len(encoded) > MAX_KEY_BYTES:
        raise ApiError(
            414, "key_too_long", f"keys are at most {MAX_KEY_BYTES} bytes of UTF-8"
        )
    try:
        return encoded.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "bad_key", "the key is not valid UTF-8") from None


def _key_of(request: IRequest) -> str:
    key = _decode_key(request.path)
    if key.startswith("_"):
        raise ApiError(
            400,
            "reserved_key",
            "keys starting with '_' are reserved for the API's own endpoints",
        )
    return key


def _etag(version: int) -> bytes:
    return b'"%d"' % (version,)


def _entity_tags(header: bytes) -> list[bytes]:
    return [tag.strip() for tag in header.split(b",") if tag.strip()]


def _version_of(tag: bytes) -> int | None:
    """
    The version a strong ETag names, or C{None} for any other tag (and for
    one with more digits than a version, a 64-bit number, can have).
    """
    digits = tag[1:-1]
    if tag[:1] == tag[-1:] == b'"' and digits.isdigit() and len(digits) <= 20:
        return int(digits)
    return None


def _write_precondition(request: IRequest) -> Precondition | None:
    """
    Read C{If-Match} and C{If-None-Match} of a write into a L{Precondition}.
    """
    if_match = request.getHeader(b"If-Match")
    if_none_match = request.getHeader(b"If-None-Match")
    if if_match is not None and if_none_match is not None:
        raise ApiError(
            400, "bad_precondition", "send If-Match or If-None-Match, not both"
        )
    if if_none_match is not None:
        if if_none_match.strip() != b"*":
            raise ApiError(
                400,
                "bad_precondition",
                "on writes, If-None-Match supports only '*' (create if absent)",
            )
        return Precondition.if_absent()
    if if_match is not None:
        tags = _entity_tags(if_match)
        if tags == [b"*"]:
            return Precondition(exists=True)
        versions = (_version_of(tag) for tag in tags)
        return Precondition.if_version(v for v in versions if v is not None)
    return None


def _not_modified(request: IRequest, record: Record) -> bool:
    header = request.getHeader(b"If-None-Match")
    if header is None:
        return False
    tags = _entity_tags(header)
    return b"*" in tags or any(
        _version_of(tag.removeprefix(b"W/")) == record.version for tag in tags
    )


def _content_type_of(request: IRequest) -> str:
    raw = request.getHeader(b"Content-Type")
    if raw is None:
        return DEFAULT_CONTENT_TYPE
    raw = raw.strip()
    if len(raw) > _MAX_CONTENT_TYPE_BYTES or not _PRINTABLE_ASCII.fullmatch(raw):
        raise ApiError(
            400, "bad_content_type", "Content-Type must be short, printable ASCII"
        )
    return raw.decode("ascii")


def _query_text(request: IRequest, name: str) -> str | None:
    values = request.args.get(name.encode("ascii"))
    if not values:
        return None
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(
            400, "bad_query", f"query parameter {name!r} is not UTF-8"
        ) from None


def _list_limit(request: IRequest) -> int:
    text = _query_text(request, "limit")
    if text is None:
        return DEFAULT_LIST_LIMIT
    if not _WHOLE_NUMBER.fullmatch(text) or not 1 <= int(text) <= MAX_LIST_LIMIT:
        raise ApiError(
            400, "bad_query", f"limit must be a whole number from 1 to {MAX_LIST_LIMIT}"
        )
    return int(text)


def _read_body(request: IRequest, limit: int) -> bytes:
    request.content.seek(0)
    body = request.content.read(limit + 1)
    if len(body) > limit:
        raise ApiError.value_too_large(limit)
    return body


def _header_value(text: str) -> bytes:
    """
    C{text} for a response header, escaped if a header cannot carry it (a
    content type stored through the Python API may be any text).
    """
    if text.isascii() and text.isprintable():
        return text.encode("ascii")
    return text.encode("unicode_escape")


def _not_found(request: IRequest) -> ApiError:
    return ApiError(404, "not_found", f"no such key: {_key_of(request)!r}")


def _render_record(record: Record | None, request: IRequest) -> bytes:
    if record is None:
        raise _not_found(request)
    headers = request.responseHeaders
    headers.setRawHeaders(b"ETag", [_etag(record.version)])
    headers.setRawHeaders(b"X-Content-Type-Options", [b"nosniff"])
    if _not_modified(request, record):
        return _empty(request, 304)
    headers.setRawHeaders(b"Content-Type", [_header_value(record.content_type)])
    if request.method == b"HEAD":
        headers.setRawHeaders(b"Content-Length", [b"%d" % (len(record.value),)])
        return b""
    # Content-Length is set when the body is written (see _FastPath).
    return record.value


def _render_write(result: WriteResult, request: IRequest) -> bytes:
    request.setHeader(b"ETag", _etag(result.version))
    return _empty(request, 201 if result.created else 204)


def _render_delete(deleted: bool, request: IRequest) -> bytes:
    if not deleted:
        raise _not_found(request)
    return _empty(request, 204)


def _renders_with(
    render: Callable[[Any, IRequest], bytes],
) -> Callable[[_Handler], _Handler]:
    """
    Decorate C{start}, a method that checks a request and makes one storage
    call, into a key route whose response C{render} makes of that call's
    outcome. The route keeps both, as C{start} and C{render}, for
    L{_FastPath}.
    """

    def route(start: _Handler) -> _Handler:
        @functools.wraps(start)
        def respond(self: Service, request: IRequest, _: str | None) -> Any:
            outcome = start(self, request, _)
            if isinstance(outcome, Deferred):
                return outcome.addCallback(render, request)
            return render(outcome, request)

        respond.start = start  # type: ignore[attr-defined]
        respond.render = render  # type: ignore[attr-defined]
        return respond

    return route


class Service:
    """
    The REST service: one Klein app whose routes define the whole API.

    @ivar storage: the live L{IStorage}.
    @ivar health: extra facts for C{/_health}, such as the last snapshot.
    """

    app = Klein()

    def __init__(
        self,
        storage: IStorage,
        max_value_size: int = DEFAULT_MAX_VALUE_SIZE,
        health: Callable[[], dict[str, Any]] = dict,
    ) -> None:
        self.storage = storage
        self.max_value_size = max_value_size
        self._health = health
        self._get_now = storage.get_now if IImmediateReads.providedBy(storage) else None

    def resource(self) -> IResource:
        """
        The API as a web resource, guarded so that even paths Klein cannot
        decode get a JSON answer.
        """
        return _FastPath(self)

    @app.handle_errors(Exception)
    def render_failure(self, request: IRequest, failure: Failure) -> bytes:
        """Render any failure as a JSON error; only bugs give a 500."""
        error = failure.value
        if isinstance(error, ApiError):
            return error.render(request)
        if isinstance(error, PreconditionFailed):
            if error.current is not None:
                request.setHeader(b"ETag", _etag(error.current.version))
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
        """Report whether the daemon is serving and how its storage is."""
        document: dict[str, Any] = {"status": "ok", "storage": self.storage.name}
        status = 200
        try:
            document["keys"], document["revision"] = await self.storage.stats()
        except StorageUnavailable as e:
            document.update(status="unavailable", error=str(e))
            status = 503
        document.update(self._health())
        snapshot = document.get("snapshot") or {}
        journal = document.get("journal") or {}
        if status == 200 and (snapshot.get("ok") is False or journal.get("error")):
            document["status"] = "degraded"
        return _json_body(request, status, document)

    @app.route("/_openapi.json", methods=["GET"])
    def openapi(self, request: IRequest) -> bytes:
        """The OpenAPI description of this API."""
        request.setHeader(b"Content-Type", b"application/json")
        return _OPENAPI

    @app.route("/_keys", methods=["GET"])
    async def list_keys(self, request: IRequest) -> bytes:
        """List keys in order, by prefix, a page at a time."""
        prefix = _query_text(request, "prefix") or ""
        after = _query_text(request, "after")
        limit = _list_limit(request)
        keys = await self.storage.keys(prefix, after, limit + 1)
        next_cursor = keys[limit - 1] if len(keys) > limit else None
        return _json_body(request, 200, {"keys": keys[:limit], "next": next_cursor})

    @app.route("/", methods=["GET", "HEAD", "PUT", "POST", "DELETE"])
    def root(self, request: IRequest) -> NoReturn:
        """There is no empty key."""
        raise ApiError(400, "bad_key", "the key must not be empty")

    # Each key route checks the request and makes one storage call; the
    # function named in @_renders_with turns the call's result into the
    # response. Kept apart, the two let the fast path of L{resource} render
    # and finish a response in one callback.

    @app.route("/<path:_>", methods=["GET", "HEAD"])
    @_renders_with(_render_record)
    def get_key(
        self, request: IRequest, _: str | None
    ) -> Record | Deferred[Record | None] | None:
        """Return a value byte for byte, with its content type and ETag."""
        key = _key_of(request)
        if self._get_now is not None:
            return self._get_now(key)
        return self.storage.get(key)

    @app.route("/<path:_>", methods=["PUT", "POST"])
    @_renders_with(_render_write)
    def set_key(self, request: IRequest, _: str | None) -> Deferred[WriteResult]:
        """Store the body: 201 for a new key, 204 for a replaced one."""
        key = _key_of(request)
        precondition = _write_precondition(request)
        content_type = _content_type_of(request)
        value = _read_body(request, self.max_value_size)
        return self.storage.set(key, value, content_type, precondition)

    @app.route("/<path:_>", methods=["DELETE"])
    @_renders_with(_render_delete)
    def delete_key(self, request: IRequest, _: str | None) -> Deferred[bool]:
        """Remove a key: 204, or 404 if there was none."""
        key = _key_of(request)
        precondition = _write_precondition(request)
        if precondition is not None and precondition.exists is False:
            raise ApiError(400, "bad_precondition", "If-None-Match makes no sense here")
        return self.storage.delete(key, precondition)


class _FastPath(Resource):
    """
    The front of the API. Requests for keys go straight to the Klein app's
    own routes for their method, found in its route table, skipping Klein's
    per-request routing and Deferred plumbing, the bulk of the cost of a
    request; everything else (the C{/_} endpoints, unknown methods) is
    rendered by Klein. Paths that are not UTF-8 get a JSON 400 here, since
    Klein would answer them in plain text.
    """

    isLeaf = True

    def __init__(self, service: Service) -> None:
        super().__init__()
        self._service = service
        self._klein = service.app.resource()
        self._key_routes = {
            method.encode("ascii"): (
                functools.partial(route.start, service),
                route.render,
            )
            for rule in service.app.url_map.iter_rules()
            if rule.rule == "/<path:_>"
            for route in [getattr(Service, rule.endpoint)]
            for method in rule.methods or ()
        }

    def render(self, request: IRequest) -> bytes | int:
        key_route = self._key_routes.get(request.method)
        if key_route is None or request.path[1:2] in (b"_", b""):
            try:
                unquote_to_bytes(request.path).decode("utf-8")
            except UnicodeDecodeError:
                error = ApiError(400, "bad_key", "the path is not valid UTF-8")
                return error.render(request)
            return self._klein.render(request)
        start, render = key_route
        try:
            outcome = start(request, None)
        except Exception:
            outcome = Failure()
        if isinstance(outcome, Deferred):
            # Rendered and finished in one callback: a Deferred's callbacks
            # cost a microsecond each.
            outcome.addCallbacks(
                self._respond,
                self._respond,
                callbackArgs=(render, request),
                errbackArgs=(render, request),
            )
            return NOT_DONE_YET
        body = self._body(outcome, render, request)
        if request.code in _NO_BODY_CODES:
            _finish(body, request)
            return NOT_DONE_YET
        # twisted.web writes it with its Content-Length in one go.
        return body

    def _respond(
        self, outcome: Any, render: Callable[[Any, IRequest], bytes], request: IRequest
    ) -> None:
        _finish(self._body(outcome, render, request), request)

    def _body(
        self, outcome: Any, render: Callable[[Any, IRequest], bytes], request: IRequest
    ) -> bytes:
        """The response body C{render} makes of C{outcome}, or of its failure."""
        if not isinstance(outcome, Failure):
            try:
                return render(outcome, request)
            except Exception:
                outcome = Failure()
        return self._service.render_failure(request, outcome)


def _finish(body: bytes, request: IRequest) -> None:
    """
    Write a body that came late; twisted.web sets Content-Length only for
    bodies returned at once, and must not for 204 and 304.
    """
    # notifyFinish() would say the same at the price of a Deferred per request.
    if not request.finished and not request._disconnected:
        if request.code not in _NO_BODY_CODES and request.method != b"HEAD":
            request.setHeader(b"Content-Length", b"%d" % (len(body),))
        if body:
            request.write(body)
        request.finish()
