"""
L{Reaper}: ticks by a clock, slices that go on at the next reactor turn,
failures that stop no tick; and the dict backend's slices, which remove
expired keys a few milliseconds at a time.
"""

from __future__ import annotations

import threading

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from ersid.embedded.memory import DictStorage
from ersid.expiry import Reaper
from ersid.storage import StorageUnavailable
from ersid.watch import History, Hub

from .._helpers import captured_log


class _Work:
    """A reap that has C{due} slices of work, then none."""

    def __init__(self, due: int = 0) -> None:
        self.due = due
        self.calls = 0

    def __call__(self) -> bool:
        self.calls += 1
        if self.due:
            self.due -= 1
        return self.due > 0


class _SetBack(Clock):
    """
    A reactor's clock set back an hour just after anything is scheduled
    for its next turn: such calls wait an hour.
    """

    def callLater(self, delay, f, *args, **kw):
        return super().callLater(delay or 3600, f, *args, **kw)


class ReaperTests(TestCase):
    def setUp(self):
        self.clock = Clock()

    def reaper(self, reap, interval: float = 0.2) -> Reaper:
        reaper = Reaper(reap, interval, self.clock, monotonic=False)
        reaper.startService()
        self.addCleanup(reaper.stopService)
        return reaper

    def test_ticks_twice_an_interval(self):
        work = _Work()
        self.reaper(work, 0.2)
        self.clock.advance(0.1)
        self.assertEqual(work.calls, 1)
        self.clock.pump([0.1] * 9)
        self.assertEqual(work.calls, 10)

    def test_goes_on_at_once_while_more_is_due(self):
        work = _Work(due=5)
        self.reaper(work)
        self.clock.advance(0.1)
        self.assertEqual((work.calls, work.due), (5, 0))
        self.assertEqual(self.clock.getDelayedCalls()[0].getTime(), 0.2)

    def test_a_tick_runs_a_continuation_held_back_by_the_wall_clock(self):
        """
        A continuation waits on the reactor's wall-clock timers; a clock set
        back holds it. The next tick, by the monotonic clock, goes on.
        """
        self.clock = _SetBack()
        work = _Work(due=3)
        reaper = self.reaper(work)
        self.clock.advance(0.1)
        self.assertEqual(work.calls, 1)
        reaper.tick()  # from the monotonic thread
        self.assertEqual(work.calls, 2)
        reaper.tick()
        self.assertEqual((work.calls, work.due), (3, 0))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)  # the ticks' own

    def test_a_slice_under_way_is_not_started_twice(self):
        pending: list[Deferred[bool]] = []

        def reap() -> Deferred[bool]:
            pending.append(Deferred())
            return pending[-1]

        reaper = self.reaper(reap)
        self.clock.advance(0.1)
        reaper.tick()
        self.clock.advance(0.1)
        self.assertEqual(len(pending), 1)
        pending[0].callback(False)
        self.clock.advance(0.1)
        self.assertEqual(len(pending), 2)

    def test_failures_are_logged_once_and_every_tick_tries_again(self):
        logged = captured_log(self)
        failing = [True]
        calls = []

        def reap():
            calls.append(1)
            if failing[0]:
                return fail(RuntimeError("database down"))
            return False

        self.reaper(reap)
        self.clock.pump([0.1] * 5)
        self.assertEqual(len(calls), 5)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        failing[0] = False
        self.clock.advance(0.1)
        self.assertIn("Reaping expired keys again", logged)

    def test_a_store_down_is_one_line_without_a_traceback(self):
        logged = captured_log(self)
        self.reaper(lambda: fail(StorageUnavailable("database x: gone away")))
        self.clock.pump([0.1] * 3)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(
            [m for m in logged if "Reaping" in m],
            [
                "Reaping expired keys failed (database x: gone away); trying at every tick"
            ],
        )

    def test_the_monotonic_thread_wakes_the_reactor(self):
        """In the daemon, ticks come from a thread, through callFromThread."""
        ticked = threading.Event()

        class _Reactor:
            def callFromThread(self, f, *args):
                ticked.set()

        reaper = Reaper(lambda: False, 0.01, _Reactor())
        reaper.startService()
        self.addCleanup(reaper.stopService)
        self.assertTrue(ticked.wait(10))


class DictReapingTests(TestCase):
    def test_many_keys_due_at_once_are_removed_in_slices(self):
        """
        Forty thousand keys expiring at one instant take several slices,
        each a few milliseconds, all published as expiries in order.
        """
        clock = Clock()
        clock.advance(1_000)
        hub = Hub(History(0, 100_000), clock)
        storage = DictStorage(clock=clock, publish=hub.publish)
        for i in range(40_000):
            storage.set(f"k{i}", b"v", ttl=5)
        storage.set("lasting", b"v")
        clock.advance(5.2)
        slices = 1
        while storage.reap():
            slices += 1
        self.assertGreater(slices, 1)
        self.assertEqual(storage.keys().result.items, ["lasting"])
        expiries = [c for c in hub.history.after(40_001)]
        self.assertEqual(len(expiries), 40_000)
        self.assertEqual({c.kind for c in expiries}, {"expire"})
        self.assertEqual(storage.stats().result, (1, 80_001))

    def test_a_refreshed_key_is_not_reaped_at_its_old_time(self):
        clock = Clock()
        storage = DictStorage(clock=clock)
        storage.set("lock", b"me", ttl=1)
        storage.refresh("lock", 10)
        clock.advance(2)
        self.assertFalse(storage.reap())
        self.assertEqual(storage.get_now("lock").value, b"me")
        clock.advance(9)
        storage.reap()
        self.assertIsNone(storage.get_now("lock"))
        self.assertEqual(storage.stats().result, (0, 3))

    def test_a_closed_store_reaps_nothing(self):
        clock = Clock()
        storage = DictStorage(clock=clock)
        storage.set("k", b"v", ttl=1)
        storage.close()
        clock.advance(2)
        self.assertFalse(storage.reap())
        self.assertEqual(storage.stats().result, (1, 1))
