"""
The journal: entries written before writes are acknowledged, replayed at
startup, cut back and refused cleanly when the disk is full, torn and
corrupted files handled as promised.
"""

from __future__ import annotations

import os
import resource
import threading

from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import TestCase

from ersid.embedded import journal as journal_module
from ersid.embedded import open_embedded
from ersid.embedded.journal import Journal
from ersid.embedded.journal_format import JournalEntry
from ersid.embedded.memory import DictStorage
from ersid.embedded.recovery import JournalCorrupt, load_snapshot, read_journal
from ersid.snapshots import Snapshotter
from ersid.storage import (
    OpenedStorage,
    Precondition,
    PreconditionFailed,
    Record,
    StorageUnavailable,
)
from ersid.watch import History, Hub
from ersid.web.app import Service

from .._helpers import captured_log, small_tmpfs


def _replayed(directory: str, after: int = 0) -> dict[str, Record]:
    records: dict[str, Record] = {}
    for entry in read_journal(directory, after):
        if entry.record is None:
            records.pop(entry.key, None)
        else:
            records[entry.key] = entry.record
    return records


class _JournalTestCase(TestCase):
    fsync = "always"

    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.logged = captured_log(self)

    def open(self, directory: str | None = None) -> DictStorage:
        directory = directory or self.directory
        records = _replayed(directory)
        revision = max((r.version for r in records.values()), default=0)
        journal = Journal(directory, revision, self.fsync, reactor)
        journal.start()
        self.addCleanup(journal.stop)
        return DictStorage(records.items(), revision, journal)

    def run_async(self, coroutine) -> Deferred:
        return Deferred.fromCoroutine(coroutine)

    def segment(self) -> str:
        (name,) = [n for n in os.listdir(self.directory) if n.startswith("journal.")]
        return os.path.join(self.directory, name)


class EntryTests(TestCase):
    def test_round_trip(self):
        for entry in [
            JournalEntry(7, "clé/🔑", Record(b"\x00\xff" * 10, "image/png", 7)),
            JournalEntry(8, "k", Record(b"", "", 8)),
            JournalEntry(9, "gone", None),
            JournalEntry(10, "lock", Record(b"me", "text/plain", 10, 1.8e9 + 0.25)),
            JournalEntry(11, "lock", None, expired=True),
        ]:
            encoded = entry.encode()
            self.assertEqual(JournalEntry.decode(encoded[8:]), entry)


