"""
Snapshots: written atomically and cooperatively, loaded at startup, and
never able to stop the timer that takes them.
"""

from __future__ import annotations

import itertools
import json
import os
import time

from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from ersid.embedded.memory import DictStorage
from ersid.embedded.packing import pack_record, unpack_record
from ersid.snapshots import (
    SnapshotError,
    SnapshotService,
    Snapshotter,
    read_snapshot,
    remove_stale_temporaries,
)
from ersid.storage import Record, StorageUnavailable

from .._helpers import captured_log, small_tmpfs


def load_snapshot(path: str) -> tuple[dict[str, Record], int] | None:
    """
    The snapshot at C{path} as a dict of records, packed and unpacked as
    the dict backend does, and its revision.
    """
    records: dict[str, Record] = {}

    def add_page(keys: list[str], packed: list[bytes], highest: int) -> None:
        records.update(zip(keys, map(unpack_record, packed), strict=True))

    read = read_snapshot(path, pack_record, add_page)
    return None if read is None else (records, read[0])


SAMPLE = [
    ("text", Record(b"myvalue", "text/plain", 3)),
    (
        "bin/\u00e9\U0001f511",
        Record(b"\x00\xff\xfe\x00", "application/octet-stream", 5),
    ),
    ("line\nbreak", Record(b'{"json": "inside"}\n', "application/json", 9)),
]


class _FailingScan(DictStorage):
    """A store whose scan fails after the first page, like a dying disk."""

    def scan(self, cursor=None, limit=1000):
        if cursor is not None:
            return fail(OSError(28, "No space left on device"))
        return super().scan(cursor, 1)


class SnapshotTestsMixin:
    def run_async(self, coroutine) -> Deferred:
        return Deferred.fromCoroutine(coroutine)

    def setUp(self):
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        self.path = os.path.join(self.directory, "snapshot.json")
        self.logged = captured_log(self)

    def messages(self) -> list[str]:
        return self.logged


