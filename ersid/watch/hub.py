"""
L{Hub}: where acknowledged changes are published, kept in the L{History},
and handed to the watchers whose prefix they match, found by prefix (a
dictionary lookup per prefix length in use), not by testing every watcher.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from zope.interface import Attribute, Interface

from ersid.watch.history import Batch, Change, History, event

__all__ = [
    "DEFAULT_LAG_BYTES",
    "DEFAULT_MAX_WATCHERS",
    "DEFAULT_PROGRESS_INTERVAL",
    "Hub",
    "IWatcher",
    "TooManyWatchers",
    "WatchedStore",
]

DEFAULT_PROGRESS_INTERVAL = 5.0
# Under load, the most of the reactor's time telling watchers may take:
# after a telling that took t seconds, the changes published are held for
# t * (1 - share) / share, then told together; never longer than this.
DEFAULT_TELLING_SHARE = 0.1
_LONGEST_HOLD = 0.1
DEFAULT_MAX_WATCHERS = 20_000
DEFAULT_LAG_BYTES = 4 * 1024 * 1024

_log = Logger()

# Watchers ticked in one reactor turn.
_TICK_SLICE = 500


class IWatcher(Interface):
    """Something told of the changes to keys under a prefix."""

    prefix = Attribute("The watcher wants changes to keys starting with this.")

    def deliver(batch: Batch) -> None:
        """Changes to keys under the prefix, newer than any before."""

    def tick(revision: int, progress: bytes) -> None:
        """
        The progress interval passed; C{revision} is the newest change
        published, and C{progress} its progress event. A watcher that was
        sent nothing since the last tick says so to its client.
        """

    def end(reason: str | None) -> None:
        """
        The watcher must stop: the history lost changes it had to send
        (C{reason} says why), or the server is stopping (C{None}).
        """


class TooManyWatchers(Exception):
    """The daemon holds as many watchers as it was told to."""


class Hub(Service):
    """
    The changes of the store as they are acknowledged, for its watchers.

    @ivar history: the recent changes, to resume from.
    @ivar dropped: how many watchers were dropped for reading too slowly.
    @ivar ready: whether the history is known (a MySQL node's is not until
        it has read the change log once).
    """

    ready = True
    # Whether the history is the store's own, and a revision past it was
    # never acknowledged (else, a MySQL node, it may not have read it yet).
    exact = True

    def __init__(
        self,
        history: History,
        clock: Any,
        progress_interval: float = DEFAULT_PROGRESS_INTERVAL,
        max_watchers: int = DEFAULT_MAX_WATCHERS,
        lag_bytes: int = DEFAULT_LAG_BYTES,
        telling_share: float = DEFAULT_TELLING_SHARE,
    ) -> None:
        self.history = history
        self.clock = clock
        self.progress_interval = progress_interval
        self.max_watchers = max_watchers
        self.lag_bytes = lag_bytes
        self.dropped = 0
        self._watchers: set[Any] = set()
        self._by_prefix: dict[str, set[Any]] = {}
        # The lengths of the prefixes watched, ascending, and how many
        # prefixes have each: a change is looked up once per length.
        self._lengths: list[int] = []
        self._length_counts: dict[int, int] = {}
        self._next_slice: Any = None
        self.telling_share = telling_share
        self._pending: list[Change] = []
        self._flush: Any = None
        self._next_telling = float("-inf")
        self._ticks = LoopingCall(self._tick)
        self._ticks.clock = clock
        self.told_events = 0
        self._pending_since = 0.0
        self.lag = Histogram(
            "ersid_watch_delivery_lag_seconds",
            "Seconds from a change's publication in this daemon to its telling "
            "to the watchers.",
            buckets=(0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
            registry=None,
        )
        self.collectors = (self.lag, _Counts(self))

    @property
    def revision(self) -> int:
        """The newest change published."""
        return self.history.revision

    def __len__(self) -> int:
        return len(self._watchers)

    def startService(self) -> None:
        super().startService()
        self._ticks.start(self.progress_interval, now=False)

    def stopService(self) -> Any:
        if self._ticks.running:
            self._ticks.stop()
        if self._next_slice is not None and self._next_slice.active():
            self._next_slice.cancel()
        if self._pending:
            self._tell()
        for watcher in list(self._watchers):
            watcher.end(None)
        super().stopService()
        # Their last words must be sent before the reactor drops every
        # connection, as it does when it stops: two turns, for the first
        # may come before the reactor next writes.
        return deferLater(self.clock, 0).addCallback(
            lambda _: deferLater(self.clock, 0)
        )

    def publish(self, changes: list[Change]) -> None:
        """
        Changes are acknowledged, in revision order: keep them, and tell
        their watchers: at once, unless the last telling was so recent that
        telling again would take more than C{telling_share} of the time;
        then with the others that come meanwhile. A hundred streams written
        for each write would cost more than the write.
        """
        history = self.history
        for change in changes:
            history.append(change)
        if not self._watchers:
            return
        if not self._pending:
            self._pending_since = self.clock.seconds()
        self._pending.extend(changes)
        if self._flush is None:
            wait = self._next_telling - self.clock.seconds()
            if wait > 0:
                self._flush = self.clock.callLater(wait, self._tell)
            else:
                self._tell()

    @property
    def told(self) -> int:
        """The revision up to which every watcher was told of every change."""
        if self._pending:
            return self._pending[0].revision - 1
        return self.history.revision

    def _tell(self) -> None:
        """Tell the watchers of the changes published since the last time."""
        if self._flush is not None and self._flush.active():
            self._flush.cancel()
        self._flush = None
        started = self.clock.seconds()
        if self._pending:
            self.lag.observe(max(0.0, started - self._pending_since))
        changes, self._pending = self._pending, []
        by_prefix = self._by_prefix
        lengths = self._lengths
        matched: dict[str, list[Change]] = {}
        for change in changes:
            key = change.key
            size = len(key)
            for length in lengths:
                if length > size:
                    break
                prefix = key[:length]
                if prefix in by_prefix:
                    same = matched.get(prefix)
                    if same is None:
                        matched[prefix] = [change]
                    else:
                        same.append(change)
        for prefix, same in matched.items():
            batch = Batch(same)
            watchers = list(by_prefix.get(prefix, ()))
            self.told_events += len(same) * len(watchers)
            for watcher in watchers:
                # A failing watcher must not fail the writes it is told of.
                try:
                    watcher.deliver(batch)
                except Exception:
                    self._failed(watcher)
        now = self.clock.seconds()
        share = self.telling_share
        hold = min(_LONGEST_HOLD, (now - started) * (1 - share) / share)
        self._next_telling = now + hold

    def skip(self, revision: int) -> None:
        """
        The revisions up to C{revision} not published were taken by writes
        that were then refused: the history has every change up to it.
        """
        self.history.advance(revision)

    def restart(self, floor: int) -> None:
        """
        The changes up to C{floor} cannot be had (the change log lost them
        before they were read): every watcher ends, and the history starts
        again after C{floor}.
        """
        self.history.restart(floor)
        for watcher in list(self._watchers):
            watcher.end(f"changes up to revision {floor} were lost before being read")

    def add(self, watcher: Any) -> None:
        """
        Tell C{watcher} of the changes under its prefix from now on.

        @raise TooManyWatchers: if the daemon holds C{max_watchers} already.
        """
        if len(self._watchers) >= self.max_watchers:
            raise TooManyWatchers(
                f"this server holds its maximum of {self.max_watchers} watchers"
            )
        self._watchers.add(watcher)
        prefix = watcher.prefix
        same = self._by_prefix.get(prefix)
        if same is None:
            same = self._by_prefix[prefix] = set()
            count = self._length_counts.get(len(prefix), 0)
            self._length_counts[len(prefix)] = count + 1
            if not count:
                self._lengths = sorted(self._length_counts)
        same.add(watcher)

    def remove(self, watcher: Any) -> None:
        """Stop telling C{watcher} of changes; it may be gone already."""
        if watcher not in self._watchers:
            return
        self._watchers.discard(watcher)
        prefix = watcher.prefix
        same = self._by_prefix[prefix]
        same.discard(watcher)
        if not same:
            del self._by_prefix[prefix]
            length = len(prefix)
            self._length_counts[length] -= 1
            if not self._length_counts[length]:
                del self._length_counts[length]
                self._lengths = sorted(self._length_counts)

    def _tick(self) -> None:
        revision = self.told
        progress = event("progress", {"revision": revision}, revision)
        self._tick_some(list(self._watchers), revision, progress)

    def _tick_some(self, watchers: list[Any], revision: int, progress: bytes) -> None:
        """
        Tick C{watchers}, a slice a reactor turn: ten thousand at once would
        hold up every request for tens of milliseconds.
        """
        for watcher in watchers[:_TICK_SLICE]:
            # One watcher's failure must not end the others' progress, nor
            # the timer (a LoopingCall stops at its first exception).
            try:
                watcher.tick(revision, progress)
            except Exception:
                self._failed(watcher)
        self._next_slice = None
        if len(watchers) > _TICK_SLICE:
            rest = watchers[_TICK_SLICE:]
            self._next_slice = self.clock.callLater(
                0, self._tick_some, rest, revision, progress
            )

    def _failed(self, watcher: Any) -> None:
        """A watcher failed (a bug): it ends, saying so, rather than go silent."""
        _log.failure("Watcher {watcher} failed", watcher=watcher)
        self.remove(watcher)
        try:
            watcher.end("the server failed to send an event; see its log")
        except Exception:
            _log.failure("Watcher {watcher} failed to end", watcher=watcher)

    def health(self) -> dict[str, Any]:
        """What C{/_health} shows of the watchers and the history."""
        return {
            "watchers": len(self._watchers),
            "dropped_slow": self.dropped,
            "history": {
                "oldest": self.history.floor,
                "revision": self.history.revision,
                "changes": len(self.history),
                "bytes": self.history.bytes,
            },
        }


class _Counts:
    """The hub's watchers and what they were told, for C{/_metrics}."""

    def __init__(self, hub: Hub) -> None:
        self._hub = hub

    def collect(self) -> Iterator[Metric]:
        hub = self._hub
        yield GaugeMetricFamily("ersid_watchers", "Watchers held now.", len(hub))
        yield CounterMetricFamily(
            "ersid_watchers_dropped",
            "Watchers ended for reading too slowly.",
            hub.dropped,
        )
        yield CounterMetricFamily(
            "ersid_watch_events",
            "Changes handed to watchers (one per change and watcher).",
            hub.told_events,
        )


class WatchedStore(MultiService):
    """
    The services that keep a store, and the hub of its watchers, which ends
    every watch only once they have stopped: after the last write is
    published and the last snapshot taken, so that each client is told the
    revision the restarted history starts at.
    """

    def __init__(self, services: Sequence[IService], hub: Hub) -> None:
        super().__init__()
        self.hub = hub
        for service in services:
            service.setServiceParent(self)

    def startService(self) -> None:
        super().startService()
        self.hub.startService()

    def stopService(self) -> Deferred[None]:
        stopped = super().stopService()
        return stopped.addCallback(lambda _: self.hub.stopService())