class JournalTests(_JournalTestCase):
    def test_replay_gives_the_same_store(self):
        async def check():
            storage = self.open()
            await storage.set("a", b"1", "text/plain")
            await storage.set("b", b"\x00bin")
            await storage.set("a", b"2")
            await storage.delete("b")
            await storage.set("c", b"3", precondition=Precondition.if_absent())
            replayed = _replayed(self.directory)
            self.assertEqual(sorted(replayed), ["a", "c"])
            for key, record in replayed.items():
                self.assertEqual(record, await storage.get(key))

        return self.run_async(check())

    def test_replay_skips_what_the_snapshot_holds(self):
        async def check():
            storage = self.open()
            for i in range(5):
                await storage.set(f"k{i}", b"v")
            self.assertEqual(
                [e.revision for e in read_journal(self.directory, after=3)], [4, 5]
            )

        return self.run_async(check())

    def test_other_files_in_the_directory_ignored(self):
        """
        Files that are not segments, however close their names, are left
        alone: not read, not deleted by compaction.
        """
        strays = ["journal.\u00b2", "journal.", "journal.1.bak", "notes.txt"]
        for name in strays:
            with open(os.path.join(self.directory, name), "wb") as f:
                f.write(b"not a journal")

        async def check():
            storage = self.open()
            await storage.set("k", b"v")
            await storage.journal.stop()
            self.assertEqual(set(_replayed(self.directory)), {"k"})
            (segment,) = set(os.listdir(self.directory)) - set(strays)
            self.assertEqual(segment, f"journal.{0:020d}")

        return self.run_async(check())

    def test_unencodable_key_changes_nothing(self):
        """
        A key that is not valid Unicode (only the Python API can pass one)
        fails the write before anything changes, in memory or on disk.
        """

        async def check():
            storage = self.open()
            await storage.set("kept", b"v")
            bad = "bad\ud800"
            with self.assertRaises(UnicodeEncodeError):
                await storage.set(bad, b"x")
            self.assertEqual(await storage.stats(), (1, 1))
            self.assertEqual((await storage.keys()).items, ["kept"])
            await storage.set("after", b"w")
            await storage.journal.stop()
            self.assertEqual(set(_replayed(self.directory)), {"kept", "after"})
            self.assertEqual((await storage.get("after")).version, 2)

        return self.run_async(check())

    def test_concurrent_writes_share_fsyncs(self):
        """With fsync=always, writes arriving together share one fsync."""
        synced = []
        real_fsync = os.fsync

        def counting_fsync(descriptor):
            synced.append(descriptor)
            real_fsync(descriptor)

        self.patch(os, "fsync", counting_fsync)

        async def check():
            storage = self.open()
            await gatherResults([storage.set(f"k{i}", b"v") for i in range(100)])
            self.assertLess(len(synced), 10)
            self.assertEqual(len(_replayed(self.directory)), 100)

        return self.run_async(check())

    def test_stop_ends_its_thread(self):
        """The journal writes in a thread of its own, which ends with stop()."""

        def journal_threads():
            return {t for t in threading.enumerate() if t.name == "ersid-journal"}

        before = journal_threads()

        async def check():
            storage = self.open()
            await storage.set("k", b"v")
            (writer,) = journal_threads() - before
            await storage.journal.stop()
            writer.join(10)
            self.assertFalse(writer.is_alive())

        return self.run_async(check())

    def test_snapshot_compacts_journal(self):
        async def check():
            storage = self.open()
            snapshot_path = os.path.join(self.directory, "snapshot.json")
            snapshotter = Snapshotter(
                storage, snapshot_path, reactor, covering=storage.journal.rotate
            )
            for i in range(5):
                await storage.set(f"k{i}", b"old")
            await snapshotter.snapshot()
            await storage.set("k0", b"new")
            await storage.set("after", b"x")
            await storage.journal.stop()
            segments = [
                n for n in os.listdir(self.directory) if n.startswith("journal.")
            ]
            self.assertEqual(segments, [f"journal.{5:020d}"])
            entries, revision = load_snapshot(snapshot_path)
            self.assertEqual(revision, 5)
            records = dict(entries)
            records.update(_replayed(self.directory, after=revision))
            self.assertEqual(records["k0"].value, b"new")
            self.assertEqual(sorted(records), ["after", "k0", "k1", "k2", "k3", "k4"])

        return self.run_async(check())

    def test_torn_last_entry_dropped_with_warning(self):
        async def check():
            storage = self.open()
            await storage.set("kept", b"v")
            await storage.set("torn", b"x" * 100)
            await storage.journal.stop()
            path = self.segment()
            size = os.path.getsize(path)
            with open(path, "r+b") as f:
                f.truncate(size - 50)
            kept_size = len(JournalEntry(1, "kept", Record(b"v", version=1)).encode())
            self.assertEqual(list(_replayed(self.directory)), ["kept"])
            self.assertTrue(
                any(
                    f"Dropping a torn last entry of {path} at offset {kept_size}" in m
                    for m in self.logged
                ),
                self.logged,
            )
            self.assertEqual(os.path.getsize(path), kept_size)

        return self.run_async(check())

    def test_corruption_in_the_middle_stops(self):
        async def check():
            storage = self.open()
            for i in range(3):
                await storage.set(f"k{i}", b"value")
            await storage.journal.stop()
            path = self.segment()
            with open(path, "r+b") as f:
                f.seek(12)
                f.write(b"\xff")
            with self.assertRaises(JournalCorrupt) as raised:
                _replayed(self.directory)
            message = str(raised.exception)
            self.assertIn(f"journal {path} is damaged at offset 0", message)
            self.assertIn(f"Inspect it with: ersid-journal check {path}", message)
            self.assertIn(f"ersid-journal repair {path} --backup", message)

        return self.run_async(check())


