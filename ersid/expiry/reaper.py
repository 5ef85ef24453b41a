"""
L{Reaper}: the service that removes expired keys, a slice at a time.

It ticks twice per interval by the monotonic clock, from a thread that
only sleeps and wakes the reactor: the reactor's own timers run by the
wall clock, and a clock set back an hour would hold them back an hour.
Each tick reaps one slice (the backend's C{reap}, which does as much as
fits in a few milliseconds, or one database transaction) and goes on
at the next reactor turn while the backend says more is due, so that a
million keys expiring at one instant never stall the reactor.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from ersid.storage import StorageUnavailable

__all__ = ["DEFAULT_REAP_INTERVAL", "Reaper"]

# The longest a key outlives its expiry, at most, when the reactor is free.
DEFAULT_REAP_INTERVAL = 0.2

_log = Logger()


class Reaper(Service):
    """
    Call C{reap} on every tick, and again at once while it returns, or
    fires with, C{True}: more is due. A failure is logged and the next tick
    tries again.

    @param monotonic: tick from a thread sleeping on the monotonic clock;
        if false, tick with C{reactor.callLater} (tests, with a C{Clock}).
    """

    name = "reaper"

    def __init__(
        self,
        reap: Callable[[], bool | Deferred[bool]],
        interval: float,
        reactor: Any,
        monotonic: bool = True,
    ) -> None:
        self._reap = reap
        self._interval = interval
        self._reactor = reactor
        self._monotonic = monotonic
        self._busy = False
        self._again: Any = None
        self._stop = threading.Event()
        self._looping: LoopingCall | None = None
        self._failing = False
        self.slices = 0

    def startService(self) -> None:
        super().startService()
        # A new event for each thread: one stopped but still asleep must
        # not be woken into ticking again by a quick restart.
        self._stop = threading.Event()
        if self._monotonic:
            threading.Thread(
                target=self._ticks, args=(self._stop,), name="ersid-reaper", daemon=True
            ).start()
        else:
            self._looping = LoopingCall(self.tick)
            self._looping.clock = self._reactor
            self._looping.start(self._interval / 2, now=False)

    def stopService(self) -> None:
        super().stopService()
        self._stop.set()
        if self._looping is not None and self._looping.running:
            self._looping.stop()
        if self._again is not None and self._again.active():
            self._again.cancel()

    def _ticks(self, stop: threading.Event) -> None:
        while not stop.wait(self._interval / 2):
            self._reactor.callFromThread(self.tick)

    def tick(self) -> None:
        """Reap what is due, unless a slice is under way."""
        if not self.running:
            return
        if self._again is not None and self._again.active():
            # The continuation waits on the wall clock: go on without it.
            self._again.cancel()
        elif self._busy:
            return
        self._slice()

    def _slice(self) -> None:
        self._again = None
        self._busy = True
        self.slices += 1
        maybeDeferred(self._reap).addCallbacks(self._sliced, self._failed)

    def _sliced(self, more: bool) -> None:
        self._busy = False
        if self._failing:
            self._failing = False
            _log.info("Reaping expired keys again")
        if more and self.running:
            self._again = self._reactor.callLater(0, self._slice)

    def _failed(self, failure: Any) -> None:
        self._busy = False
        if not self._failing:
            # Once, not every tick, until a slice succeeds again.
            self._failing = True
            if failure.check(StorageUnavailable):
                # Expected while the store is down: one line, no traceback.
                _log.warn(
                    "Reaping expired keys failed ({error}); trying at every tick",
                    error=str(failure.value),
                )
            else:
                _log.failure(
                    "Reaping expired keys failed; trying at every tick", failure
                )
