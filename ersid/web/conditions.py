"""
Conditional requests: ETags made of a key's version, C{If-Match} and
C{If-None-Match} on writes as a L{Precondition} (compare-and-set), and
C{If-None-Match} on reads (304).
"""

from __future__ import annotations

from twisted.web.iweb import IRequest

from ersid.storage import Precondition, Record
from ersid.web.errors import ApiError

__all__ = ["etag", "not_modified", "write_precondition"]


def etag(version: int) -> bytes:
    """The strong ETag of a version."""
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


def write_precondition(request: IRequest) -> Precondition | None:
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


def not_modified(request: IRequest, record: Record) -> bool:
    """Does the read's C{If-None-Match} name the record's version?"""
    header = request.getHeader(b"If-None-Match")
    if header is None:
        return False
    tags = _entity_tags(header)
    return b"*" in tags or any(
        _version_of(tag.removeprefix(b"W/")) == record.version for tag in tags
    )
