"""
What the connection checks in a request beyond llhttp's own checks: the
limits of a head, the ambiguities a proxy in front could read another way,
and the JSON answer to each refusal, llhttp's included.

llhttp itself refuses Content-Length with Transfer-Encoding, two
Content-Lengths, folded lines, bare LF line ends, white space before a
colon and bad chunk sizes; it accepts what L{ambiguity} refuses.
"""

from __future__ import annotations

import re

from httptools import (
    HttpParserError,
    HttpParserInvalidMethodError,
    HttpParserInvalidURLError,
)

from ersid.web.errors import ApiError
from ersid.web.exchange import Fields
from ersid.web.keys import KEY_ROUTES

__all__ = [
    "ALLOW_ANY",
    "MAX_FIELDS",
    "MAX_HEAD_BYTES",
    "MAX_TARGET_BYTES",
    "VERSIONS",
    "ambiguity",
    "fields_too_large",
    "path_of_absolute_form",
    "refused_by_llhttp",
    "says_close",
    "target_too_long",
]

# The longest request target, and the most bytes and lines of header
# fields, a request may have.
MAX_TARGET_BYTES = 8192
MAX_HEAD_BYTES = 16384
MAX_FIELDS = 100
# The versions served, as llhttp names them and as a response does.
VERSIONS = {"1.1": b"HTTP/1.1", "1.0": b"HTTP/1.0"}
# Every method of a key: what a path may be asked, at most.
ALLOW_ANY = b", ".join(sorted({m for route in KEY_ROUTES for m in route.methods}))
# A Host header (RFC 9110, 7.2): a host name, an IPv4 address or an IP
# literal in brackets, and a port; or nothing.
_HOST = re.compile(
    rb"(?:\[[0-9A-Fa-f:.]++\]|[A-Za-z0-9._~!$&'()*+,;=%-]*+)(?::[0-9]*+)?"
)


def says_close(fields: Fields) -> bool:
    """Whether the client asks for the connection to close after this request."""
    connection = fields.get(b"connection")
    return connection is not None and any(
        token.strip(b" \t").lower() == b"close"
        for line in connection
        for token in line.split(b",")
    )


def ambiguity(version: str, fields: Fields) -> ApiError | None:
    """
    What in a request's head, accepted by llhttp, a proxy in front could
    read another way, or HTTP forbids: the error to answer, or C{None}.
    """
    if version not in VERSIONS:
        message = "only HTTP/1.1 and HTTP/1.0 are served"
        return ApiError(505, "http_version_not_supported", message)
    hosts = fields.get(b"host")
    if version == "1.1" and (hosts is None or len(hosts) != 1):
        return _bad_request("an HTTP/1.1 request needs one Host header")
    if hosts is not None:
        if len(hosts) > 1:
            return _bad_request("a request has one Host header at most")
        if not _HOST.fullmatch(hosts[0]):
            return _bad_request("the Host header is not a host")
    codings = fields.get(b"transfer-encoding")
    if codings is not None:
        if version != "1.1":
            # RFC 9112 6.1: HTTP/1.0 has no transfer codings; the framing of
            # such a message is faulty.
            return _bad_request("HTTP/1.0 has no Transfer-Encoding")
        if len(codings) != 1 or codings[0].lower() != b"chunked":
            return _bad_request("the only transfer coding accepted is chunked")
    types = fields.get(b"content-type")
    if types is not None and len(types) > 1:
        return _bad_request("a request has one Content-Type header at most")
    return None


def _bad_request(message: str) -> ApiError:
    return ApiError(400, "bad_request", message)


def fields_too_large() -> ApiError:
    """The answer to a head over its limits."""
    return ApiError(
        431,
        "header_fields_too_large",
        f"a request has at most {MAX_FIELDS} header lines and "
        f"{MAX_HEAD_BYTES} bytes of them",
    )


def target_too_long() -> ApiError:
    """The answer to a request target over its limit."""
    message = f"request targets are at most {MAX_TARGET_BYTES} bytes"
    return ApiError(414, "target_too_long", message)


def refused_by_llhttp(error: HttpParserError, max_body: int) -> ApiError:
    """The answer to a request llhttp refused, with its reason."""
    if isinstance(error, HttpParserInvalidMethodError):
        # Methods are case-sensitive (RFC 9110): none llhttp does not know
        # is one the API has.
        message = f"method not allowed here; allowed: {ALLOW_ANY.decode()}"
        return ApiError(405, "method_not_allowed", message, {b"Allow": ALLOW_ANY})
    if isinstance(error, HttpParserInvalidURLError):
        message = "the request target must be a path, such as /key"
        return ApiError(400, "bad_request_target", message)
    reason = str(error)
    if reason == "Content-Length overflow":
        return ApiError.value_too_large(max_body)
    return _bad_request(f"the request is not valid HTTP/1.1: {reason}")


def path_of_absolute_form(target: bytes) -> bytes | None:
    """
    The path of an C{http} or C{https} URL (C{/} if it has none), or
    C{None} if C{target} is no such URL.
    """
    scheme, separator, rest = target.partition(b"://")
    if not separator or scheme.lower() not in (b"http", b"https"):
        return None
    rest = rest.partition(b"?")[0]
    slash = rest.find(b"/")
    return b"/" if slash == -1 else rest[slash:]
