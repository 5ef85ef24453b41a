"""
L{ReapCounts}: what the backends' reaping tells Prometheus: keys expired,
and how late the most overdue key of each slice was removed.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

__all__ = ["ReapCounts"]


class ReapCounts:
    """The counts of one store's reaping, for C{/_metrics}."""

    def __init__(self) -> None:
        self.expired = Counter(
            "ersid_keys_expired",
            "Keys removed because their time to live ran out.",
            registry=None,
        )
        self.lag = Histogram(
            "ersid_expiry_lag_seconds",
            "Seconds the most overdue key of a reaping slice outlived its expiry.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=None,
        )
        self.collectors = (self.expired, self.lag)

    def reaped(self, keys: int, most_late: float) -> None:
        """A slice removed C{keys} keys, the most overdue C{most_late} seconds late."""
        if keys:
            self.expired.inc(keys)
            self.lag.observe(max(0.0, most_late))
