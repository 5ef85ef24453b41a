"""
The journal: an append-only log of every change to a L{DictStorage}, written
before the change is acknowledged, so that a crash loses nothing the chosen
C{--fsync} policy promised to keep (as Redis's AOF, etcd's WAL).

The journal is a series of segment files C{journal.<revision>} in the data
directory. Each entry is framed as C{length, crc32, body}; the body holds
the operation, revision, key, content type and value. A snapshot starts a new
segment, and once the snapshot is safely written the older segments, whose
entries it covers, are deleted.

All file I/O happens in the journal's own thread, one batch at a time:
entries appended while a batch is being written go together into the next
(group commit), which is written with one system call.
"""

from __future__ import annotations

import errno
import os
import queue
import struct
import sys
import threading
import zlib
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from ersid.storage import Record, StorageUnavailable

__all__ = [
    "FSYNC_POLICIES",
    "Journal",
    "JournalCorrupt",
    "JournalEntry",
    "encode_delete",
    "encode_set",
    "read_journal",
]

FSYNC_POLICIES = ("always", "everysec", "no")

_FRAME = struct.Struct(">II")
_FIXED = struct.Struct(">BQHH")
_SET, _DELETE = 1, 2
_PREFIX = "journal."
_MAX_ENTRY = 1 << 31

_log = Logger()
_T = TypeVar("_T")


class JournalCorrupt(Exception):
    """
    A journal is damaged before its end; starting would silently drop the
    entries after the damage, so Ersid refuses. The message says what to do.
    """


def _framed(body: bytes) -> bytes:
    return _FRAME.pack(len(body), zlib.crc32(body)) + body


def encode_set(revision: int, key: str, content_type: str, value: bytes) -> bytes:
    """
    The journal entry of a set, framed, made straight from its parts: every
    write pays for this, so it builds no L{Record} or L{JournalEntry}.
    """
    key_bytes = key.encode("utf-8")
    type_bytes = content_type.encode("utf-8")
    fixed = _FIXED.pack(_SET, revision, len(key_bytes), len(type_bytes))
    return _framed(b"".join([fixed, key_bytes, type_bytes, value]))


def encode_delete(revision: int, key: str) -> bytes:
    """The journal entry of a delete, framed."""
    key_bytes = key.encode("utf-8")
    return _framed(_FIXED.pack(_DELETE, revision, len(key_bytes), 0) + key_bytes)


@attrs.frozen
class JournalEntry:
    """One change: a set (with its record) or a delete (record C{None})."""

    revision: int
    key: str
    record: Record | None

    def encode(self) -> bytes:
        if self.record is None:
            return encode_delete(self.revision, self.key)
        record = self.record
        return encode_set(self.revision, self.key, record.content_type, record.value)

    @classmethod
    def decode(cls, body: bytes) -> JournalEntry:
        operation, revision, key_length, type_length = _FIXED.unpack_from(body)
        start = _FIXED.size
        key = body[start : start + key_length].decode("utf-8")
        if operation == _DELETE:
            return cls(revision, key, None)
        if operation != _SET:
            raise ValueError(f"unknown operation {operation}")
        start += key_length
        content_type = body[start : start + type_length].decode("utf-8")
        value = body[start + type_length :]
        return cls(revision, key, Record(value, content_type, revision))


def _segments(directory: str) -> list[str]:
    """The journal's segment files in C{directory}, oldest first."""
    numbered = []
    for name in os.listdir(directory):
        number = name.removeprefix(_PREFIX)
        if number != name and number.isascii() and number.isdigit():
            numbered.append((int(number), os.path.join(directory, name)))
    return [path for _, path in sorted(numbered)]


