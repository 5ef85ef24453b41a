"""
The journal's writer: an append-only log of every change to a
L{DictStorage}, written before the change is acknowledged, so that a crash
loses nothing the chosen C{--fsync} policy promised to keep (as Redis's
AOF, etcd's WAL). The entries' format is L{ersid.embedded.journal_format}.

All file I/O happens in the journal's own thread, one batch at a time:
entries appended while a batch is being written go together into the next
(group commit), which is written with one system call. A snapshot starts a
new segment (L{Journal.rotate}), and once it is safely written the older
segments, whose entries it covers, are deleted.
"""

from __future__ import annotations

import errno
import os
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from ersid.embedded.journal_format import segment_path, segments
from ersid.storage import StorageUnavailable

__all__ = ["FSYNC_POLICIES", "Journal"]

FSYNC_POLICIES = ("always", "everysec", "no")

_log = Logger()
_T = TypeVar("_T")


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
        existing = segments(self.directory)
        path = existing[-1] if existing else segment_path(self.directory, revision)
        self._file = open(path, "ab", buffering=0)
        self._path = path
        self._good_size = self._size = self._file.tell()

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
        new_path = segment_path(self.directory, revision)

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
                for path in segments(self.directory):
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