class SnapshotterTests(SnapshotTestsMixin, TestCase):
    def test_round_trip_is_byte_exact(self):
        storage = DictStorage(SAMPLE, revision=12)

        async def check():
            outcome = await Snapshotter(storage, self.path, reactor).snapshot()
            self.assertTrue(outcome.ok)
            self.assertEqual((outcome.keys, outcome.revision), (3, 12))
            self.assertEqual(outcome.size, os.path.getsize(self.path))
            entries, revision = load_snapshot(self.path)
            self.assertEqual(revision, 12)
            self.assertEqual(entries, dict(SAMPLE))

        return self.run_async(check())

    def test_file_is_one_json_document(self):
        storage = DictStorage(SAMPLE, revision=12)

        async def check():
            await Snapshotter(storage, self.path, reactor).snapshot()
            with open(self.path, "rb") as f:
                document = json.load(f)
            self.assertEqual(document["ersid_snapshot"], 2)
            self.assertEqual(document["revision"], 12)
            self.assertEqual(document["count"], 3)
            entries = {entry[0]: entry for page in document["pages"] for entry in page}
            self.assertEqual(entries["text"], ["text", 3, "text/plain", "myvalue"])
            self.assertEqual(entries["bin/\u00e9\U0001f511"][3], {"base64": "AP/+AA=="})
            self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o600)

        return self.run_async(check())

    def test_many_pages_and_lab_log_line(self):
        entries = [(f"k{i}", Record(b"v%d" % i, version=i + 1)) for i in range(2500)]
        storage = DictStorage(entries)

        async def check():
            outcome = await Snapshotter(storage, self.path, reactor).snapshot()
            loaded, revision = load_snapshot(self.path)
            self.assertEqual(loaded, dict(entries))
            self.assertEqual(revision, 2500)
            self.assertIn(
                f"Dumping 2500 keys in {outcome.size} bytes to {self.path}",
                self.messages(),
            )

        return self.run_async(check())

    def test_yields_to_the_reactor_between_pages(self):
        """
        Serialising a large store is cut into pages with a reactor turn
        between each, so requests are served while a snapshot runs.
        """
        turns = [0]
        turns_at_scan = []

        def tick():
            turns[0] += 1
            ticker[0] = reactor.callLater(0, tick)

        ticker = [reactor.callLater(0, tick)]
        self.addCleanup(lambda: ticker[0].cancel())

        class Watched(DictStorage):
            def scan(self, cursor=None, limit=1000):
                turns_at_scan.append(turns[0])
                return super().scan(cursor, limit)

        storage = Watched([(f"k{i}", Record(b"v")) for i in range(5000)])

        async def check():
            await Snapshotter(storage, self.path, reactor).snapshot()
            self.assertEqual(len(turns_at_scan), 5)
            gaps = [b - a for a, b in itertools.pairwise(turns_at_scan)]
            self.assertTrue(all(gap >= 1 for gap in gaps), gaps)

        return self.run_async(check())

    def test_unchanged_store_not_rewritten(self):
        storage = DictStorage(SAMPLE, revision=12)
        snapshotter = Snapshotter(storage, self.path, reactor, written_revision=12)

        async def check():
            self.assertIsNone(await snapshotter.snapshot())
            self.assertFalse(os.path.exists(self.path))
            await storage.set("new", b"x")
            self.assertTrue((await snapshotter.snapshot()).ok)
            self.assertTrue(os.path.exists(self.path))

        return self.run_async(check())

    def test_unwritable_path_reported_not_raised(self):
        blocker = os.path.join(self.directory, "a-file")
        open(blocker, "w").close()
        path = os.path.join(blocker, "snapshot.json")
        snapshotter = Snapshotter(DictStorage(SAMPLE), path, reactor)

        async def check():
            outcome = await snapshotter.snapshot()
            self.assertFalse(outcome.ok)
            self.assertEqual(outcome.error, "Not a directory")
            self.assertIs(snapshotter.last, outcome)
            failures = [m for m in self.messages() if "failed" in m]
            self.assertEqual(failures, [f"Snapshot to {path} failed: Not a directory"])
            self.assertFalse(outcome.as_json()["ok"])

        return self.run_async(check())

    def test_failure_midway_keeps_old_snapshot(self):
        async def check():
            await Snapshotter(DictStorage(SAMPLE, 12), self.path, reactor).snapshot()
            before = open(self.path, "rb").read()
            failing = _FailingScan([(f"k{i}", Record(b"v")) for i in range(5)], 20)
            outcome = await Snapshotter(failing, self.path, reactor).snapshot()
            self.assertFalse(outcome.ok)
            self.assertEqual(outcome.error, "No space left on device")
            self.assertEqual(open(self.path, "rb").read(), before)
            self.assertEqual(os.listdir(self.directory), ["snapshot.json"])

        return self.run_async(check())

    def test_concurrent_requests_share_one_write(self):
        storage = DictStorage(SAMPLE, 12)
        snapshotter = Snapshotter(storage, self.path, reactor)

        async def check():
            first, second = snapshotter.snapshot(), snapshotter.snapshot()
            self.assertIs(await first, await second)

        return self.run_async(check())

    def test_request_during_a_write_gets_one_with_the_writes_made_meanwhile(self):
        storage = DictStorage(SAMPLE, 12)
        snapshotter = Snapshotter(storage, self.path, reactor)

        async def check():
            first = snapshotter.snapshot()
            await storage.set("late", b"write")
            second = snapshotter.snapshot()
            self.assertEqual((await first).revision, 12)
            self.assertEqual((await second).revision, 13)
            self.assertEqual(snapshotter.last.revision, 13)
            _, revision = load_snapshot(self.path)
            self.assertEqual(revision, 13)

        return self.run_async(check())


class SnapshotServiceTests(SnapshotTestsMixin, TestCase):
    def test_timer_survives_failures(self):
        """
        A failed snapshot is retried at the next tick, and the next good one
        replaces the failure in the outcome.
        """
        blocker = os.path.join(self.directory, "not-yet")
        open(blocker, "w").close()
        storage = DictStorage(SAMPLE, 12)
        snapshotter = Snapshotter(
            storage, os.path.join(blocker, "snapshot.json"), reactor
        )
        service = SnapshotService(5, snapshotter)
        service.clock = Clock()

        async def check():
            service.startService()
            self.assertFalse((await snapshotter.snapshot()).ok)
            service.clock.advance(5)
            self.assertFalse((await snapshotter.snapshot()).ok)
            os.unlink(blocker)
            os.mkdir(blocker)
            service.clock.advance(5)
            await snapshotter.snapshot()
            self.assertTrue(snapshotter.last.ok)
            self.assertTrue(service.running)
            await service.stopService()

        return self.run_async(check())

    def test_stop_refuses_writes_then_takes_final_snapshot(self):
        storage = DictStorage()
        snapshotter = Snapshotter(storage, self.path, reactor)
        service = SnapshotService(60, snapshotter)
        service.clock = Clock()

        async def check():
            service.startService()
            await snapshotter.snapshot()
            await storage.set("late", b"write")
            await service.stopService()
            with self.assertRaises(StorageUnavailable):
                await storage.set("too-late", b"x")
            entries, _ = load_snapshot(self.path)
            self.assertEqual(list(entries), ["late"])

        return self.run_async(check())


