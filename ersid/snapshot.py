"""
Snapshots: the whole store as one JSON document, written atomically and
cooperatively, and loaded at startup so that a restart keeps the data.

The document is one JSON object laid out a page to a line, so that it can
be written and read a page at a time::

    {"ersid_snapshot": 1, "revision": 7, "pages": [
    [["mykey", 7, "text/plain", "myvalue"], ["raw", 3, "x/y", {"base64": "AP8="}]]
    ], "count": 2}

Each entry is C{[key, version, content_type, value]}; a value that is not
UTF-8 is written as C{{"base64": ...}}.
"""

from __future__ import annotations

import base64
import ctypes
import itertools
import json
import os
import signal
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from typing import Any, NoReturn, TypeVar

import attrs
from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from ersid._records import PackedRecords, pack_record
from ersid.journal import Journal
from ersid.storage import IStorage, Record

__all__ = [
    "FORMAT_VERSION",
    "SnapshotError",
    "SnapshotOutcome",
    "SnapshotService",
    "Snapshotter",
    "load_snapshot",
    "remove_stale_temporaries",
    "write_snapshot",
]

FORMAT_VERSION = 1
_PAGE_SIZE = 1000
_WRITE_CHUNK = 1024 * 1024
_TEMP_PREFIX = ".ersid-snapshot-"
_PR_SET_PDEATHSIG = 1
_CAN_FORK = sys.platform == "linux"

_log = Logger()
_T = TypeVar("_T")


class SnapshotError(Exception):
    """
    A snapshot file exists but cannot be read or makes no sense; the message
    names the file.
    """


@attrs.frozen
class SnapshotOutcome:
    """
    What the last snapshot attempt did, for logs and C{/_health}.
    """

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


def _encode_entry(key: str, record: Record) -> list[Any]:
    try:
        value: Any = record.value.decode("utf-8")
    except UnicodeDecodeError:
        value = {"base64": base64.b64encode(record.value).decode("ascii")}
    return [key, record.version, record.content_type, value]


class _AtomicFile:
    """
    A file written under a temporary name in its final directory and renamed
    over the final name only once it is safely on disk. Blocking: call its
    methods from a thread.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.directory = os.path.dirname(os.path.abspath(path))
        fd, self.temporary = tempfile.mkstemp(dir=self.directory, prefix=_TEMP_PREFIX)
        self._file = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> int:
        return self._file.write(data)

    def commit(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.temporary, self.path)
        directory = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def abort(self) -> None:
        self._file.close()
        try:
            os.unlink(self.temporary)
        except FileNotFoundError:
            pass


class _Layout:
    """
    The snapshot document a piece at a time: the header, a line per page
    (a comma ending every line but the last), and the footer with the count.
    """

    def __init__(self, revision: int) -> None:
        self.revision = revision
        self.count = 0

    def header(self) -> bytes:
        return b'{"ersid_snapshot": %d, "revision": %d, "pages": [\n' % (
            FORMAT_VERSION,
            self.revision,
        )

    def page(self, items: list[tuple[str, Record]]) -> bytes:
        entries = [_encode_entry(key, record) for key, record in items]
        line = json.dumps(entries, ensure_ascii=False).encode("utf-8")
        separator = b",\n" if self.count else b""
        self.count += len(items)
        return separator + line

    def footer(self) -> bytes:
        return b'%s], "count": %d}\n' % (b"\n" if self.count else b"", self.count)


def write_snapshot(
    path: str, revision: int, items: Iterable[tuple[str, Record]]
) -> tuple[int, int]:
    """
    Write a whole snapshot of C{items} at C{revision} atomically, blocking:
    what a forked child does.

    @return: the number of keys and of bytes written.
    """
    layout = _Layout(revision)
    target = _AtomicFile(path)
    try:
        size = target.write(layout.header())
        iterator = iter(items)
        while page := list(itertools.islice(iterator, _PAGE_SIZE)):
            size += target.write(layout.page(page))
        size += target.write(layout.footer())
        target.commit()
    except BaseException:
        target.abort()
        raise
    return layout.count, size


class _ChildFailed(Exception):
    """The forked snapshot writer failed; the message is its reason."""


def _die_with_parent(parent: int) -> None:
    """
    Have the kernel kill this forked child if Ersid dies: an orphan would
    otherwise rename an old snapshot over one written after a restart.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


