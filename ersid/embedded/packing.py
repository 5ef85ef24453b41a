"""
One record of the dict backend packed into one bytes object
(L{pack_record}): an 8-byte version, the content type's length (or a mark
for the default), the expiry if there is one (8 bytes more), the content
type and the value. A few dozen bytes less than a L{Record} object, and
read in place (L{packed_expired}) without unpacking.
"""

from __future__ import annotations

import struct

from ersid.storage import DEFAULT_CONTENT_TYPE, Record

__all__ = ["pack_record", "packed_expired", "packed_expiry", "unpack_record"]

_HEADER = struct.Struct(">QH")
_EXPIRY = struct.Struct(">d")
# The header's second field: the content type's length, or _DEFAULT_TYPE
# for the default; _EXPIRING is set when an expiry follows the header.
_DEFAULT_TYPE = 0x7FFF
_EXPIRING = 0x8000


def pack_record(
    version: int, content_type: str, value: bytes, expires: float | None = None
) -> bytes:
    """
    One bytes object: version, content type (its length, or a mark for the
    default), the expiry if there is one (eight bytes more), and value.

    @raise ValueError: if the content type is too long.
    @raise struct.error: if the version is not a 64-bit unsigned number.
    """
    if content_type == DEFAULT_CONTENT_TYPE:
        type_bytes = b""
        type_field = _DEFAULT_TYPE
    else:
        type_bytes = content_type.encode("utf-8")
        type_field = len(type_bytes)
        if type_field >= _DEFAULT_TYPE:
            raise ValueError("the content type is too long")
    if expires is None:
        return b"".join([_HEADER.pack(version, type_field), type_bytes, value])
    header = _HEADER.pack(version, type_field | _EXPIRING) + _EXPIRY.pack(expires)
    return b"".join([header, type_bytes, value])


def packed_expiry(packed: bytes) -> float | None:
    """When the record L{pack_record} packed expires, without unpacking it."""
    if packed[8] & 0x80:
        return _EXPIRY.unpack_from(packed, _HEADER.size)[0]
    return None


def packed_expired(packed: bytes, now: float) -> bool:
    """Has the record L{pack_record} packed expired by Unix time C{now}?"""
    return (
        bool(packed[8] & 0x80) and _EXPIRY.unpack_from(packed, _HEADER.size)[0] <= now
    )


def unpack_record(packed: bytes) -> Record:
    """The L{Record} that L{pack_record} packed."""
    version, type_field = _HEADER.unpack_from(packed)
    start = _HEADER.size
    expires = None
    if type_field & _EXPIRING:
        (expires,) = _EXPIRY.unpack_from(packed, start)
        start += _EXPIRY.size
        type_field &= ~_EXPIRING
    if type_field == _DEFAULT_TYPE:
        return Record(packed[start:], DEFAULT_CONTENT_TYPE, version, expires)
    end = start + type_field
    content_type = packed[start:end].decode("utf-8")
    return Record(packed[end:], content_type, version, expires)
