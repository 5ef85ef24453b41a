"""
L{SnapshotService}: snapshots on a timer that no failure can stop, and a
last one when the daemon stops.
"""

from __future__ import annotations

from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred

from ersid.snapshots.writer import Snapshotter

__all__ = ["SnapshotService"]


class SnapshotService(TimerService):
    """
    Snapshot every C{interval} seconds. When stopped, the store stops
    taking writes and one last snapshot is written, so that it holds every
    acknowledged write. A failed snapshot never stops the timer:
    L{Snapshotter} does not fail.
    """

    def __init__(self, interval: float, snapshotter: Snapshotter) -> None:
        super().__init__(interval, snapshotter.snapshot)
        self.snapshotter = snapshotter

    def stopService(self) -> Deferred[None]:
        stopped = super().stopService()

        async def last() -> None:
            await stopped
            await self.snapshotter.storage.close()
            await self.snapshotter.snapshot()

        return Deferred.fromCoroutine(last())