def _child(
    path: str,
    revision: int,
    items: Callable[[], Iterable[tuple[str, Record]]],
    parent: int,
    report: int,
) -> NoReturn:
    """The forked child: write the snapshot, report how it went, and leave."""
    status = 1
    try:
        _die_with_parent(parent)
        # Background work: on a busy core, serving requests comes first.
        # At nice 10 its time slices pushed the daemon's p99 under load to
        # 2-2.8 times the quiet figure in some benchmark runs; at 19 it gets
        # about 1.5% of a saturated core.
        os.nice(19)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        try:
            keys, size = write_snapshot(path, revision, items())
            outcome: dict[str, Any] = {"keys": keys, "bytes": size}
            status = 0
        except OSError as e:
            outcome = {"error": e.strerror or str(e)}
        except Exception as e:
            outcome = {"error": str(e) or repr(e)}
        os.write(report, json.dumps(outcome).encode("utf-8"))
    finally:
        os._exit(status)


def _wait_for_child(pid: int, report: int) -> dict[str, Any]:
    """In a thread: the child's report, once it has exited."""
    chunks = []
    while chunk := os.read(report, 65536):
        chunks.append(chunk)
    os.close(report)
    _, status = os.waitpid(pid, 0)
    try:
        return json.loads(b"".join(chunks))
    except ValueError:
        return {"error": f"the snapshot process died (wait status {status})"}


class Snapshotter:
    """
    Writes snapshots of a store to one path, one at a time, never failing:
    the outcome of each attempt is logged and kept in L{last}.

    Given C{fork_with} (the dict backend's records), a forked child writes
    each snapshot; otherwise serialising happens on the reactor thread a
    page at a time, yielding to the reactor between pages, and file I/O in
    the reactor's thread pool.
    """

    def __init__(
        self,
        storage: IStorage,
        path: str,
        reactor: IReactorTime & IReactorThreads,
        written_revision: int | None = None,
        journal: Journal | None = None,
        fork_with: Callable[[], Iterable[tuple[str, Record]]] | None = None,
    ) -> None:
        self.storage = storage
        self.journal = journal
        self._fork_with = fork_with if _CAN_FORK else None
        self.path = path
        self.last: SnapshotOutcome | None = None
        self._reactor = reactor
        self._written_revision = written_revision
        self._running: Deferred[SnapshotOutcome] | None = None
        self._waiting: list[Deferred[SnapshotOutcome]] = []

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
            # Changes after this revision go to a new journal segment; once
            # the snapshot holds everything up to it, older segments can go.
            compact = self.journal.rotate(revision) if self.journal else None
            if self._fork_with is not None:
                keys, size = await self._write_in_child(revision)
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
            return self.last
        self._written_revision = revision
        if compact is not None:
            compact()
        _log.info(
            "Dumping {keys} keys in {size} bytes to {path}",
            keys=keys,
            size=size,
            path=self.path,
        )
        self.last = SnapshotOutcome(
            self.path, self._reactor.seconds(), True, keys, size, revision
        )
        return self.last

    def _in_thread(self, f: Callable[..., _T], *args: Any) -> Deferred[_T]:
        pool = self._reactor.getThreadPool()
        return deferToThreadPool(self._reactor, pool, f, *args)

    async def _write_in_child(self, revision: int) -> tuple[int, int]:
        """
        Fork, as Redis's BGSAVE does: the child writes the store as it is at
        this instant from its copy-on-write image while the reactor goes on
        serving, paying only for the fork.
        """
        assert self._fork_with is not None
        report, report_end = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            os.close(report)
            _child(self.path, revision, self._fork_with, parent, report_end)
        os.close(report_end)
        outcome = await self._in_thread(_wait_for_child, pid, report)
        if "error" in outcome:
            raise _ChildFailed(outcome["error"])
        return outcome["keys"], outcome["bytes"]

    async def _write(self, revision: int) -> tuple[int, int]:
        """Write a page per reactor turn, and the file in the thread pool."""
        layout = _Layout(revision)
        target = await self._in_thread(_AtomicFile, self.path)
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


