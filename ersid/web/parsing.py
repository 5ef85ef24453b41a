"""
What a request says, checked: its key, its content type, its query
parameters and its body, each refused with an L{ApiError} when it makes no
sense; and text made safe for a response header.
"""

from __future__ import annotations

import functools
import re
from urllib.parse import unquote_to_bytes

from twisted.web.iweb import IRequest

from ersid.storage import DEFAULT_CONTENT_TYPE, MAX_TTL
from ersid.web.errors import ApiError

__all__ = [
    "DEFAULT_LIST_LIMIT",
    "MAX_KEY_BYTES",
    "MAX_LIST_LIMIT",
    "content_type_of",
    "decode_key",
    "header_value",
    "key_of",
    "list_limit",
    "query_text",
    "read_body",
    "ttl_of",
]

MAX_KEY_BYTES = 255
DEFAULT_LIST_LIMIT = 100
MAX_LIST_LIMIT = 1000
_MAX_CONTENT_TYPE_BYTES = 255

_WHOLE_NUMBER = re.compile("[0-9]{1,9}")
_SECONDS = re.compile(rb"[0-9]{1,10}(?:\.[0-9]{1,6})?")
# A media type (RFC 9110, 8.3.1): type/subtype and parameters, one of it.
_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]++"
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e]|\\[\t \x21-\x7e])*+"'
_MEDIA_TYPE = re.compile(
    rb"%s/%s(?:[ \t]*+;[ \t]*+(?:%s=(?:%s|%s))?)*+"
    % (_TOKEN, _TOKEN, _TOKEN, _TOKEN, _QUOTED)
)


def decode_key(raw_path: bytes) -> str:
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


def key_of(request: IRequest) -> str:
    """The key a request names; keys starting with C{_} are the API's own."""
    key = decode_key(request.path)
    if key.startswith("_"):
        raise ApiError(
            400,
            "reserved_key",
            "keys starting with '_' are reserved for the API's own endpoints",
        )
    return key


def content_type_of(request: IRequest) -> str:
    """The content type of a value written: one media type, short."""
    raw = request.getHeader(b"Content-Type")
    if raw is None:
        return DEFAULT_CONTENT_TYPE
    raw = raw.strip(b" \t")
    if len(raw) > _MAX_CONTENT_TYPE_BYTES or not _MEDIA_TYPE.fullmatch(raw):
        raise ApiError(
            400,
            "bad_content_type",
            "Content-Type must be one media type, such as text/plain; "
            "charset=utf-8, of at most 255 bytes",
        )
    return raw.decode("ascii")


def ttl_of(request: IRequest) -> float | None:
    """
    The time to live a write asks for in C{Ersid-TTL}: seconds, decimals
    allowed, more than zero and at most ten years; C{None} without one.
    """
    lines = request.requestHeaders.getRawHeaders(b"ersid-ttl")
    if lines is None:
        return None
    text = lines[0].strip(b" \t") if len(lines) == 1 else b""
    if _SECONDS.fullmatch(text) and 0 < float(text) <= MAX_TTL:
        return float(text)
    raise ApiError(
        400,
        "bad_ttl",
        "Ersid-TTL must be one number of seconds, such as 30 or 0.5, more than "
        f"zero and at most {MAX_TTL:.0f} (ten years)",
    )


def query_text(request: IRequest, name: str) -> str | None:
    """The first value of the query parameter C{name}, which must be UTF-8."""
    values = request.args.get(name.encode("ascii"))
    if not values:
        return None
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(
            400, "bad_query", f"query parameter {name!r} is not UTF-8"
        ) from None


def list_limit(request: IRequest) -> int:
    """The C{limit} of a listing: 1 to L{MAX_LIST_LIMIT} keys."""
    text = query_text(request, "limit")
    if text is None:
        return DEFAULT_LIST_LIMIT
    if not _WHOLE_NUMBER.fullmatch(text) or not 1 <= int(text) <= MAX_LIST_LIMIT:
        raise ApiError(
            400, "bad_query", f"limit must be a whole number from 1 to {MAX_LIST_LIMIT}"
        )
    return int(text)


def read_body(request: IRequest, limit: int) -> bytes:
    """The request's body, at most C{limit} bytes."""
    request.content.seek(0)
    body = request.content.read(limit + 1)
    if len(body) > limit:
        raise ApiError.value_too_large(limit)
    return body


@functools.lru_cache(maxsize=256)
def header_value(text: str) -> bytes:
    """
    C{text} for a response header, escaped if a header cannot carry it (a
    content type stored through the Python API may be any text). The few
    content types in use are made once.
    """
    if text.isascii() and text.isprintable():
        return text.encode("ascii")
    return text.encode("unicode_escape")
