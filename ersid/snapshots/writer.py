"""
Writing snapshots: L{Snapshotter} writes one at a time, either in a forked
child from the store's copy-on-write image (the dict backend) or
cooperatively, a page per reactor turn with file I/O in threads (any
backend); L{write_snapshot} writes one whole, blocking.
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import attrs
from prometheus_client import Counter, Gauge, Histogram
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorThreads, IReactorTime
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from ersid.snapshots.atomic import AtomicFile
from ersid.snapshots.fork import CAN_FORK, in_child
from ersid.snapshots.format import Layout
from ersid.storage import IStorage, Record

__all__ = ["SnapshotOutcome", "Snapshotter", "write_layout", "write_snapshot"]

_PAGE_SIZE = 1000
_WRITE_CHUNK = 1024 * 1024

_log = Logger()
_T = TypeVar("_T")

# Called with the revision a snapshot is about to cover, it fires once the
# store's changes up to it are durable, with what to call once that
# snapshot is safely written (the journal's rotate).
Covering = Callable[[int], Deferred[Callable[[], None]]]


@attrs.frozen
class SnapshotOutcome:
    """What the last snapshot attempt did, for logs and C{/_health}."""

    path: str
    finished_at: float
    ok: bool
    keys: int = 0
    size: int = 0
    revision: int = 0
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.finished_at)),
            "ok": self.ok,
            "keys": self.keys,
            "bytes": self.size,
            "revision": self.revision,
            "error": self.error,
        }


def write_snapshot(
    path: str, revision: int, items: Iterable[tuple[str, Record]]
) -> tuple[int, int]:
    """
    Write a whole snapshot of C{items} at C{revision} atomically, blocking:
    what a forked child does.

    @return: the number of keys and of bytes written.
    """
    target = AtomicFile(path)
    try:
        written = write_layout(target.write, revision, items)
        target.commit()
    except BaseException:
        target.abort()
        raise
    return written


def write_layout(
    write: Callable[[bytes], Any], revision: int, items: Iterable[tuple[str, Record]]
) -> tuple[int, int]:
    """
    Write the snapshot document of C{items} at C{revision} with C{write}, a
    page at a time, blocking: into a file, or a backup's socket.

    @return: the number of keys and of bytes written.
    """
    layout = Layout(revision)
    size = 0
    for piece in _pieces(layout, items):
        write(piece)
        size += len(piece)
    return layout.count, size


def _pieces(layout: Layout, items: Iterable[tuple[str, Record]]) -> Iterator[bytes]:
    yield layout.header()
    iterator = iter(items)
    while page := list(itertools.islice(iterator, _PAGE_SIZE)):
        yield layout.page(page)
    yield layout.footer()


class Snapshotter:
    """
    Writes snapshots of a store to one path, one at a time, never failing:
    the outcome of each attempt is logged and kept in L{last}.

    @param written_revision: the revision of the snapshot already at
        C{path}, if any: an unchanged store is not written again.
    @param covering: called before each snapshot (see L{Covering}).
    @param fork_with: the store's records as they are at the instant of the
        call, less changes that may still be refused. Given it, a forked
        child writes each snapshot from them (where there is no C{fork},
        they are copied at that instant and written in a thread);
        otherwise serialising happens on the reactor thread a page at a
        time from L{IStorage.scan}, yielding to the reactor between pages,
        and file I/O in the reactor's thread pool.
    """

    def __init__(
        self,
        storage: IStorage,
        path: str,
        reactor: IReactorTime & IReactorThreads,
        written_revision: int | None = None,
        covering: Covering | None = None,
        fork_with: Callable[[], Iterable[tuple[str, Record]]] | None = None,
    ) -> None:
        self.storage = storage
        self.path = path
        self.last: SnapshotOutcome | None = None
        self._covering = covering
        self._fork_with = fork_with
        self._reactor = reactor
        self._written_revision = written_revision
        self._running: Deferred[SnapshotOutcome] | None = None
        self._waiting: list[Deferred[SnapshotOutcome]] = []
        self._child: int | None = None
        self.durations = Histogram(
            "ersid_snapshot_duration_seconds",
            "Seconds a snapshot took to write.",
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=None,
        )
        self.outcomes = Counter(
            "ersid_snapshots",
            "Snapshots written, by outcome.",
            ["outcome"],
            registry=None,
        )
        self.size = Gauge(
            "ersid_snapshot_size_bytes",
            "Bytes of the last snapshot written.",
            registry=None,
        )
        self.last_success = Gauge(
            "ersid_snapshot_last_success_timestamp_seconds",
            "Unix time the last snapshot was written.",
            registry=None,
        )
        self.last_failure = Gauge(
            "ersid_snapshot_last_failure_timestamp_seconds",
            "Unix time a snapshot last failed (0: never).",
            registry=None,
        )
        self.collectors = (
            self.durations,
            self.outcomes,
            self.size,
            self.last_success,
            self.last_failure,
        )
        for outcome in ("written", "failed"):
            self.outcomes.labels(outcome)  # shown as 0 until one happens

    def health(self) -> dict[str, Any]:
        """The last snapshot, for C{/_health}."""
        return {"snapshot": self.last.as_json() if self.last else None}

    def snapshot(self, force: bool = False) -> Deferred[SnapshotOutcome | None]:
        """
        Write a snapshot unless nothing changed since the last one written
        (or C{force}). If one is being written, wait for it, then for one
        more if writes came in meanwhile (one for every caller that waited),
        so that what is returned covers the store as it was when asked.

        @return: Deferred firing with the L{SnapshotOutcome}, or C{None} if
            nothing needed writing; it never fails.
        """
        if self._running is not None:
            waiter: Deferred[SnapshotOutcome] = Deferred()
            self._waiting.append(waiter)
            return waiter
        running = self._running = Deferred.fromCoroutine(self._attempt(force))
        return running.addBoth(self._finished)

    def _finished(self, outcome: SnapshotOutcome | None) -> SnapshotOutcome | None:
        self._running = None
        waiting, self._waiting = self._waiting, []
        if waiting:

            def deliver(newer: SnapshotOutcome | None) -> None:
                for waiter in waiting:
                    waiter.callback(newer or outcome)

            self.snapshot().addCallback(deliver)
        return outcome

    async def _attempt(self, force: bool) -> SnapshotOutcome | None:
        try:
            keys, revision = await self.storage.stats()
            if not force and revision == self._written_revision:
                return None
            started = self._reactor.seconds()
            covered = await self._covering(revision) if self._covering else None
            if self._fork_with is not None and CAN_FORK:
                keys, size = await self._write_in_child(revision)
            elif self._fork_with is not None:
                image = list(self._fork_with())
                keys, size = await self._in_thread(
                    write_snapshot, self.path, revision, image
                )
            else:
                keys, size = await self._write(revision)
        except Exception as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            _log.error(
                "Snapshot to {path} failed: {reason}", path=self.path, reason=reason
            )
            self.last = SnapshotOutcome(
                self.path, self._reactor.seconds(), ok=False, error=reason
            )
            self.outcomes.labels("failed").inc()
            self.last_failure.set(self.last.finished_at)
            return self.last
        self._written_revision = revision
        if covered is not None:
            covered()
        _log.info(
            "Dumping {keys} keys in {size} bytes to {path}",
            keys=keys,
            size=size,
            path=self.path,
        )
        self.last = SnapshotOutcome(
            self.path, self._reactor.seconds(), True, keys, size, revision
        )
        self.outcomes.labels("written").inc()
        self.durations.observe(self.last.finished_at - started)
        self.size.set(size)
        self.last_success.set(self.last.finished_at)
        return self.last

    def _in_thread(self, f: Callable[..., _T], *args: Any) -> Deferred[_T]:
        pool = self._reactor.getThreadPool()
        return deferToThreadPool(self._reactor, pool, f, *args)

    async def _write_in_child(self, revision: int) -> tuple[int, int]:
        """Let a forked child write the store as it is at this instant."""
        assert self._fork_with is not None
        # Taken in the same reactor turn as the fork: nothing can change
        # between the two.
        items = self._fork_with()

        def work() -> dict[str, Any]:
            keys, size = write_snapshot(self.path, revision, items)
            return {"keys": keys, "bytes": size}

        self._child, writing = in_child(self._reactor, work)
        try:
            outcome = await writing
        finally:
            self._child = None
        return outcome["keys"], outcome["bytes"]

    def abandon(self) -> None:
        """
        Kill the forked child writing a snapshot, if one is: that snapshot
        fails. For a daemon stopping, which must not wait on a child that
        is stuck (a hung disk, a stopped process).
        """
        if self._child is not None:
            try:
                os.kill(self._child, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def abandon_after(self, seconds: float) -> IDelayedCall:
        """L{abandon} in C{seconds}, unless the call is cancelled."""
        return self._reactor.callLater(seconds, self.abandon)

    async def _write(self, revision: int) -> tuple[int, int]:
        """Write a page per reactor turn, and the file in the thread pool."""
        layout = Layout(revision)
        target = await self._in_thread(AtomicFile, self.path)
        try:
            pending = [layout.header()]
            size = 0
            page = await self.storage.scan(None, _PAGE_SIZE)
            while True:
                if page.items:
                    pending.append(layout.page(page.items))
                if page.cursor is None:
                    break
                if sum(map(len, pending)) >= _WRITE_CHUNK:
                    size += await self._in_thread(target.write, b"".join(pending))
                    pending = []
                else:
                    await deferLater(self._reactor, 0, lambda: None)
                page = await self.storage.scan(page.cursor, _PAGE_SIZE)
            pending.append(layout.footer())
            size += await self._in_thread(target.write, b"".join(pending))
            await self._in_thread(target.commit)
        except BaseException:
            await self._in_thread(target.abort)
            raise
        return layout.count, size
