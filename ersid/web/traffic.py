"""
What the API's connections count: requests by method and status, how long
they took, bytes in and out, connections open. Plain numbers on the hot
path, where a C{prometheus_client} counter's lock would cost more than
the rest of the counting; Prometheus reads them through L{Traffic.collect}.

A I{tally} holds the counts of one method and status: one per bucket of
L{DURATION_BUCKETS} and one for C{+Inf}, then the sum of the durations
(at L{SUM}), then the count of answers not timed. Connections add to
tallies themselves on their fast path, as L{Traffic.answered} does: a
call would cost as much as the counting.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from functools import partial
from typing import Protocol

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

__all__ = ["DURATION_BUCKETS", "FASTEST", "SUM", "Reading", "Traffic", "bucket"]

# Upper bounds, in seconds, of the buckets of request durations.
DURATION_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
SUM = len(DURATION_BUCKETS) + 1
_UNTIMED = SUM + 1
# Most requests take less than the first bound: no search for them.
FASTEST = DURATION_BUCKETS[0]
# The index in a tally of a duration's bucket (a C call: no frame).
bucket = partial(bisect_left, DURATION_BUCKETS)
_BOUNDS = (*(repr(bound) for bound in DURATION_BUCKETS), "+Inf")

# Methods counted by name; any other is counted as "other", so that a
# client cannot make a label value of its own.
_METHODS = frozenset(
    (b"GET", b"HEAD", b"PUT", b"POST", b"PATCH", b"DELETE", b"OPTIONS")
)


class Reading(Protocol):
    """A connection, which counts the bytes it reads: it needs that count anyway."""

    received: int


class Traffic:
    """
    The counts of one site's connections. A request's duration runs from
    when its last bytes were read (or, pipelined, its turn came) to when
    its response is handed to the socket, by the reactor's clock, which
    the connection reads for those anyway; a stream (C{/_watch}) is
    counted when it ends, without one: it lasts as long as its client
    watches. Bytes read are counted by the connections, which need the
    count to bound heads: summed here when scraped or closed.

    @ivar answers: the tallies, by status and method.
    """

    def __init__(self) -> None:
        self.sent = 0
        self.accepted = 0
        self._open: set[Reading] = set()
        self._received_closed = 0
        # Status -> method -> tally. Status first: an int is hashed for
        # free, a method read from a request is not.
        self.answers: dict[int, dict[bytes, list[float]]] = {}

    @property
    def received(self) -> int:
        """Bytes read from clients, by connections open or closed."""
        return self._received_closed + sum(c.received for c in self._open)

    @property
    def open(self) -> int:
        """Connections open now."""
        return len(self._open)

    def opened(self, connection: Reading) -> None:
        """Count a connection accepted."""
        self.accepted += 1
        self._open.add(connection)

    def closed(self, connection: Reading) -> None:
        """Count a connection closed, and what it read."""
        if connection in self._open:  # once, however often it is told
            self._open.remove(connection)
            self._received_closed += connection.received

    def answered(self, method: bytes, code: int, seconds: float, sent: int = 0) -> None:
        """Count a request answered with status C{code} in C{seconds}, and C{sent} bytes."""
        self.sent += sent
        try:
            counts = self.answers[code][method]
        except KeyError:
            counts = self.tally(method, code)
        counts[0 if seconds <= FASTEST else bucket(seconds)] += 1
        counts[SUM] += seconds

    def untimed(self, method: bytes, code: int) -> None:
        """Count a request answered whose time was its client's: a stream, a refusal."""
        try:
            counts = self.answers[code][method]
        except KeyError:
            counts = self.tally(method, code)
        counts[_UNTIMED] += 1

    def tally(self, method: bytes, code: int) -> list[float]:
        """
        The tally of a method and status not in L{answers}: those of
        "other" if the method is unusual, made if new.
        """
        if method not in _METHODS:
            method = b"other"
        by_method = self.answers.setdefault(code, {})
        counts = by_method.get(method)
        if counts is None:
            counts = by_method[method] = [0] * SUM + [0.0, 0]
        return counts

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "ersid_http_requests",
            "HTTP requests answered, by method and status.",
            labels=["method", "code"],
        )
        by_method: dict[str, list[float]] = {}
        answers = (
            (method, code, counts)
            for code, tallies in self.answers.items()
            for method, counts in tallies.items()
        )
        for method, code, counts in sorted(answers):
            name = method.decode("ascii")
            requests.add_metric([name, str(code)], sum(counts[:SUM]) + counts[_UNTIMED])
            total = by_method.setdefault(name, [0] * SUM + [0.0])
            for i, count in enumerate(counts[:_UNTIMED]):
                total[i] += count
        yield requests
        durations = HistogramMetricFamily(
            "ersid_http_request_duration_seconds",
            "Seconds from a request's reading (or its turn) to its response "
            "handed to the socket.",
            labels=["method"],
        )
        for name, counts in by_method.items():
            buckets, running = [], 0.0
            for bound, count in zip(_BOUNDS, counts[:SUM], strict=True):
                running += count
                buckets.append((bound, running))
            durations.add_metric([name], buckets, counts[SUM])
        yield durations
        yield CounterMetricFamily(
            "ersid_http_received_bytes", "Bytes read from clients.", self.received
        )
        yield CounterMetricFamily(
            "ersid_http_sent_bytes", "Bytes sent to clients.", self.sent
        )
        yield CounterMetricFamily(
            "ersid_http_connections", "Connections accepted.", self.accepted
        )
        yield GaugeMetricFamily(
            "ersid_http_open_connections", "Connections open now.", self.open
        )