class ExpiryAtRestartTests(_JournalTestCase):
    def test_keys_past_their_time_at_a_restart_are_removed_and_journaled(self):
        """
        A key that expired while the daemon was down is never served, and
        the reaper's first slice removes it, journaled: replay, not the
        clock, keeps it gone after the next restart.
        """

        async def check():
            snapshot = os.path.join(self.directory, "s.json")

            def start(hub: Hub) -> DictStorage:
                opened = open_embedded(
                    self.directory, snapshot, self.fsync, 3600, hub, 0.2, reactor
                )
                self.addCleanup(opened.storage.journal.stop)
                return opened.storage

            first = start(Hub(History(), reactor))
            await first.set("short", b"v", ttl=0.05)
            await first.set("lasting", b"v")
            await first.journal.stop()
            # Past its expiry, and past its bucket of the reaper's index.
            await deferLater(reactor, 0.25)
            hub = Hub(History(), reactor)
            second = start(hub)
            self.assertIsNone(await second.get("short"))
            self.assertEqual(await second.stats(), (2, 2))
            reaped = second.reap()
            self.assertIsInstance(reaped, Deferred)  # a batch to journal
            self.assertIs(await reaped, False)
            self.assertEqual(await second.stats(), (1, 3))
            self.assertEqual(
                [(c.kind, c.key, c.revision) for c in hub.history.after(2)],
                [("expire", "short", 3)],
            )
            await second.journal.stop()
            self.assertEqual(sorted(_replayed(self.directory)), ["lasting"])

        return self.run_async(check())


class ReadYourWritesTests(_JournalTestCase):
    fsync = "everysec"

    def test_an_acknowledged_write_is_read_while_a_later_one_waits(self):
        """
        A key with several writes on their way to the journal reads as the
        last one written: a client reads what it was told is stored.
        """

        async def check():
            storage = self.open()
            first = storage.set("k", b"1")
            second = storage.set("k", b"2")
            third = storage.delete("k")
            await first
            self.assertEqual((await storage.get("k")).value, b"1")
            await second
            await third
            self.assertIsNone(await storage.get("k"))

        return self.run_async(check())


class RotationTests(_JournalTestCase):
    def test_a_new_segment_is_durable_in_its_directory(self):
        """
        With fsync always, writes after a rotation are acknowledged once on
        disk: the new segment's name must be on disk too.
        """
        synced = []
        self.patch(journal_module, "sync_directory", synced.append)
        storage = self.open()

        async def check():
            await storage.set("k", b"v")
            synced.clear()
            await storage.journal.rotate(1)
            self.assertEqual(synced, [self.directory])

        return self.run_async(check())

    def test_a_failed_cut_is_finished_before_a_rotation(self):
        """
        Entries of a refused batch that could not be cut off at once must
        not stay in a segment that rotation leaves behind.
        """
        storage = self.open()
        real_write, real_ftruncate = os.write, os.ftruncate
        failing = {"write": True, "ftruncate": True}

        def write(descriptor, data):
            if failing.pop("write", False):
                real_write(descriptor, data[:10])  # a part of the batch gets in
                raise OSError(28, "No space left on device")
            return real_write(descriptor, data)

        def ftruncate(descriptor, length):
            if failing.pop("ftruncate", False):
                raise OSError(5, "Input/output error")
            return real_ftruncate(descriptor, length)

        async def check():
            await storage.set("kept", b"v")
            self.patch(os, "write", write)
            self.patch(os, "ftruncate", ftruncate)
            with self.assertRaises(StorageUnavailable):
                await storage.set("refused", b"v")
            await storage.journal.rotate(2)
            await storage.journal.stop()
            self.assertEqual(list(_replayed(self.directory)), ["kept"])

        return self.run_async(check())

    def test_no_rotation_after_stop(self):
        storage = self.open()

        async def check():
            await storage.journal.stop()
            with self.assertRaises(OSError):
                await storage.journal.rotate(5)
            segments = [n for n in os.listdir(self.directory) if "journal" in n]
            self.assertEqual(segments, [f"journal.{0:020d}"])

        return self.run_async(check())


