"""
Recovery: the store rebuilt from its snapshot and journal, and refused,
in one line, whenever they cannot be trusted.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import TestCase

from ersid.embedded.journal_format import JournalEntry, segment_path
from ersid.embedded.recovery import load_snapshot, recover
from ersid.expiry import ExpiryIndex
from ersid.snapshots import SnapshotError
from ersid.startup import StartupError
from ersid.storage import Record
from ersid.watch import History


class RecoveryTests(TestCase):
    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.snapshot = os.path.join(self.directory, "snapshot.json")

    def test_snapshot_and_journal_together(self):
        with open(self.snapshot, "wb") as f:
            f.write(
                b'{"ersid_snapshot": 1, "revision": 2, "pages": [\n'
                b'[["a", 1, "t", "one"], ["b", 2, "t", "two"]]\n], "count": 2}\n'
            )
        entries = [
            JournalEntry(3, "a", Record(b"three", "t", 3)),
            JournalEntry(4, "b", None),
        ]
        with open(segment_path(self.directory, 2), "wb") as f:
            f.write(b"".join(entry.encode() for entry in entries))
        recovered = recover(self.directory, self.snapshot)
        self.assertEqual(dict(recovered.records), {"a": Record(b"three", "t", 3)})
        self.assertEqual((recovered.revision, recovered.snapshot_revision), (4, 2))

    def test_expiries_come_back_from_snapshot_and_journal_without_a_clock(self):
        """
        A key's expiry is in the snapshot and the journal, and its removal
        by expiry is a journal entry: replay asks no clock; the keys with
        an expiry still held are indexed for the reaper.
        """
        with open(self.snapshot, "wb") as f:
            f.write(
                b'{"ersid_snapshot": 2, "revision": 2, "pages": [\n'
                b'[["a", 1, "t", "one", 2000000000.5], ["b", 2, "t", "two"]]\n'
                b'], "count": 2}\n'
            )
        entries = [
            JournalEntry(3, "c", Record(b"three", "t", 3, 1e9)),
            JournalEntry(4, "a", None, expired=True),
            JournalEntry(5, "b", Record(b"five", "t", 5, 2e9)),
            JournalEntry(6, "b", Record(b"six", "t", 6)),
        ]
        with open(segment_path(self.directory, 2), "wb") as f:
            f.write(b"".join(entry.encode() for entry in entries))
        history, expiry = History(), ExpiryIndex(0.1)
        recovered = recover(self.directory, self.snapshot, history, expiry)
        self.assertEqual(
            dict(recovered.records),
            {"b": Record(b"six", "t", 6), "c": Record(b"three", "t", 3, 1e9)},
        )
        self.assertEqual(
            [(c.kind, c.key, c.expires) for c in history.after(2)],
            [
                ("put", "c", 1e9),
                ("expire", "a", None),
                ("put", "b", 2e9),
                ("put", "b", None),
            ],
        )
        # Entries for a, c and b (b's now stale): c, long past, comes first.
        self.assertEqual(expiry.pending, 3)
        self.assertEqual(expiry.next_due(1.5e9), "c")

    def test_snapshot_repeating_a_key_is_corrupt(self):
        """A key written twice, however the count agrees, is not a snapshot."""
        with open(self.snapshot, "wb") as f:
            f.write(
                b'{"ersid_snapshot": 1, "revision": 2, "pages": [\n'
                b'[["a", 1, "t", "one"], ["a", 2, "t", "two"]]\n], "count": 2}\n'
            )
        with self.assertRaises(SnapshotError) as raised:
            load_snapshot(self.snapshot)
        self.assertIn("holds 1 keys, not 2", str(raised.exception))

    def test_entry_the_store_cannot_hold_stops_the_start_in_one_line(self):
        """
        A journal entry that decodes but cannot be stored (a content type
        too long to pack) is a startup error, not a traceback.
        """
        entry = JournalEntry(1, "k", Record(b"v", "t" * 65535, 1))
        with open(segment_path(self.directory, 0), "wb") as f:
            f.write(entry.encode())
        with self.assertRaises(StartupError) as raised:
            recover(self.directory, self.snapshot)
        self.assertIn("content type is too long", str(raised.exception))


class ContinuityTests(TestCase):
    """
    The journal must start where the snapshot ends: with a gap between
    them, part of the data is in neither, and the start is refused.
    """

    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.snapshot = os.path.join(self.directory, "snapshot.json")

    def journal(self, start: int, *revisions: int) -> None:
        entries = [JournalEntry(r, f"k{r}", Record(b"v", version=r)) for r in revisions]
        with open(segment_path(self.directory, start), "wb") as f:
            f.write(b"".join(entry.encode() for entry in entries))

    def snapshot_at(self, revision: int) -> None:
        with open(self.snapshot, "wb") as f:
            f.write(
                b'{"ersid_snapshot": 1, "revision": %d, "pages": [\n'
                b'], "count": 0}\n' % revision
            )

    def test_snapshot_without_its_journal_refused(self):
        """
        A snapshot with no journal beside it (a new --data-dir, say): the
        changes after it are missing; an empty segment says there are none.
        """
        self.snapshot_at(3)
        with self.assertRaises(StartupError) as raised:
            recover(self.directory, self.snapshot)
        empty = segment_path(self.directory, 3)
        self.assertIn("holds no journal", str(raised.exception))
        self.assertIn(f"touch {empty}", str(raised.exception))
        open(empty, "wb").close()
        self.assertEqual(recover(self.directory, self.snapshot).revision, 3)

    def test_journal_from_the_start_needs_no_snapshot(self):
        self.journal(0, 1, 2)
        self.assertEqual(recover(self.directory, self.snapshot).revision, 2)

    def test_journal_after_a_missing_snapshot_refused(self):
        self.journal(5, 6, 7)
        with self.assertRaises(StartupError) as raised:
            recover(self.directory, self.snapshot)
        message = str(raised.exception)
        self.assertIn("starts after revision 5", message)
        self.assertIn(f"there is no snapshot at {self.snapshot}", message)

    def test_journal_after_an_older_snapshot_refused(self):
        self.snapshot_at(3)
        self.journal(5, 6)
        with self.assertRaises(StartupError) as raised:
            recover(self.directory, self.snapshot)
        self.assertIn("holds only revisions up to 3", str(raised.exception))

    def test_older_segments_beside_the_snapshot_are_fine(self):
        """A crash between a snapshot and the compaction that follows it."""
        self.journal(0, 1, 2, 3)
        self.journal(3, 4)
        self.snapshot_at(3)
        self.assertEqual(recover(self.directory, self.snapshot).revision, 4)

    def test_revisions_go_on_past_the_newest_segment(self):
        """
        A segment named after revisions taken by refused writes (its
        snapshot failed): new writes must not reuse them.
        """
        self.journal(0, 1, 2)
        self.journal(5)
        self.assertEqual(recover(self.directory, self.snapshot).revision, 5)
