"""
Repairs to the journal's files. Only one is made without asking: cutting
off a torn last entry, which a process that died while appending it leaves
behind, and which was never acknowledged.
"""

from __future__ import annotations

import os

from twisted.logger import Logger

from ersid.embedded.journal_format import SegmentDamage

__all__ = ["cut_segment", "cut_torn_tail"]

_log = Logger()


def cut_torn_tail(damage: SegmentDamage) -> None:
    """Truncate a segment before its torn last entry, durably, and say so."""
    assert damage.torn
    _log.warn(
        "Dropping a torn last entry of {path} at offset {offset} "
        "({problem}): the process stopped while writing it",
        path=damage.path,
        offset=damage.offset,
        problem=damage.problem,
    )
    cut_segment(damage.path, damage.offset)


def cut_segment(path: str, offset: int) -> None:
    """Truncate the segment at C{path} to C{offset} bytes, durably."""
    with open(path, "r+b") as f:
        f.truncate(offset)
        os.fsync(f.fileno())