class StuckChildTests(SnapshotTestsMixin, TestCase):
    def test_stopping_does_not_wait_on_a_stuck_child(self):
        """
        A snapshot's child that never ends (a hung disk, a stopped process)
        is killed when the daemon stops, which then writes its last one.
        """
        storage = DictStorage(SAMPLE, revision=12)
        calls = []

        def image():
            calls.append(None)
            if len(calls) == 1:
                return _stuck()
            return storage.durable_records()

        snapshotter = Snapshotter(storage, self.path, reactor, fork_with=image)
        service = SnapshotService(3600, snapshotter)

        async def check():
            service.startService()  # its first snapshot gets stuck
            await service.stopService()
            self.assertEqual(len(calls), 2)
            self.assertTrue(snapshotter.last.ok)
            self.assertEqual(load_snapshot(self.path), (dict(SAMPLE), 12))

        return self.run_async(check())


def _stuck():
    """Records that never come: the child writing them hangs."""
    while True:
        time.sleep(60)
        yield


class LoadSnapshotTests(TestCase):
    def setUp(self):
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        self.path = os.path.join(self.directory, "snapshot.json")

    def write(self, data: bytes) -> None:
        with open(self.path, "wb") as f:
            f.write(data)

    def assert_corrupt(self, data: bytes, reason: str) -> None:
        self.write(data)
        with self.assertRaises(SnapshotError) as raised:
            load_snapshot(self.path)
        message = str(raised.exception)
        self.assertIn(self.path, message)
        self.assertIn(reason, message)

    def test_missing_file_is_none(self):
        self.assertIsNone(load_snapshot(self.path))

    def test_empty_store(self):
        self.write(b'{"ersid_snapshot": 1, "revision": 4, "pages": [\n], "count": 0}\n')
        self.assertEqual(load_snapshot(self.path), ({}, 4))

    def test_garbage(self):
        self.assert_corrupt(b"garbage", "corrupt")

    def test_empty_file(self):
        self.assert_corrupt(b"", "corrupt")

    def test_truncated(self):
        self.assert_corrupt(
            b'{"ersid_snapshot": 1, "revision": 4, "pages": [\n[["k", 1, "t", "v"]],\n',
            "ends before",
        )

    def test_torn_line(self):
        self.assert_corrupt(
            b'{"ersid_snapshot": 1, "revision": 4, "pages": [\n[["k", 1, "t", "v"',
            "corrupt",
        )

    def test_count_mismatch(self):
        self.assert_corrupt(
            b'{"ersid_snapshot": 1, "revision": 4, "pages": [\n'
            b'[["k", 1, "t", "v"]]\n], "count": 2}\n',
            "holds 1 entries, not 2",
        )

    def test_unknown_format(self):
        self.assert_corrupt(
            b'{"ersid_snapshot": 99, "revision": 4, "pages": [\n], "count": 0}\n',
            "unknown snapshot format 99",
        )

    def test_bad_base64(self):
        self.assert_corrupt(
            b'{"ersid_snapshot": 1, "revision": 4, "pages": [\n'
            b'[["k", 1, "t", {"base64": "!!"}]]\n], "count": 1}\n',
            "corrupt",
        )

    def test_bad_entry_fields(self):
        """
        Entries whose fields have the wrong type or range are refused, not
        loaded and not a crash.
        """
        for entry in [
            b'[1, 1, "t", "v"]',
            b'["k", "1", "t", "v"]',
            b'["k", -1, "t", "v"]',
            b'["k", 18446744073709551616, "t", "v"]',
            b'["k", 1, 7, "v"]',
            b'["k", 1, "\\ud800", "v"]',
            b'["k", 1, "t", 5]',
        ]:
            self.assert_corrupt(
                b'{"ersid_snapshot": 1, "revision": 4, "pages": [\n'
                b"[" + entry + b"]\n], " + b'"count": 1}\n',
                "corrupt",
            )

    def test_unreadable(self):
        os.mkdir(self.path)
        with self.assertRaises(SnapshotError) as raised:
            load_snapshot(self.path)
        self.assertIn(f"cannot read snapshot {self.path}", str(raised.exception))

    def test_stale_temporaries_removed(self):
        """
        Only this snapshot's own temporaries go: a shared directory keeps
        other snapshots' and other users' files.
        """
        stale = os.path.join(self.directory, ".snapshot.json.tmp-abc123")
        kept = [
            os.path.join(self.directory, name)
            for name in [
                "keep.txt",
                ".other.json.tmp-abc123",
                ".ersid-snapshot-abc123",
                ".snapshot.json.tmp-theirs",
            ]
        ]
        for name in [stale, *kept]:
            open(name, "w").close()
        os.chown(kept[-1], 65534, 65534)
        remove_stale_temporaries(self.path)
        self.assertEqual(
            sorted(os.listdir(self.directory)),
            sorted(os.path.basename(name) for name in kept),
        )


