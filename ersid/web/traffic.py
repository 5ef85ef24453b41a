"""
What the API's connections count: requests by method and status, how long
they took, bytes in and out, connections open. Plain numbers on the hot
path, where a C{prometheus_client} counter's lock would cost more than
the rest of the counting; Prometheus reads them through L{Traffic.collect}.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

__all__ = ["DURATION_BUCKETS", "Traffic"]

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
_SUM = len(DURATION_BUCKETS) + 1
_UNTIMED = _SUM + 1
_FIRST = DURATION_BUCKETS[0]
_BOUNDS = (*(repr(bound) for bound in DURATION_BUCKETS), "+Inf")

# Methods counted by name; any other is counted as "other", so that a
# client cannot make a label value of its own.
_METHODS = frozenset(
    (b"GET", b"HEAD", b"PUT", b"POST", b"PATCH", b"DELETE", b"OPTIONS")
)


class Traffic:
    """
    The counts of one site's connections. A request's duration runs from
    when its last bytes were read (or, pipelined, its turn came) to when
    its response is handed to the socket, by the reactor's clock, which
    the connection reads for those anyway; a stream (C{/_watch}) is
    counted when it ends, without one: it lasts as long as its client
    watches.
    """

    def __init__(self) -> None:
        self.received = 0
        self.sent = 0
        self.opened = 0
        self.closed = 0
        # (method, status) -> the counts of each bucket, the sum, and the
        # count of streams, which are not timed.
        self._answers: dict[tuple[bytes, int], list[float]] = {}

    def answered(self, method: bytes, code: int, seconds: float, sent: int = 0) -> None:
        """Count a request answered with status C{code} in C{seconds}, and C{sent} bytes."""
        self.sent += sent
        try:
            counts = self._answers[method, code]
        except KeyError:
            counts = self._counts_of(method, code)
        # Most requests take less than the first bound: no search for them.
        if seconds <= _FIRST:
            counts[0] += 1
        else:
            counts[bisect_left(DURATION_BUCKETS, seconds)] += 1
        counts[_SUM] += seconds

    def untimed(self, method: bytes, code: int) -> None:
        """Count a request answered whose time was its client's: a stream, a refusal."""
        try:
            counts = self._answers[method, code]
        except KeyError:
            counts = self._counts_of(method, code)
        counts[_UNTIMED] += 1

    def _counts_of(self, method: bytes, code: int) -> list[float]:
        """The counts of a method and status first seen: those of "other" if unusual."""
        if method not in _METHODS:
            method = b"other"
        counts = self._answers.get((method, code))
        if counts is None:
            counts = self._answers[method, code] = [0] * _SUM + [0.0, 0]
        return counts

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "ersid_http_requests",
            "HTTP requests answered, by method and status.",
            labels=["method", "code"],
        )
        by_method: dict[str, list[float]] = {}
        for (method, code), counts in sorted(self._answers.items()):
            name = method.decode("ascii")
            requests.add_metric(
                [name, str(code)], sum(counts[:_SUM]) + counts[_UNTIMED]
            )
            total = by_method.setdefault(name, [0] * _SUM + [0.0])
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
            for bound, count in zip(_BOUNDS, counts[:_SUM], strict=True):
                running += count
                buckets.append((bound, running))
            durations.add_metric([name], buckets, counts[_SUM])
        yield durations
        yield CounterMetricFamily(
            "ersid_http_received_bytes", "Bytes read from clients.", self.received
        )
        yield CounterMetricFamily(
            "ersid_http_sent_bytes", "Bytes sent to clients.", self.sent
        )
        yield CounterMetricFamily(
            "ersid_http_connections", "Connections accepted.", self.opened
        )
        yield GaugeMetricFamily(
            "ersid_http_open_connections",
            "Connections open now.",
            self.opened - self.closed,
        )