class SnapshotService(TimerService):
    """
    Snapshot every C{interval} seconds, and once more on shutdown after the
    storage stops taking writes, so that nothing acknowledged is left out;
    run the journal, if there is one, from start to that last snapshot.
    A failed snapshot never stops the timer: L{Snapshotter} does not fail.
    """

    def __init__(self, interval: float, snapshotter: Snapshotter) -> None:
        super().__init__(interval, snapshotter.snapshot)
        self.snapshotter = snapshotter

    def startService(self) -> None:
        if self.snapshotter.journal is not None:
            self.snapshotter.journal.start()
        super().startService()

    def stopService(self) -> Deferred[None]:
        stopped = super().stopService()

        async def final() -> None:
            await stopped
            await self.snapshotter.storage.close()
            await self.snapshotter.snapshot()
            if self.snapshotter.journal is not None:
                await self.snapshotter.journal.stop()

        return Deferred.fromCoroutine(final())


def load_snapshot(path: str) -> tuple[PackedRecords, int] | None:
    """
    Read the snapshot at C{path}, blocking: call it before the reactor runs.

    @return: the records by key, packed as a L{DictStorage} keeps them, and
        the revision; or C{None} if there is no file.
    @raise SnapshotError: if the file cannot be read or is not a complete
        Ersid snapshot.
    """
    try:
        snapshot = open(path, "rb")
    except FileNotFoundError:
        return None
    except OSError as e:
        raise SnapshotError(f"cannot read snapshot {path}: {e.strerror}") from None
    records = PackedRecords()
    with snapshot:
        try:
            header = json.loads(snapshot.readline() + b"]}")
            if header.get("ersid_snapshot") != FORMAT_VERSION:
                raise ValueError(
                    f"unknown snapshot format {header.get('ersid_snapshot')!r}"
                )
            for line in snapshot:
                if line.startswith(b"]"):
                    count = json.loads(b"{" + line[2:])["count"]
                    break
                _decode_page(json.loads(line.rstrip(b",\n")), records)
            else:
                raise ValueError("the file ends before the snapshot does")
            if count != len(records):
                raise ValueError(f"it holds {len(records)} entries, not {count}")
        except OSError as e:
            raise SnapshotError(f"cannot read snapshot {path}: {e.strerror}") from None
        except (ValueError, TypeError, KeyError, AttributeError, struct.error) as e:
            raise SnapshotError(
                f"snapshot {path} is corrupt: {e}; move it aside to start "
                "empty, or restore it from a backup"
            ) from None
    return records, header["revision"]


def _decode_page(page: list[list[Any]], into: PackedRecords) -> None:
    # The hot loop of a restart: a million entries should load in a second.
    keys: list[str] = []
    packed: list[bytes] = []
    highest_version = 0
    for key, version, content_type, value in page:
        if value.__class__ is str:
            data = value.encode("utf-8")
        else:
            data = base64.b64decode(value["base64"], validate=True)
        if key.__class__ is not str or version.__class__ is not int:
            raise ValueError(f"bad entry for key {key!r}")
        keys.append(key)
        packed.append(pack_record(version, content_type, data))
        if version > highest_version:
            highest_version = version
    into.put_packed(keys, packed, highest_version)


def remove_stale_temporaries(path: str) -> None:
    """
    Remove temporary files left by snapshots that a crash interrupted.
    """
    directory = os.path.dirname(os.path.abspath(path))
    for name in os.listdir(directory):
        if name.startswith(_TEMP_PREFIX):
            os.unlink(os.path.join(directory, name))