class ForkedSnapshotterTests(SnapshotTestsMixin, TestCase):
    """
    With the dict backend the daemon forks and lets the child write the
    snapshot from its copy-on-write image, as Redis's BGSAVE does.
    """

    def snapshotter(self, storage: DictStorage, path: str | None = None) -> Snapshotter:
        return Snapshotter(
            storage, path or self.path, reactor, fork_with=storage.durable_records
        )

    def test_round_trip_is_byte_exact(self):
        storage = DictStorage(SAMPLE, revision=12)

        async def check():
            outcome = await self.snapshotter(storage).snapshot()
            self.assertTrue(outcome.ok, outcome)
            self.assertEqual((outcome.keys, outcome.revision), (3, 12))
            self.assertEqual(outcome.size, os.path.getsize(self.path))
            self.assertEqual(load_snapshot(self.path), (dict(SAMPLE), 12))
            self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o600)
            self.assertIn(
                f"Dumping 3 keys in {outcome.size} bytes to {self.path}",
                self.messages(),
            )

        return self.run_async(check())

    def test_image_of_the_instant_it_started(self):
        """Writes made while the child writes are not in its snapshot."""
        storage = DictStorage([(f"k{i}", Record(b"old")) for i in range(3000)], 1)

        async def check():
            writing = self.snapshotter(storage).snapshot()
            await storage.set("k0", b"new")
            await storage.set("later", b"x")
            await writing
            records, revision = load_snapshot(self.path)
            self.assertEqual(revision, 1)
            self.assertEqual(len(records), 3000)
            self.assertEqual(records["k0"].value, b"old")

        return self.run_async(check())

    def test_failure_in_the_child_reported(self):
        blocker = os.path.join(self.directory, "a-file")
        open(blocker, "w").close()
        path = os.path.join(blocker, "snapshot.json")
        storage = DictStorage(SAMPLE)

        async def check():
            outcome = await self.snapshotter(storage, path).snapshot()
            self.assertFalse(outcome.ok)
            self.assertEqual(outcome.error, "Not a directory")
            self.assertIn(
                f"Snapshot to {path} failed: Not a directory", self.messages()
            )

        return self.run_async(check())


class FullDiskTests(SnapshotTestsMixin, TestCase):
    """
    A snapshot that does not fit fails, says why, and leaves nothing
    behind: a temporary left by each attempt would keep the disk full.
    """

    def setUp(self):
        super().setUp()
        self.small = small_tmpfs(self, self.directory)

    def test_nothing_left_behind(self):
        path = os.path.join(self.small, "snapshot.json")

        async def check():
            # 64 KB of values: the last of them fails when the file is closed.
            for count in (64, 200):
                storage = DictStorage(
                    [(f"k{i}", Record(b"v" * 1000)) for i in range(count)]
                )
                for fork_with in (None, storage.durable_records):
                    snapshotter = Snapshotter(
                        storage, path, reactor, fork_with=fork_with
                    )
                    outcome = await snapshotter.snapshot(force=True)
                    self.assertFalse(outcome.ok)
                    self.assertEqual(outcome.error, "No space left on device")
                    self.assertEqual(os.listdir(self.small), [])

        return self.run_async(check())
