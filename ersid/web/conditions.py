"""
Conditional requests, as RFC 9110 (section 13) has them: ETags made of a
key's version; C{If-Match} and C{If-None-Match} on writes as a
L{Precondition}, checked atomically with the write (compare-and-set), and
on reads as 412 and 304.

Entity tags are opaque strings, compared as such (C{"038"} is not C{"38"});
several header lines of one field are one list; a list of C{*}s is C{*}.
"""

from __future__ import annotations

import re

import attrs
from twisted.web.iweb import IRequest

from ersid.storage import Precondition, Record
from ersid.web.errors import ApiError

__all__ = ["etag", "read_condition", "write_precondition"]

# One element of a list of entity tags: [W/]"opaque", with optional white
# space around it, followed by a comma or the end (RFC 9110, 8.8.3). The
# quantifiers are possessive: with backtracking, a header of spaces would
# take seconds to refuse.
_ELEMENT = re.compile(
    rb'[ \t]*+(?:(W/)?("[\x21\x23-\x7e\x80-\xff]*+")|(\*))?[ \t]*+(,|$)'
)
_VERSION = re.compile(rb'"([1-9][0-9]{0,19})"')


def etag(version: int) -> bytes:
    """The strong ETag of a version."""
    return b'"%d"' % (version,)


@attrs.frozen
class _Tags:
    """A parsed C{If-Match} or C{If-None-Match}: C{*}, or entity tags."""

    star: bool
    # (weak, opaque tag) pairs
    tags: tuple[tuple[bool, bytes], ...]

    def versions(self, weak_too: bool) -> frozenset[int]:
        """The versions the tags name: strong ones only, unless C{weak_too}."""
        named = set()
        for weak, opaque in self.tags:
            match = _VERSION.fullmatch(opaque)
            if match and (weak_too or not weak):
                named.add(int(match[1]))
        return frozenset(named)


_FIELD_NAMES = {b"if-match": "If-Match", b"if-none-match": "If-None-Match"}


def _tags(request: IRequest, name: bytes) -> _Tags | None:
    """
    The field C{name} of the request, all its lines as one list, or C{None}
    without one.

    @raise ApiError: if it is not C{*} or a list of entity tags.
    """
    lines = request.requestHeaders.getRawHeaders(name)
    if lines is None:
        return None
    value = b", ".join(lines)
    stars = 0
    tags = []
    position = 0
    while position <= len(value):
        element = _ELEMENT.match(value, position)
        if element is None:
            field = _FIELD_NAMES[name]
            raise ApiError(
                400,
                "bad_precondition",
                f'{field} must be * or a list of entity tags such as "5"',
            )
        weak, opaque, star, separator = element.groups()
        if star:
            stars += 1
        elif opaque:
            tags.append((weak is not None, opaque))
        position = element.end()
        if not separator:
            break
    if stars and tags:
        field = _FIELD_NAMES[name]
        raise ApiError(
            400, "bad_precondition", f"{field} is * or entity tags, not both"
        )
    return _Tags(bool(stars), tuple(tags))


def write_precondition(request: IRequest) -> Precondition | None:
    """
    The L{Precondition} that C{If-Match} (strong comparison) and
    C{If-None-Match} (weak comparison) of a write or delete make, to be
    checked atomically with it; C{None} without either.
    """
    if_match = _tags(request, b"if-match")
    if_none_match = _tags(request, b"if-none-match")
    if if_match is None and if_none_match is None:
        return None
    exists = None
    versions = not_versions = None
    if if_match is not None:
        exists = True
        if not if_match.star:
            versions = if_match.versions(weak_too=False)
    if if_none_match is not None:
        if if_none_match.star:
            if exists:
                return Precondition(exists=True, versions=frozenset())
            exists = False
        else:
            not_versions = if_none_match.versions(weak_too=True)
    return Precondition(exists=exists, versions=versions, not_versions=not_versions)


def read_condition(request: IRequest, record: Record) -> int | None:
    """
    The status a read of C{record}, which exists, answers instead of the
    record because of its conditions: 412 when C{If-Match} fails, 304 when
    C{If-None-Match} names its version; C{None} to answer the record.
    """
    fields = request.requestHeaders
    if (
        fields.getRawHeaders(b"if-match") is None
        and fields.getRawHeaders(b"if-none-match") is None
    ):
        return None  # most reads
    if_match = _tags(request, b"if-match")
    if if_match is not None and not if_match.star:
        if record.version not in if_match.versions(weak_too=False):
            return 412
    if_none_match = _tags(request, b"if-none-match")
    if if_none_match is not None:
        if if_none_match.star or record.version in if_none_match.versions(True):
            return 304
    return None
