"""The hub: fan-out by prefix, limits, progress ticks that cannot die."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from ersid.watch.history import Batch, Change, History
from ersid.watch.hub import Hub, IWatcher, TooManyWatchers


@implementer(IWatcher)
class _Watcher:
    def __init__(self, prefix: str, fail: bool = False) -> None:
        self.prefix = prefix
        self.seen: list[int] = []
        self.ticks: list[int] = []
        self.ended: list[str | None] = []
        self.batches: list[Batch] = []
        self.fail = fail

    def deliver(self, batch: Batch) -> None:
        if self.fail:
            raise RuntimeError("a broken watcher")
        self.seen.extend(change.revision for change in batch.changes)
        self.batches.append(batch)

    def tick(self, revision: int, progress: bytes) -> None:
        if self.fail:
            raise RuntimeError("a broken watcher")
        self.ticks.append(revision)

    def end(self, reason: str | None) -> None:
        self.ended.append(reason)


class HubTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.hub = Hub(History(), self.clock, progress_interval=5, max_watchers=3)

    def test_fan_out_by_prefix(self):
        everything, app, app_a, other = (
            _Watcher(""),
            _Watcher("app/"),
            _Watcher("app/a"),
            _Watcher("other"),
        )
        verifyObject(IWatcher, everything)
        self.hub.max_watchers = 10
        for watcher in (everything, app, app_a, other):
            self.hub.add(watcher)
        for revision, key in enumerate(["app/a1", "app/b", "ap", "other/x", "zzz"], 1):
            self.hub.publish([Change(revision, key, b"v")])
        self.assertEqual(everything.seen, [1, 2, 3, 4, 5])
        self.assertEqual(app.seen, [1, 2])
        self.assertEqual(app_a.seen, [1])
        self.assertEqual(other.seen, [4])
        self.hub.remove(app)
        self.hub.remove(app)  # twice: harmless
        self.hub.publish([Change(6, "app/a", None)])
        self.assertEqual((app.seen, app_a.seen), ([1, 2], [1, 6]))
        self.assertEqual(self.hub.revision, 6)

    def test_changes_published_together_are_joined_once_per_prefix(self):
        self.hub.max_watchers = 10
        first, second, other = _Watcher("p/"), _Watcher("p/"), _Watcher("q")
        for watcher in (first, second, other):
            self.hub.add(watcher)
        self.hub.publish(
            [Change(1, "p/1", b"a"), Change(2, "q1", b"b"), Change(3, "p/2", None)]
        )
        self.assertEqual((first.seen, second.seen, other.seen), ([1, 3], [1, 3], [2]))
        self.assertIs(first.batches[0], second.batches[0])
        events = first.batches[0].sse(False)
        self.assertIs(events, second.batches[0].sse(False))
        self.assertTrue(events.startswith(b"id: 1\nevent: put\n"))
        self.assertIn(b"id: 3\nevent: delete\n", events)

    def test_ticks_in_slices(self):
        self.hub.max_watchers = 1200
        watchers = [_Watcher(str(n)) for n in range(1200)]
        for watcher in watchers:
            self.hub.add(watcher)
        later, turns = self.clock.callLater, []

        def call_later(delay, f, *args):
            if args and isinstance(args[0], list):
                turns.append((delay, len(args[0])))  # the watchers left
            return later(delay, f, *args)

        self.clock.callLater = call_later
        self.hub.startService()
        self.clock.advance(5)
        self.assertEqual(sum(len(w.ticks) for w in watchers), 1200)
        # 500 ticked at once, then 500 in the next turn, then 200.
        self.assertEqual(turns[-2:], [(0, 700), (0, 200)])
        self.hub.stopService()

    def test_telling_takes_at_most_its_share_of_the_time(self):
        clock = self.clock

        class Slow(_Watcher):
            def deliver(self, batch: Batch) -> None:
                super().deliver(batch)
                clock.rightNow += 0.002  # telling it takes 2 ms

        watcher = Slow("")
        self.hub.telling_share = 0.2
        self.hub.add(watcher)
        self.hub.startService()
        self.hub.publish([Change(1, "a", b"")])  # after a quiet time: at once
        self.assertEqual(watcher.seen, [1])
        # It took 2 ms: the next is held 8 ms, to take a fifth of the time.
        self.hub.publish([Change(2, "b", b"")])
        self.hub.publish([Change(3, "c", b"")])
        self.assertEqual((watcher.seen, self.hub.told, self.hub.revision), ([1], 1, 3))
        clock.advance(0.0079)
        self.assertEqual(watcher.seen, [1])
        clock.advance(0.0001)
        self.assertEqual(watcher.seen, [1, 2, 3])
        self.assertEqual([len(b.changes) for b in watcher.batches], [1, 2])
        # A progress tick while a change is held claims only what was told.
        clock.advance(4.999 - clock.seconds())
        self.hub.publish([Change(4, "d", b"")])  # at once, then held 8 ms
        self.hub.publish([Change(5, "e", b"")])
        watcher.ticks.clear()
        clock.advance(0.002)  # the tick at 5 s
        self.assertEqual((watcher.ticks, watcher.seen[-1]), ([4], 4))
        clock.advance(0.01)
        self.assertEqual(watcher.seen[-1], 5)
        self.hub.publish([Change(6, "f", b"")])
        self.hub.publish([Change(7, "g", b"")])
        self.hub.stopService()  # what is held is told before the end
        self.assertEqual((watcher.seen[-1], watcher.ended), (7, [None]))

    def test_two_watchers_on_one_prefix(self):
        first, second = _Watcher("p"), _Watcher("p")
        self.hub.add(first)
        self.hub.add(second)
        self.hub.remove(first)
        self.hub.publish([Change(1, "p1", b"")])
        self.assertEqual((first.seen, second.seen), ([], [1]))

    def test_limit(self):
        watchers = [_Watcher(str(n)) for n in range(3)]
        for watcher in watchers:
            self.hub.add(watcher)
        self.assertRaises(TooManyWatchers, self.hub.add, _Watcher("x"))
        self.hub.remove(watchers[0])
        self.hub.add(_Watcher("x"))
        self.assertEqual(len(self.hub), 3)

    def test_broken_watcher_fails_neither_writes_nor_ticks(self):
        broken, good = _Watcher("", fail=True), _Watcher("")
        self.hub.add(broken)
        self.hub.add(good)
        self.hub.startService()
        self.hub.publish([Change(1, "k", b"")])
        self.assertEqual(good.seen, [1])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(len(self.hub), 1)  # the broken one was removed,
        self.assertIn("failed", broken.ended[0])  # and ended, not left silent
        self.hub.add(broken)
        self.clock.advance(5)
        self.clock.advance(5)
        self.assertEqual(good.ticks, [1, 1])  # the broken one ended at the first
        self.assertEqual(self.clock.getDelayedCalls()[0].getTime(), 15)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(len(broken.ended), 2)

    def test_stopping_ends_every_watcher(self):
        watcher = _Watcher("")
        self.hub.add(watcher)
        self.hub.startService()
        self.hub.stopService()
        self.assertEqual(watcher.ended, [None])

    def test_restart_ends_watchers_saying_why(self):
        watcher = _Watcher("")
        self.hub.add(watcher)
        self.hub.restart(100)
        self.assertIn("lost", watcher.ended[0])
        self.assertEqual(self.hub.history.floor, 100)
