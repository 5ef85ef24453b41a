"""
The journal's files: a series of segments C{journal.<revision>} in the data
directory, each a run of entries framed as C{length, crc32, body}; the body
holds the operation, revision, key, content type, expiry (a set with a
time to live) and value. An expiry's removal is an entry of its own, so
that replaying never asks the clock. This module
knows the format and reads it; it changes no file.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator

import attrs

from ersid.storage import Record

__all__ = [
    "SEGMENT_PREFIX",
    "JournalEntry",
    "SegmentDamage",
    "encode_delete",
    "encode_set",
    "read_segment",
    "segment_path",
    "segment_start",
    "segments",
]

_FRAME = struct.Struct(">II")
_FIXED = struct.Struct(">BQHH")
_EXPIRY = struct.Struct(">d")
_SET, _DELETE, _SET_EXPIRING, _EXPIRE = 1, 2, 3, 4
# Segments are named this and their first revision, zero-padded.
SEGMENT_PREFIX = "journal."
_MAX_ENTRY = 1 << 31


def _framed(body: bytes) -> bytes:
    return _FRAME.pack(len(body), zlib.crc32(body)) + body


def encode_set(
    revision: int,
    key: str,
    content_type: str,
    value: bytes,
    expires: float | None = None,
) -> bytes:
    """
    The journal entry of a set, framed, made straight from its parts: every
    write pays for this, so it builds no L{Record} or L{JournalEntry}.
    """
    key_bytes = key.encode("utf-8")
    type_bytes = content_type.encode("utf-8")
    if expires is None:
        fixed = _FIXED.pack(_SET, revision, len(key_bytes), len(type_bytes))
    else:
        fixed = _FIXED.pack(
            _SET_EXPIRING, revision, len(key_bytes), len(type_bytes)
        ) + _EXPIRY.pack(expires)
    return _framed(b"".join([fixed, key_bytes, type_bytes, value]))


def encode_delete(revision: int, key: str, expired: bool = False) -> bytes:
    """The journal entry of a delete, or of a removal by expiry, framed."""
    key_bytes = key.encode("utf-8")
    operation = _EXPIRE if expired else _DELETE
    return _framed(_FIXED.pack(operation, revision, len(key_bytes), 0) + key_bytes)


@attrs.frozen
class JournalEntry:
    """
    One change: a set (with its record), or a delete (record C{None}),
    which C{expired} says was a removal by expiry.
    """

    revision: int
    key: str
    record: Record | None
    expired: bool = False

    def encode(self) -> bytes:
        if self.record is None:
            return encode_delete(self.revision, self.key, self.expired)
        record = self.record
        return encode_set(
            self.revision, self.key, record.content_type, record.value, record.expires
        )

    @classmethod
    def decode(cls, body: bytes) -> JournalEntry:
        operation, revision, key_length, type_length = _FIXED.unpack_from(body)
        start = _FIXED.size
        expires = None
        if operation == _SET_EXPIRING:
            (expires,) = _EXPIRY.unpack_from(body, start)
            start += _EXPIRY.size
        key = body[start : start + key_length].decode("utf-8")
        if operation in (_DELETE, _EXPIRE):
            return cls(revision, key, None, expired=operation == _EXPIRE)
        if operation not in (_SET, _SET_EXPIRING):
            raise ValueError(f"unknown operation {operation}")
        start += key_length
        content_type = body[start : start + type_length].decode("utf-8")
        value = body[start + type_length :]
        return cls(revision, key, Record(value, content_type, revision, expires))


def segment_path(directory: str, revision: int) -> str:
    """The segment holding the changes after C{revision}."""
    return os.path.join(directory, f"{SEGMENT_PREFIX}{revision:020d}")


def segments(directory: str) -> list[str]:
    """The journal's segment files in C{directory}, oldest first."""
    numbered = []
    for name in os.listdir(directory):
        number = name.removeprefix(SEGMENT_PREFIX)
        if number != name and number.isascii() and number.isdigit():
            numbered.append((int(number), os.path.join(directory, name)))
    return [path for _, path in sorted(numbered)]


def segment_start(path: str) -> int:
    """The revision after which the segment at C{path} begins."""
    return int(os.path.basename(path).removeprefix(SEGMENT_PREFIX))


@attrs.frozen
class SegmentDamage(Exception):
    """
    A segment cannot be read past C{offset}: C{problem} says why.

    @ivar torn: the damage is what a process that died while appending
        leaves (an incomplete last entry), not corruption.
    """

    path: str
    offset: int
    problem: str
    remaining: int
    torn: bool

    def __str__(self) -> str:
        return f"{self.path} at offset {self.offset}: {self.problem}"


def read_segment(path: str) -> Iterator[tuple[int, JournalEntry]]:
    """
    The entries of one segment with their offsets, up to the first damage.

    @raise SegmentDamage: where the segment cannot be read further.
    """
    with open(path, "rb") as f:
        data = f.read()
    offset = 0
    while offset < len(data):
        problem = None
        end = offset + _FRAME.size
        if end > len(data):
            problem = "an incomplete entry header"
        else:
            length, checksum = _FRAME.unpack_from(data, offset)
            end += length
            if length > _MAX_ENTRY or end > len(data):
                problem = "an incomplete entry"
            elif zlib.crc32(data[offset + _FRAME.size : end]) != checksum:
                problem = "an entry whose checksum does not match"
        if problem is None:
            try:
                entry = JournalEntry.decode(data[offset + _FRAME.size : end])
            except (ValueError, struct.error, UnicodeDecodeError) as e:
                problem = f"an entry that cannot be decoded ({e})"
        if problem is not None:
            torn = end >= len(data) or problem.startswith("an incomplete")
            raise SegmentDamage(path, offset, problem, len(data) - offset, torn)
        yield offset, entry
        offset = end
