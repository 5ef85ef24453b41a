"""
L{SnapshotService}: snapshots on a timer that no failure can stop, and a
last one when the daemon stops.
"""

from __future__ import annotations

from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred

from ersid.snapshots.writer import Snapshotter

__all__ = ["SnapshotService"]


# Seconds the last snapshot may take before the daemon stops without it.
LAST_SNAPSHOT_SECONDS = 60.0


class SnapshotService(TimerService):
    """
    Snapshot every C{interval} seconds. When stopped, the store stops
    taking writes and one last snapshot is written, so that it holds every
    acknowledged write (for a quick restart: the journal holds them too).
    A snapshot under way is abandoned first, and the last one too if it
    takes over C{LAST_SNAPSHOT_SECONDS}: stopping never waits on a child
    that is stuck. A failed snapshot never stops the timer: L{Snapshotter}
    does not fail.
    """

    def __init__(self, interval: float, snapshotter: Snapshotter) -> None:
        super().__init__(interval, snapshotter.snapshot)
        self.snapshotter = snapshotter

    def stopService(self) -> Deferred[None]:
        # The timer's stop waits for a snapshot under way: abandon it first.
        self.snapshotter.abandon()
        stopped = super().stopService()

        async def last() -> None:
            await stopped
            await self.snapshotter.storage.close()
            deadline = self.snapshotter.abandon_after(LAST_SNAPSHOT_SECONDS)
            await self.snapshotter.snapshot()
            if deadline.active():
                deadline.cancel()

        return Deferred.fromCoroutine(last())