def _entries(path: str, is_last: bool) -> Iterator[tuple[int, JournalEntry]]:
    """
    The entries of one segment with their offsets. A torn entry at the end
    of the last segment (the process died while writing it) is cut off with
    a warning; damage anywhere else raises L{JournalCorrupt}.
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
            if is_last and (end >= len(data) or problem.startswith("an incomplete")):
                _log.warn(
                    "Dropping a torn last entry of {path} at offset {offset} "
                    "({problem}): the process stopped while writing it",
                    path=path,
                    offset=offset,
                    problem=problem,
                )
                with open(path, "r+b") as f:
                    f.truncate(offset)
                    os.fsync(f.fileno())
                return
            raise JournalCorrupt(
                f"journal {path} is damaged at offset {offset}: {problem}, with "
                f"{len(data) - offset} bytes after it. Ersid will not start and "
                "silently lose the entries after the damage. Inspect it with: "
                f"python -m ersid.journal {path}; to keep only the entries before "
                f"the damage, back the file up and run: truncate -s {offset} {path}"
            )
        yield offset, entry
        offset = end


def read_journal(directory: str, after: int) -> Iterator[JournalEntry]:
    """
    The entries of every segment in C{directory} newer than revision
    C{after}, in order. Blocking: call it before the reactor runs.

    @raise JournalCorrupt: if a segment is damaged other than at its end.
    """
    segments = _segments(directory)
    for number, path in enumerate(segments):
        for _, entry in _entries(path, is_last=number == len(segments) - 1):
            if entry.revision > after:
                yield entry


@attrs.define
class _Pending:
    data: bytes
    undo: Callable[[], None]
    done: Deferred[Any]
    result: Any


# What the journal's thread is handed: entries to write, and work on its
# files (rotation, compaction) to do in order with them.
_Batch = list[_Pending | Callable[[], None]]


class Journal:
    """
    Appends entries to the current segment in a thread of its own, batch
    after batch, and fires each entry's Deferred once its batch is
    written (and, with C{fsync="always"}, on disk).

    When a batch cannot be written (disk full, I/O error), the file is cut
    back to its last good entry, the batch's changes are undone in memory,
    and their writes fail with L{StorageUnavailable}; later writes try again,
    so the journal recovers by itself when the disk has room.
    """

    def __init__(self, directory: str, revision: int, fsync: str, reactor: Any) -> None:
        assert fsync in FSYNC_POLICIES
        self.directory = directory
        self.fsync = fsync
        self.error: str | None = None
        self._reactor = reactor
        self._queue: _Batch = []
        self._busy = False
        self._unsynced = False
        self._file: Any = None
        self._good_size = self._size = 0
        self._stop_waiters: list[Deferred[None]] | None = None
        self._batches: queue.SimpleQueue[_Batch | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._ticker = LoopingCall(self._sync_every_second)
        self._ticker.clock = reactor
        self._open(revision)

    def _open(self, revision: int) -> None:
        """Continue the newest segment, or start one at C{revision}."""
        segments = _segments(self.directory)
        path = segments[-1] if segments else self._segment_path(revision)
        self._file = open(path, "ab", buffering=0)
        self._path = path
        self._good_size = self._size = self._file.tell()

    def _segment_path(self, revision: int) -> str:
        return os.path.join(self.directory, f"{_PREFIX}{revision:020d}")

    def start(self) -> None:
        if self.fsync == "everysec":
            self._ticker.start(1, now=False)

    def stop(self) -> Deferred[None]:
        """Write and sync what is queued, then close the file."""
        stopped: Deferred[None] = Deferred()
        if self._stop_waiters is None:
            self._stop_waiters = [stopped]
            if self._ticker.running:
                self._ticker.stop()
            self._queue.append(self._sync)
            self._kick()
        elif self._file.closed:
            stopped.callback(None)
        else:
            self._stop_waiters.append(stopped)
        return stopped

    def append(
        self, entry: bytes, undo: Callable[[], None], result: _T
    ) -> Deferred[_T]:
        """
        Queue C{entry} (encoded, see L{encode_set}), whose change is already
        made in memory, and fire with C{result} once it is written; C{undo}
        reverts the change if the entry cannot be written.
        """
        done: Deferred[_T] = Deferred()
        self._queue.append(_Pending(entry, undo, done, result))
        self._kick()
        return done

    def rotate(self, revision: int) -> Callable[[], None]:
        """
        Start a new segment for the changes after C{revision}, which a
        snapshot is about to cover. Return what to call once the snapshot
        is safely written: it deletes the older segments.
        """
        new_path = self._segment_path(revision)

        def switch() -> None:
            self._sync()
            self._file.close()
            self._file = open(new_path, "ab", buffering=0)
            self._path = new_path
            self._good_size = self._size = self._file.tell()

        self._queue.append(switch)
        self._kick()

        def compact() -> None:
            def delete_older() -> None:
                for path in _segments(self.directory):
                    if path < new_path:
                        os.unlink(path)

            self._queue.append(delete_older)
            self._kick()

        return compact

    def _sync_every_second(self) -> None:
        """
        With everysec, fsync beside the writes rather than between them (as
        Redis does): a write need not wait for the disk to catch up.
        """
        if not self._unsynced:
            return
        self._unsynced = False
        try:
            descriptor = self._file.fileno()
        except ValueError:
            return  # closed by a rotation this very moment, which syncs it
        pool = self._reactor.getThreadPool()
        synced = deferToThreadPool(self._reactor, pool, os.fsync, descriptor)
        synced.addErrback(self._sync_failed)

    def _sync_failed(self, failure: Failure) -> None:
        failure.trap(OSError)
        if failure.value.errno == errno.EBADF:
            return  # the segment was closed by a rotation, which syncs it
        _log.error(
            "Journal {path} cannot be synced to disk: {reason}",
            path=self._path,
            reason=failure.value.strerror,
        )
        self.error = failure.value.strerror

    def _sync(self) -> None:
        os.fsync(self._file.fileno())
        self._unsynced = False

    def _kick(self) -> None:
        if self._busy or not self._queue:
            return
        self._busy = True
        batch, self._queue = self._queue, []
        if self._writer is None:
            self._writer = threading.Thread(
                target=self._write_batches, name="ersid-journal", daemon=True
            )
            self._writer.start()
        self._batches.put(batch)

    def _write_batches(self) -> None:
        """
        The journal's thread: write each batch handed over, and hand the
        outcome back to the reactor. One thread of its own, rather than the
        reactor's pool, halves the cost of the round trip (a pool dispatches
        through several layers of Python), and the entries must be written
        one batch after the other anyway.
        """
        while True:
            batch = self._batches.get()
            if batch is None:
                return
            try:
                outcome = self._write(batch)
            except BaseException:
                outcome = Failure()
            self._reactor.callFromThread(self._written, outcome, batch)

    def _write(self, batch: _Batch) -> str | None:
        """In the thread: write the batch; return why it failed, if it did."""
        try:
            chunk: list[bytes] = []
            for item in batch:
                if isinstance(item, _Pending):
                    chunk.append(item.data)
                else:
                    self._append(chunk)
                    item()
            self._append(chunk)
            if self.fsync == "always":
                os.fsync(self._file.fileno())
            else:
                self._unsynced = True
            self._good_size = self._size
            return None
        except OSError as e:
            self._cut_back()
            return e.strerror or errno.errorcode.get(e.errno or 0, str(e))

    def _append(self, chunk: list[bytes]) -> None:
        """
        Write the entries of C{chunk} together (one system call, unless the
        system takes part of them), and empty it.
        """
        data = memoryview(b"".join(chunk))
        chunk.clear()
        self._size += len(data)
        while data:
            data = data[self._file.write(data) :]

    def _cut_back(self) -> None:
        """Drop whatever part of a failed batch reached the file."""
        try:
            self._file.close()
        except OSError:
            pass
        try:
            with open(self._path, "r+b") as f:
                f.truncate(self._good_size)
        except OSError:
            pass
        self._file = open(self._path, "ab", buffering=0)
        self._size = self._good_size

    def _written(self, outcome: Any, batch: _Batch) -> None:
        self._busy = False
        entries = [item for item in batch if isinstance(item, _Pending)]
        if isinstance(outcome, Failure):
            _log.failure("Journal {path} failed", outcome, path=self._path)
            outcome = outcome.getErrorMessage()
        if outcome is None:
            if self.error is not None and entries:
                _log.info("Journal {path} writable again", path=self._path)
                self.error = None
            for pending in entries:
                pending.done.callback(pending.result)
        else:
            self._refuse(entries, outcome)
        # The callbacks above may already have started the next batch.
        if self._busy:
            return
        if self._queue:
            self._kick()
        elif self._stop_waiters is not None and not self._file.closed:
            self._file.close()
            self._batches.put(None)  # the thread ends; a later write starts another
            self._writer = None
            for waiter in self._stop_waiters:
                waiter.callback(None)

    def _refuse(self, entries: list[_Pending], reason: str) -> None:
        """
        Undo every change not yet in the journal, newest first (the failed
        batch and all queued after it, which may build on it), and fail
        their writes.
        """
        if self.error != reason:
            _log.error(
                "Journal {path} cannot be written: {reason}; writes are refused "
                "until it can",
                path=self._path,
                reason=reason,
            )
        self.error = reason
        later = [item for item in self._queue if isinstance(item, _Pending)]
        self._queue = [item for item in self._queue if not isinstance(item, _Pending)]
        failed = entries + later
        for pending in reversed(failed):
            pending.undo()
        for pending in failed:
            pending.done.errback(StorageUnavailable(f"journal {self._path}: {reason}"))


def _inspect(path: str) -> int:
    """List a segment's entries, stopping at the first damage."""
    count = 0
    try:
        for offset, entry in _entries(path, is_last=False):
            kind = "delete" if entry.record is None else "set"
            print(f"{offset:>12} revision {entry.revision:>10} {kind:6} {entry.key!r}")
            count += 1
    except JournalCorrupt as e:
        print(e, file=sys.stderr)
        return 1
    print(f"{count} entries, intact", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(_inspect(sys.argv[1]))
