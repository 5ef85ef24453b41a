"""
Expiry: keys written with a time to live are removed once their time has
come, by a L{Reaper} that each backend gives the work of one slice.

| module | what it holds |
| --- | --- |
| C{index} | L{ExpiryIndex}: the dict backend's keys by when they expire, a few bytes a key |
| C{counts} | L{ReapCounts}: keys expired and how late, for C{/_metrics} |
| C{reaper} | L{Reaper}: ticks by the monotonic clock, reaps in slices that never stall the reactor |
"""

from ersid.expiry.counts import ReapCounts
from ersid.expiry.index import ExpiryIndex
from ersid.expiry.reaper import DEFAULT_REAP_INTERVAL, Reaper

__all__ = ["DEFAULT_REAP_INTERVAL", "ExpiryIndex", "ReapCounts", "Reaper"]
