"""
What C{ersid backup} checks before it keeps a backup: L{SnapshotCheck}
takes only a whole snapshot, however its bytes arrive.
"""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from ersid.client.backup import SnapshotCheck
from ersid.snapshots import write_snapshot

from ..backup_contract import numbered


class SnapshotCheckTests(TestCase):
    def setUp(self):
        path = self.mktemp()
        write_snapshot(path, 2502, numbered(2500))
        with open(path, "rb") as f:
            self.whole = f.read()

    def check(self, document: bytes, chunk: int = 65536) -> tuple[int, int]:
        check = SnapshotCheck()
        for start in range(0, len(document), chunk):
            check.feed(document[start : start + chunk])
        return check.finish()

    def test_a_whole_snapshot_in_any_pieces(self):
        for chunk in (1, 7, 4096, len(self.whole)):
            self.assertEqual(self.check(self.whole, chunk), (2502, 2502))

    def test_an_empty_store(self):
        path = self.mktemp()
        write_snapshot(path, 0, [])
        with open(path, "rb") as f:
            self.assertEqual(self.check(f.read()), (0, 0))

    def test_cut_anywhere_before_its_end(self):
        lines = self.whole.index(b"\n]")
        for end in (0, 30, lines, lines + 1, len(self.whole) - 1):
            with self.assertRaises(ValueError, msg=end):
                self.check(self.whole[:end])

    def test_a_page_lost(self):
        first = self.whole.index(b"\n") + 1
        second = self.whole.index(b"\n", first) + 1
        with self.assertRaises(ValueError) as raised:
            self.check(self.whole[:first] + self.whole[second:])
        self.assertEqual(str(raised.exception), "it holds 1502 entries, not 2502")

    def test_not_a_snapshot(self):
        for document in (
            b'{"other": 1, "pages": [\n], "count": 0}\n',
            b'{"ersid_snapshot": 2, "pages": [\n], "count": 0}\n',
            b'{"ersid_snapshot": 2, "revision": 1, "pages": [\n], "total": 0}\n',
            b"[\n]\n",
            b"<html>\n",
        ):
            with self.assertRaises(ValueError):
                self.check(document)

    def test_anything_after_its_end(self):
        for extra in (b"[]\n", b"x"):
            with self.assertRaises(ValueError, msg=extra):
                self.check(self.whole + extra)
