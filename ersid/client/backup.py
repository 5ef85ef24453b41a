"""
Backups as a client takes them (C{ersid backup FILE}): C{GET /_snapshot}
streamed into a temporary file (mode 0600) beside C{FILE}, checked to be
a whole snapshot, its entries counted against the count that ends it,
then synced and renamed over C{FILE}. So C{FILE} is the old file or the
whole new one, never part of one, and nothing is left behind on failure.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import attrs
import treq
from treq.client import HTTPClient

from ersid.client.errors import (
    UNREACHABLE,
    KeyNotFound,
    RequestRejected,
    ServerUnavailable,
    refusal,
    why,
)

__all__ = ["Backup", "SnapshotCheck", "save_snapshot"]

# The snapshot formats this client can check, as the daemon reads them.
_FORMATS = (1, 2)


@attrs.frozen
class Backup:
    """A backup written: where, the revision it holds, its keys and bytes."""

    path: str
    revision: int
    keys: int
    size: int


class SnapshotCheck:
    """
    A snapshot document checked as it arrives, a line at a time: its
    header, a JSON array of entries to a line, and the count that ends it,
    which must be the number of entries received.
    """

    def __init__(self) -> None:
        self.revision: int | None = None
        self.entries = 0
        self.count: int | None = None
        self._partial: list[bytes] = []

    def feed(self, data: bytes) -> None:
        """Check C{data}, the next bytes of the document."""
        if b"\n" not in data:
            self._partial.append(data)
            return
        first, *lines, last = data.split(b"\n")
        self._line(b"".join([*self._partial, first]))
        for line in lines:
            self._line(line)
        self._partial = [last] if last else []

    def _line(self, line: bytes) -> None:
        try:
            self._check(line)
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"it is not an Ersid snapshot ({e!r})") from None

    def _check(self, line: bytes) -> None:
        if self.count is not None:
            raise ValueError("it goes on after its end")
        if self.revision is None:
            header = json.loads(line + b"]}")
            if header.get("ersid_snapshot") not in _FORMATS:
                raise ValueError("it is not an Ersid snapshot")
            self.revision = int(header["revision"])
        elif line.startswith(b"]"):
            self.count = int(json.loads(b"{" + line[2:])["count"])
        else:
            page = json.loads(line.rstrip(b","))
            if not isinstance(page, list):
                raise ValueError("a page is not a list of entries")
            self.entries += len(page)

    def finish(self) -> tuple[int, int]:
        """
        @return: the snapshot's revision and number of keys.
        @raise ValueError: unless the document was whole.
        """
        if self.count is None or self._partial or self.revision is None:
            raise ValueError(f"it ends after {self.entries} entries, before its end")
        if self.count != self.entries:
            raise ValueError(f"it holds {self.entries} entries, not {self.count}")
        return self.revision, self.count


async def save_snapshot(http: HTTPClient, url: str, path: str) -> Backup:
    """
    Save the snapshot at C{url} to C{path}, atomically.

    @raise ServerUnavailable: if it could not be had whole.
    @raise ClientError: for the server's refusals.
    @raise OSError: if the file cannot be written.
    """
    directory = os.path.dirname(os.path.abspath(path))
    descriptor, temporary = tempfile.mkstemp(
        dir=directory, prefix=f".{os.path.basename(path)}.tmp-"
    )
    try:
        with os.fdopen(descriptor, "wb") as out:
            check = SnapshotCheck()
            size = 0

            def take(data: bytes) -> None:
                nonlocal size
                out.write(data)
                size += len(data)
                check.feed(data)

            try:
                # Unbuffered: treq would otherwise keep the whole body.
                response = await http.get(url, unbuffered=True)
            except UNREACHABLE as e:
                raise ServerUnavailable(f"cannot reach {url}: {why(e)}") from None
            try:
                if response.code != 200:
                    error = refusal(response.code, await treq.content(response))
                    if isinstance(error, KeyNotFound):
                        # No such endpoint: a server that takes no backups.
                        error = RequestRejected(str(error))
                    raise error
                await treq.collect(response, take)
                revision, keys = _whole(check, response)
            except ValueError as e:
                raise ServerUnavailable(
                    f"the backup is not a whole snapshot: {e}"
                ) from None
            except UNREACHABLE as e:
                raise ServerUnavailable(f"the backup was cut short: {why(e)}") from None
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    _sync_directory(directory)
    return Backup(path, revision, keys, size)


def _whole(check: SnapshotCheck, response: Any) -> tuple[int, int]:
    """
    The revision and keys of a checked snapshot.

    @raise ValueError: unless it is whole and its revision the header's.
    """
    revision, keys = check.finish()
    said = response.headers.getRawHeaders("ersid-revision", [None])[0]
    if said is not None and said != str(revision):
        raise ValueError(f"it holds revision {revision}, but its header says {said}")
    return revision, keys


def _sync_directory(path: str) -> None:
    """Make the new name durable."""
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