class DurableImageTests(_JournalTestCase):
    """
    Reads, listings and snapshots hold what the journal has made durable:
    changes still waiting for their journal entries, which may yet be
    refused, are left out, old values back in their place.
    """

    def test_changes_waiting_for_the_journal_are_left_out(self):
        storage = self.open()

        async def check():
            await storage.set("kept", b"old")
            await storage.set("gone", b"old")
            # Made in memory in this reactor turn; journaled in a later one.
            writes = [
                storage.set("kept", b"new"),
                storage.set("created", b"new"),
                storage.delete("gone"),
            ]
            image = dict(storage.durable_records())
            self.assertEqual(
                {key: record.value for key, record in image.items()},
                {"kept": b"old", "gone": b"old"},
            )
            # Reads and listings show what is written, never what may yet
            # be refused; conditions are checked against the latest state.
            self.assertEqual((await storage.get("kept")).value, b"old")
            self.assertIsNone(await storage.get("created"))
            self.assertEqual((await storage.get("gone")).value, b"old")
            self.assertEqual((await storage.keys()).items, ["gone", "kept"])
            self.assertEqual(
                [key for key, _ in (await storage.scan()).items], ["gone", "kept"]
            )
            old = (await storage.get("kept")).version
            with self.assertRaises(PreconditionFailed):
                await storage.set(
                    "kept", b"x", precondition=Precondition.if_version([old])
                )
            await gatherResults(writes)
            self.assertEqual((await storage.get("kept")).value, b"new")
            self.assertEqual((await storage.keys()).items, ["created", "kept"])
            image = dict(storage.durable_records())
            self.assertEqual(
                {key: record.value for key, record in image.items()},
                {"kept": b"new", "created": b"new"},
            )

        return self.run_async(check())


