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
from prometheus_client import Counter, Histogram
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from ersid.embedded.journal_format import segment_path, segment_start, segments
from ersid.files import open_private, sync_directory
from ersid.storage import StorageUnavailable

__all__ = ["FSYNC_POLICIES", "Journal"]

FSYNC_POLICIES = ("always", "everysec", "no")

_log = Logger()
_T = TypeVar("_T")


@attrs.define
class _Pending:
    """An entry to write, whose change is already made in memory."""

    data: bytes
    undo: Callable[[], None]
    done: Deferred[Any]
    result: Any


@attrs.define
class _Task:
    """Work on the journal's files, done in the thread in order with the entries."""

    work: Callable[[], Any]
    done: Deferred[Any]


# What the journal's thread is handed: entries to write, or one task.
_Batch = list[_Pending] | list[_Task]


def _reason(error: OSError) -> str:
    return error.strerror or errno.errorcode.get(error.errno or 0, str(error))


class Journal:
    """
    Appends entries to the current segment in a thread of its own, batch
    after batch, and fires each entry's Deferred once its batch is
    written (and, with C{fsync="always"}, on disk).

    When a batch cannot be written (disk full, I/O error), the file is cut
    back to its last good entry, the batch's changes are undone in memory,
    and their writes fail with L{StorageUnavailable}; later writes try again,
    so the journal recovers by itself when the disk has room. A segment
    that cannot be started (no file descriptor left) leaves the journal
    writing to the one it has.
    """

    def __init__(self, directory: str, revision: int, fsync: str, reactor: Any) -> None:
        assert fsync in FSYNC_POLICIES
        self.directory = directory
        self.fsync = fsync
        self.error: str | None = None
        self._reactor = reactor
        self._queue: list[_Pending | _Task] = []
        self._tasks_queued = 0
        self._busy = False
        self._unsynced = False
        self._closed = False
        self._stopping: Deferred[None] | None = None
        self._settled: Callable[[list[Any], bool], None] = lambda undos, written: None
        self._batches: queue.SimpleQueue[_Batch | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._ticker = LoopingCall(self._sync_every_second)
        self._ticker.clock = reactor
        # The descriptor of the segment is swapped by a rotation in the
        # thread while the reactor may take a copy to sync: the two hold
        # this lock, so that neither sees a number just closed.
        self._swapping = threading.Lock()
        existing = segments(directory)
        self._path = existing[-1] if existing else segment_path(directory, revision)
        self._descriptor = open_private(self._path, os.O_WRONLY | os.O_APPEND)
        if not existing:
            sync_directory(directory)
        self._good_size = self._size = os.fstat(self._descriptor).st_size
        self.appends = Counter(
            "ersid_journal_appends", "Entries written to the journal.", registry=None
        )
        self.fsyncs = Counter(
            "ersid_journal_fsyncs", "Flushes of the journal to disk.", registry=None
        )
        self.fsync_seconds = Histogram(
            "ersid_journal_fsync_duration_seconds",
            "Seconds a flush of the journal to disk took.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
            registry=None,
        )
        self.collectors = (self.appends, self.fsyncs, self.fsync_seconds)

    def _fsync(self, descriptor: int) -> None:
        """In a thread: flush C{descriptor} to disk, counted and timed."""
        with self.fsync_seconds.time():
            os.fsync(descriptor)
        self.fsyncs.inc()

    def _sync_and_close(self, descriptor: int) -> None:
        try:
            self._fsync(descriptor)
        finally:
            os.close(descriptor)

    def start(self) -> None:
        if self.fsync == "everysec":
            self._ticker.start(1, now=False)

    def stop(self) -> Deferred[None]:
        """
        Write and sync what is queued, then close the file. It always
        completes: a file that cannot be synced is closed all the same, and
        the failure logged.
        """
        if self._stopping is None:
            if self._ticker.running:
                self._ticker.stop()
            self._stopping = self._task(self._close)
            self._stopping.addErrback(
                lambda failure: _log.failure(
                    "Journal {path} failed to close", failure, path=self._path
                )
            )
        stopped: Deferred[None] = Deferred()
        self._stopping.addCallback(stopped.callback)
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

    def when_settled(self, settled: Callable[[list[Any], bool], None]) -> None:
        """
        Call C{settled} with the C{undo} of every entry once it is written,
        or refused and undone, and which of the two: the store's changes no
        longer waiting.
        """
        self._settled = settled

    def rotate(self, revision: int) -> Deferred[Callable[[], None]]:
        """
        Start a new segment for the changes after C{revision}, which a
        snapshot is about to cover. Fire once every change up to it is
        written (or refused and undone), with what to call once the
        snapshot is safely written: it deletes the older segments.
        """
        new_path = segment_path(self.directory, revision)

        def switch() -> Callable[[], None]:
            if self._closed:
                raise OSError(errno.EBADF, "the journal is closed")
            self._cut_back()  # if an earlier cut failed: it must not last
            if self._size == 0 and self._path != new_path:
                # Nothing in it: it becomes the new segment, rather than
                # snapshots that keep failing leaving an empty file each.
                os.rename(self._path, new_path)
                sync_directory(self.directory)
                self._path = new_path
                return compact
            descriptor = open_private(new_path, os.O_WRONLY | os.O_APPEND)
            try:
                sync_directory(self.directory)
                self._fsync(self._descriptor)
            except OSError:
                os.close(descriptor)
                raise
            with self._swapping:
                os.close(self._descriptor)
                self._descriptor, self._path = descriptor, new_path
            self._good_size = self._size = os.fstat(descriptor).st_size
            self._unsynced = False
            return compact

        def compact() -> None:
            def delete_older() -> None:
                for path in segments(self.directory):
                    if segment_start(path) < revision:
                        os.unlink(path)

            self._task(delete_older).addErrback(
                lambda failure: _log.failure("Journal compaction failed", failure)
            )

        return self._task(switch)

    def _task(self, work: Callable[[], _T]) -> Deferred[_T]:
        """Queue C{work} for the thread, in order with the entries."""
        done: Deferred[_T] = Deferred()
        self._queue.append(_Task(work, done))
        self._tasks_queued += 1
        self._kick()
        return done

    def _sync_every_second(self) -> None:
        """
        With everysec, fsync beside the writes rather than between them (as
        Redis does): a write need not wait for the disk to catch up.
        """
        if not self._unsynced:
            return
        self._unsynced = False
        with self._swapping:
            if self._closed:
                return
            # A copy of its own: a rotation may close the journal's meanwhile.
            copy = os.dup(self._descriptor)
        pool = self._reactor.getThreadPool()
        synced = deferToThreadPool(self._reactor, pool, self._sync_and_close, copy)
        synced.addErrback(self._sync_failed)

    def _sync_failed(self, failure: Failure) -> None:
        failure.trap(OSError)
        _log.error(
            "Journal {path} cannot be synced to disk: {reason}",
            path=self._path,
            reason=failure.value.strerror,
        )
        self.error = failure.value.strerror

    def _close(self) -> None:
        """In the thread: sync and close the segment; later entries are refused."""
        with self._swapping:
            self._closed = True
        try:
            self._cut_back()  # refused entries must not outlive the daemon
            self._fsync(self._descriptor)
        finally:
            os.close(self._descriptor)

    def _kick(self) -> None:
        """Hand the thread the next batch, unless it is busy with one."""
        if self._busy or not self._queue:
            return
        if not self._tasks_queued:
            batch: _Batch = self._queue
            self._queue = []
        elif isinstance(self._queue[0], _Task):
            batch = [self._queue.pop(0)]
            self._tasks_queued -= 1
        else:
            entries = 0
            while isinstance(self._queue[entries], _Pending):
                entries += 1
            batch, self._queue = self._queue[:entries], self._queue[entries:]
        self._busy = True
        if self._writer is None:
            self._writer = threading.Thread(
                target=self._run_batches, name="ersid-journal", daemon=True
            )
            self._writer.start()
        self._batches.put(batch)

    def _run_batches(self) -> None:
        """
        The journal's thread: do each batch handed over, and hand the
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
                if isinstance(batch[0], _Task):
                    outcome = batch[0].work()
                else:
                    outcome = self._write(batch)
            except BaseException:
                outcome = Failure()
            self._reactor.callFromThread(self._done, outcome, batch)

    def _write(self, batch: list[_Pending]) -> str | None:
        """In the thread: write the batch; return why it failed, if it did."""
        if self._closed:
            return "the journal is closed"
        try:
            self._cut_back()  # if an earlier cut failed
            data = memoryview(b"".join([item.data for item in batch]))
            self._size += len(data)
            while data:
                data = data[os.write(self._descriptor, data) :]
            if self.fsync == "always":
                self._fsync(self._descriptor)
            else:
                self._unsynced = True
            self.appends.inc(len(batch))
            self._good_size = self._size
            return None
        except OSError as e:
            try:
                self._cut_back()
            except OSError:
                pass  # tried again before the next batch
            return _reason(e)

    def _cut_back(self) -> None:
        """Drop whatever part of a failed batch reached the file, if any did."""
        if self._size != self._good_size:
            os.ftruncate(self._descriptor, self._good_size)
            self._size = self._good_size

    def _done(self, outcome: Any, batch: _Batch) -> None:
        self._busy = False
        if isinstance(batch[0], _Task):
            self._task_done(batch[0], outcome)
        else:
            self._written(outcome, batch)  # type: ignore[arg-type]
        # The callbacks above may already have started the next batch.
        self._kick()

    def _task_done(self, task: _Task, outcome: Any) -> None:
        if task.work == self._close:
            self._batches.put(None)  # the thread ends
            self._writer = None
        if isinstance(outcome, Failure):
            task.done.errback(outcome)
        else:
            task.done.callback(outcome)

    def _written(self, outcome: Any, entries: list[_Pending]) -> None:
        if isinstance(outcome, Failure):
            _log.failure("Journal {path} failed", outcome, path=self._path)
            outcome = outcome.getErrorMessage()
        if outcome is None:
            if self.error is not None:
                _log.info("Journal {path} writable again", path=self._path)
                self.error = None
            self._settled([pending.undo for pending in entries], True)
            for pending in entries:
                pending.done.callback(pending.result)
        else:
            self._refuse(entries, outcome)

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
        self._queue = [item for item in self._queue if isinstance(item, _Task)]
        failed = entries + later
        for pending in reversed(failed):
            pending.undo()
        self._settled([pending.undo for pending in failed], False)
        for pending in failed:
            pending.done.errback(StorageUnavailable(f"journal {self._path}: {reason}"))
