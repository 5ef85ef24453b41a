"""
L{ChangeFeed}: how a node's watchers learn of the changes made through
every node sharing the database: one query of the change log per interval
for all of them (and one at once after a write through this node), and
trimming of the log to the newest changes.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from ersid.mysql.change_log import ChangeLog
from ersid.mysql.storage import MySQLStorage
from ersid.storage import StorageUnavailable
from ersid.watch import Hub

__all__ = ["ChangeFeed"]


_log = Logger()

# Changes read per query; a node behind by more reads again at once.
_BATCH = 1000
# Polls between two trims of the log.
_POLLS_PER_TRIM = 10


class ChangeFeed(Service):
    """
    Publish to C{hub} the changes in the log of C{storage}'s database, in
    revision order, whichever node made them, every C{interval} seconds;
    keep the log to the hub's history size, and to the last C{age} seconds
    if given.
    """

    def __init__(
        self,
        storage: MySQLStorage,
        hub: Hub,
        interval: float,
        clock: Any,
        age: float | None = None,
    ) -> None:
        self.storage = storage
        self.age = age
        self.hub = hub
        self.interval = interval
        self._started = False
        self._polling = False
        self._again = False
        self._waiting: list[Deferred[None]] = []
        self._polls = 0
        self._failing: str | None = None
        self._timer = LoopingCall(self.poll)
        self._timer.clock = clock
        storage.committed = self._committed
        # Until the log is read, the history is unknown: watches must wait;
        # and a client may know of a revision this node has yet to read.
        hub.ready = hub.exact = False

    def startService(self) -> None:
        super().startService()
        self._timer.start(self.interval)

    def stopService(self) -> Any:
        if self._timer.running:
            self._timer.stop()
        super().stopService()
        return self.poll() if self._polling else None

    def _committed(self) -> None:
        """A write through this node: its watchers hear of it at once."""
        if len(self.hub):
            self.poll()

    def poll(self) -> Deferred[None]:
        """
        Read the log now, or, if a read is under way, once more after it:
        one read at a time, however many writes ask. Fires once a read
        begun after this call is done.
        """
        done: Deferred[None] = Deferred()
        self._waiting.append(done)
        if self._polling:
            self._again = True
        else:
            self._polling = True
            Deferred.fromCoroutine(self._poll())
        return done

    async def _poll(self) -> None:
        try:
            while True:
                self._again = False
                got = await self._read()
                self._polls += 1
                if self._polls % _POLLS_PER_TRIM == 0:
                    await self.storage.trim_change_log(
                        self.hub.history.max_changes, self.age
                    )
                if got < _BATCH and not self._again:
                    break
            if self._failing is not None:
                _log.info("The change log can be read again")
                self._failing = None
        except StorageUnavailable as e:
            if self._failing != str(e):
                _log.warn("Cannot read the change log: {error}", error=str(e))
            self._failing = str(e)
        except Exception:
            # The timer must not die of one error, nor watchers stop at it.
            _log.failure("Reading the change log failed")
        finally:
            self._polling = False
            waiting, self._waiting = self._waiting, []
            for done in waiting:
                done.callback(None)

    async def _read(self) -> int:
        hub = self.hub
        if not self._started:
            log = await self.storage.change_log(None, hub.history.max_changes)
            self._started = hub.ready = True
            hub.history.restart(max(log.floor, self._first_revision(log) - 1))
        else:
            log = await self.storage.change_log(hub.revision, _BATCH)
            if self._gap(log):
                hub.restart(self._first_revision(log) - 1)
        if log.changes:
            hub.publish(log.changes)
        return len(log.changes)

    def _gap(self, log: ChangeLog) -> bool:
        """
        Were changes after the hub's revision trimmed before it read them?
        Revisions in the log have no holes: a write that rolls back gives
        its revision back.
        """
        if not log.changes:
            return log.floor > self.hub.revision
        return log.changes[0].revision != self.hub.revision + 1

    @staticmethod
    def _first_revision(log: ChangeLog) -> int:
        return log.changes[0].revision if log.changes else log.revision + 1