class OutOfDescriptorsTests(_JournalTestCase):
    """
    With no file descriptor to be had, a new segment cannot be started:
    the snapshot that wanted it fails and says so, the journal goes on in
    the segment it has, and nothing is wedged.
    """

    def exhaust_descriptors(self) -> None:
        """Take every file descriptor this process may still open."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 8, hard)
        )
        taken = []
        self.addCleanup(lambda: [os.close(fd) for fd in taken])
        try:
            while True:
                taken.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            pass
        self.release_descriptors = lambda: [os.close(taken.pop()) for _ in range(4)]

    def test_rotation_fails_cleanly_and_writes_go_on(self):
        storage = self.open()
        snapshot = os.path.join(self.directory, "snapshot.json")
        snapshotter = Snapshotter(
            storage, snapshot, reactor, covering=storage.journal.rotate
        )

        async def check():
            await storage.set("before", b"v")
            self.exhaust_descriptors()
            outcome = await snapshotter.snapshot()
            self.assertFalse(outcome.ok)
            self.assertEqual(outcome.error, "Too many open files")
            await storage.set("during", b"v")
            self.release_descriptors()
            self.assertTrue((await snapshotter.snapshot()).ok)
            await storage.set("after", b"v")
            await storage.journal.stop()
            replayed = _replayed(self.directory, after=2)
            self.assertEqual(list(replayed), ["after"])
            entries, revision = load_snapshot(snapshot)
            self.assertEqual((sorted(entries), revision), (["before", "during"], 2))

        return self.run_async(check())


class DiskFullTests(_JournalTestCase):
    """
    The journal on a real, tiny filesystem (a 64 KiB tmpfs): a full disk
    refuses writes cleanly, changes nothing, and writes resume once there is
    room again.
    """

    def setUp(self):
        super().setUp()
        self.small = small_tmpfs(self, self.directory)

    async def health(self, opened: OpenedStorage) -> dict:
        """/_health of a daemon serving the store C{opened}."""
        api = StubTreq(Service(opened.storage, health=opened.health).resource())
        return await (await api.get("http://ersid.test/_health")).json()

    def test_expiries_refused_by_a_full_disk_wait_and_are_not_lost(self):
        """
        A batch of expiries the journal refuses is undone, and the reaper
        waits for its next tick rather than trying the same keys at once;
        once there is room, they are removed and journaled.
        """

        async def check():
            clock = Clock()
            journal = Journal(self.small, 0, self.fsync, reactor)
            journal.start()
            self.addCleanup(journal.stop)
            storage = DictStorage(journal=journal, clock=clock)
            for i in range(50):
                await storage.set(f"k{i}", b"v" * 100, ttl=1)
            filler = os.path.join(self.small, "filler")
            with open(filler, "wb", buffering=0) as f:
                try:
                    while True:
                        f.write(b"\x00" * 512)
                except OSError:
                    pass  # the disk is full
            clock.advance(2)
            self.assertIs(await storage.reap(), False)
            self.assertEqual((await storage.stats())[0], 50)
            self.assertIsNone(await storage.get("k0"))
            os.unlink(filler)
            while await storage.reap():
                pass
            self.assertEqual((await storage.stats())[0], 0)
            await journal.stop()
            self.assertEqual(_replayed(self.small), {})

        return self.run_async(check())

    def test_full_disk_refuses_then_recovers(self):
        async def check():
            snapshot = os.path.join(self.directory, "s.json")
            hub = Hub(History(), reactor)
            opened = open_embedded(
                self.small, snapshot, self.fsync, 3600, hub, 0.2, reactor
            )
            storage = opened.storage
            self.addCleanup(storage.journal.stop)
            filler = os.path.join(self.small, "filler")
            with open(filler, "wb") as f:
                f.write(b"\x00" * 40_000)
            await storage.set("before", b"ok")
            with self.assertRaises(StorageUnavailable) as raised:
                for i in range(100):
                    await storage.set(f"k{i}", b"x" * 2000)
            self.assertIn("No space left on device", str(raised.exception))
            written = await storage.stats()
            failed_key = f"k{written[0] - 1}"
            self.assertIsNone(await storage.get(failed_key))
            self.assertEqual((await storage.get("before")).value, b"ok")
            self.assertEqual(storage.journal.error, "No space left on device")
            health = await self.health(opened)
            self.assertEqual(health["status"], "degraded")
            self.assertEqual(health["journal"]["error"], "No space left on device")
            with self.assertRaises(StorageUnavailable):
                await storage.set("before", b"y" * 30_000)
            self.assertEqual((await storage.get("before")).value, b"ok")

            os.unlink(filler)
            await storage.set("after", b"room again")
            self.assertIsNone(storage.journal.error)
            self.assertEqual((await self.health(opened))["status"], "ok")
            await storage.journal.stop()
            replayed = _replayed(self.small)
            self.assertEqual(set(replayed), set((await storage.keys(limit=1000)).items))
            self.assertEqual(replayed["after"].value, b"room again")
            # Watchers are told of the writes acknowledged, and only them.
            announced = {
                change.key: (change.revision, change.value)
                for change in hub.history.after(0)
            }
            self.assertEqual(
                announced,
                {key: (r.version, r.value) for key, r in replayed.items()},
            )

        return self.run_async(check())

    def test_refused_writes_never_reach_a_snapshot(self):
        """
        A forked snapshot taken while writes wait for a full disk holds none
        of them: refused with 503, they must not come back after a restart.
        """

        async def check():
            storage = self.open(self.small)
            _fill(os.path.join(self.small, "filler"))
            snapshot = os.path.join(self.directory, "snapshot.json")
            snapshotter = Snapshotter(
                storage,
                snapshot,
                reactor,
                covering=storage.journal.rotate,
                fork_with=storage.durable_records,
            )
            writes = [storage.set(f"refused{i}", b"x" * 2000) for i in range(5)]
            taking = snapshotter.snapshot()
            for write in writes:
                with self.assertRaises(StorageUnavailable):
                    await write
            self.assertTrue((await taking).ok)
            entries, _ = load_snapshot(snapshot)
            self.assertEqual(list(entries), [])
            self.assertEqual((await storage.keys()).items, [])

        return self.run_async(check())


def _fill(path: str) -> None:
    """Fill the file system of C{path} to the last byte."""
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\x00" * 4096)
        except OSError:
            pass
