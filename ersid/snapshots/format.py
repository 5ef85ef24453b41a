"""
The snapshot file: the whole store as one JSON document, laid out a page
to a line so that it can be written and read a page at a time::

    {"ersid_snapshot": 2, "revision": 7, "pages": [
    [["mykey", 7, "text/plain", "myvalue"], ["raw", 3, "x/y", {"base64": "AP8="}],
     ["lock", 6, "text/plain", "me", 1767225600.5]]
    ], "count": 3}

Each entry is C{[key, version, content_type, value]}, and the Unix time it
expires at if it has a time to live; a value that is not UTF-8 is written
as C{{"base64": ...}}. Version 1, which had no expiry, is still read. This module knows the format:
L{Layout} makes the document a piece at a time, L{read_snapshot} reads one;
writing files, and when, is for the others.
"""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Callable
from typing import Any, TypeVar

from ersid.storage import Record

__all__ = ["FORMAT_VERSION", "Layout", "SnapshotError", "encode_value", "read_snapshot"]

FORMAT_VERSION = 2
_READABLE = (1, 2)

_T = TypeVar("_T")


class SnapshotError(Exception):
    """
    A snapshot file exists but cannot be read or makes no sense; the message
    names the file.
    """


def encode_value(value: bytes) -> Any:
    """A value as JSON: its text if it is UTF-8, else C{{"base64": ...}}."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(value).decode("ascii")}


def _encode_entry(key: str, record: Record) -> list[Any]:
    entry = [key, record.version, record.content_type, encode_value(record.value)]
    if record.expires is not None:
        entry.append(record.expires)
    return entry


class Layout:
    """
    The snapshot document a piece at a time: the header, a line per page
    (a comma ending every line but the last), and the footer with the count.
    """

    def __init__(self, revision: int) -> None:
        self.revision = revision
        self.count = 0

    def header(self) -> bytes:
        """The document's start, up to its first page."""
        return b'{"ersid_snapshot": %d, "revision": %d, "pages": [\n' % (
            FORMAT_VERSION,
            self.revision,
        )

    def page(self, items: list[tuple[str, Record]]) -> bytes:
        """A line of C{items}, led by the comma ending the line before."""
        entries = [_encode_entry(key, record) for key, record in items]
        line = json.dumps(entries, ensure_ascii=False).encode("utf-8")
        separator = b",\n" if self.count else b""
        self.count += len(items)
        return separator + line

    def footer(self) -> bytes:
        """The document's end, with the number of entries written."""
        return b'%s], "count": %d}\n' % (b"\n" if self.count else b"", self.count)


def read_snapshot(
    path: str,
    pack: Callable[[int, str, bytes, float | None], _T],
    add_page: Callable[[list[str], list[_T], int], None],
    expiring: Callable[[str, float], None] | None = None,
) -> tuple[int, int] | None:
    """
    Read the snapshot at C{path}, blocking: call it before the reactor runs.
    Each page's entries go to C{add_page} as their keys, their records made
    by C{pack(version, content_type, value, expires)}, and their highest
    version, so that a store can take them in the form it keeps them; the
    keys with an expiry also go to C{expiring}, with it.

    @return: the snapshot's revision and the number of keys it holds, or
        C{None} if there is no file.
    @raise SnapshotError: if the file cannot be read or is not a complete
        Ersid snapshot.
    """
    try:
        snapshot = open(path, "rb")
    except FileNotFoundError:
        return None
    except OSError as e:
        raise SnapshotError(f"cannot read snapshot {path}: {e.strerror}") from None
    with snapshot:
        try:
            header = json.loads(snapshot.readline() + b"]}")
            if header.get("ersid_snapshot") not in _READABLE:
                raise ValueError(
                    f"unknown snapshot format {header.get('ersid_snapshot')!r}"
                )
            entries = 0
            for line in snapshot:
                if line.startswith(b"]"):
                    count = json.loads(b"{" + line[2:])["count"]
                    break
                page = json.loads(line.rstrip(b",\n"))
                add_page(*_decode_page(page, pack, expiring))
                entries += len(page)
            else:
                raise ValueError("the file ends before the snapshot does")
            if count != entries:
                raise ValueError(f"it holds {entries} entries, not {count}")
        except OSError as e:
            raise SnapshotError(f"cannot read snapshot {path}: {e.strerror}") from None
        except (ValueError, TypeError, KeyError, AttributeError, struct.error) as e:
            raise SnapshotError(
                f"snapshot {path} is corrupt: {e}; move it aside to start "
                "empty, or restore it from a backup"
            ) from None
    return header["revision"], count


def _decode_page(
    page: list[list[Any]],
    pack: Callable[[int, str, bytes, float | None], _T],
    expiring: Callable[[str, float], None] | None,
) -> tuple[list[str], list[_T], int]:
    # The hot loop of a restart: a million entries should load in a second.
    keys: list[str] = []
    packed: list[_T] = []
    highest_version = 0
    for key, version, content_type, value, *rest in page:
        if value.__class__ is str:
            data = value.encode("utf-8")
        else:
            data = base64.b64decode(value["base64"], validate=True)
        if key.__class__ is not str or version.__class__ is not int:
            raise ValueError(f"bad entry for key {key!r}")
        expires = None
        if rest:
            (expires,) = rest
            if expires.__class__ not in (int, float):
                raise ValueError(f"bad expiry for key {key!r}")
            expires = float(expires)
            if expiring is not None:
                expiring(key, expires)
        keys.append(key)
        packed.append(pack(version, content_type, data, expires))
        if version > highest_version:
            highest_version = version
    return keys, packed, highest_version
