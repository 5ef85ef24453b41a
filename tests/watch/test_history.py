"""The history of changes: its window, its floor, reading it back."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from ersid.watch.history import Change, History, HistoryGone


def _puts(history: History, revisions, key: str = "k", size: int = 0) -> None:
    for revision in revisions:
        history.append(Change(revision, key, b"x" * size))


class HistoryTests(SynchronousTestCase):
    def test_changes_after_a_revision_by_prefix(self):
        history = History()
        history.append(Change(1, "app/a", b"1"))
        history.append(Change(2, "other", b"2"))
        history.append(Change(4, "app/b", None))  # 3 was refused: a gap
        self.assertEqual(
            [(c.revision, c.key) for c in history.after(0, "app/")],
            [(1, "app/a"), (4, "app/b")],
        )
        self.assertEqual([c.revision for c in history.after(2)], [4])
        self.assertEqual([c.revision for c in history.after(3)], [4])
        self.assertEqual(list(history.after(4)), [])
        self.assertEqual(list(history.after(99)), [])  # the future: nothing yet

    def test_window_by_count(self):
        history = History(max_changes=3)
        _puts(history, range(1, 11))
        self.assertEqual(len(history), 3)
        self.assertEqual(history.floor, 7)
        self.assertEqual([c.revision for c in history.after(7)], [8, 9, 10])
        with self.assertRaises(HistoryGone) as raised:
            list(history.after(6))
        self.assertEqual((raised.exception.oldest, raised.exception.revision), (7, 10))

    def test_window_by_bytes(self):
        history = History(max_bytes=3 * 1000 + 3 * 200)
        _puts(history, range(1, 6), size=1000)
        self.assertEqual([c.revision for c in history.after(history.floor)], [3, 4, 5])
        self.assertEqual(history.floor, 2)
        # One change larger than the whole window is still kept, alone.
        history.append(Change(6, "big", b"x" * 10_000))
        self.assertEqual([c.revision for c in history.after(5)], [6])

    def test_long_run_keeps_order_and_memory(self):
        history = History(max_changes=100)
        _puts(history, range(1, 5001))
        self.assertEqual(len(history), 100)
        self.assertEqual(
            [c.revision for c in history.after(4950)], list(range(4951, 5001))
        )
        self.assertLess(len(history._changes), 2 * 1024 + 100)

    def test_restart_forgets_everything(self):
        history = History()
        _puts(history, [1, 2])
        history.restart(10)
        self.assertEqual((history.floor, history.revision, len(history)), (10, 10, 0))
        self.assertRaises(HistoryGone, history.check, 2)
        history.check(10)

    def test_events(self):
        put = Change(7, "clé", b"\xff\x00", "x/y")
        self.assertEqual(
            put.sse(True),
            b'id: 7\nevent: put\ndata: {"type":"put","key":"cl\\u00e9",'
            b'"revision":7,"content_type":"x/y","value":{"base64":"/wA="}}\n\n',
        )
        self.assertNotIn(b"value", put.sse(False))
        self.assertEqual(
            Change(8, "k", None).sse(True),
            b'id: 8\nevent: delete\ndata: {"type":"delete","key":"k","revision":8}\n\n',
        )
