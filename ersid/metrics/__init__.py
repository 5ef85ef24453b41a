"""
The daemon's metrics, for Prometheus at C{/_metrics}: L{Metrics} holds the
collectors each part of the daemon keeps (the connections' traffic, the
backend's journal, snapshots, queries and reaping, the watchers) in one
registry of the daemon's own, and reads the store's figures before each
scrape. The exposition format is C{prometheus_client}'s.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from ersid.storage import IStorage, StorageUnavailable

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

_log = Logger()

# Counters' and histograms' *_created series: a gauge each, which nobody
# graphs. Process-wide, as prometheus_client has it: Ersid is the process.
disable_created_metrics()


class Metrics:
    """
    A registry of the daemon's collectors, and the figures read before
    each scrape, off the reactor's back: the store's keys and revision,
    which only the storage knows (MySQL answers late), and the process's
    CPU, memory and open files (counting 10,000 open files takes 10 ms),
    unless C{process} is false.
    """

    def __init__(
        self,
        storage: IStorage,
        collectors: Iterable[Any] = (),
        reactor: Any = None,
        process: bool = True,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.registry = CollectorRegistry(auto_describe=True)
        self._reactor = reactor
        self._storage = storage
        self._store = _StoreFigures()
        self._process = _ProcessFigures() if process else None
        for collector in (self._store, *collectors):
            self.registry.register(collector)
        if self._process is not None:
            self.registry.register(self._process)

    async def render(self) -> bytes:
        """The metrics in Prometheus's text format, the figures fresh."""
        if self._process is not None:
            await self._process.fresh(self._reactor)
        store = self._store
        try:
            store.keys, store.revision = await self._storage.stats()
            store.up = 1
        except StorageUnavailable:
            store.up = 0
        return generate_latest(self.registry)


class _ProcessFigures:
    """
    C{prometheus_client}'s figures of the process, read in a thread at most
    once a second: scrapes in a burst share one reading, and leave the
    thread pool (the journal's fsyncs) alone.
    """

    def __init__(self) -> None:
        self._reader = ProcessCollector(registry=None)
        self._families: list[Metric] = []
        self._read_at = float("-inf")
        self._reading: Deferred[None] | None = None

    def fresh(self, reactor: Any) -> Deferred[None]:
        """Fire once the figures are at most a second old."""
        if self._reading is None:
            if reactor.seconds() - self._read_at < 1:
                return succeed(None)
            self._read_at = reactor.seconds()
            pool = reactor.getThreadPool()
            self._reading = deferToThreadPool(reactor, pool, self._read)
            self._reading.addBoth(self._done)
        waiting: Deferred[None] = Deferred()
        self._reading.addBoth(lambda result: waiting.callback(None) or result)
        return waiting

    def _read(self) -> None:
        self._families = list(self._reader.collect())

    def _done(self, result: Any) -> None:
        self._reading = None
        if isinstance(result, Failure):
            _log.failure("Reading the process's figures failed", result)

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


class _StoreFigures:
    """The store's figures, as last read."""

    keys = 0
    revision = 0
    up = 0

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "ersid_store_up", "Whether the storage answered (1) or not (0).", self.up
        )
        if self.up:
            yield GaugeMetricFamily("ersid_store_keys", "Keys stored.", self.keys)
            yield GaugeMetricFamily(
                "ersid_store_revision", "The store's revision.", self.revision
            )
