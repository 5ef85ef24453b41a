"""
Recovery: the store rebuilt from its snapshot and journal, and refused,
in one line, whenever they cannot be trusted.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import TestCase

from ersid.embedded.journal_format import JournalEntry, segment_path
from ersid.embedded.recovery import load_snapshot, recover
from ersid.snapshots import SnapshotError
from ersid.startup import StartupError
from ersid.storage import Record


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
