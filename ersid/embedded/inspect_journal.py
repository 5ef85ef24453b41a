"""
C{python -m ersid.embedded.inspect_journal FILE}: list the entries of a
journal segment, and where it is damaged, if it is; it changes nothing.
"""

from __future__ import annotations

import sys

from ersid.embedded.journal_format import SegmentDamage, read_segment

__all__ = ["inspect"]


def inspect(path: str) -> int:
    """List a segment's entries, stopping at the first damage; the exit status."""
    count = 0
    try:
        for offset, entry in read_segment(path):
            kind = "delete" if entry.record is None else "set"
            print(f"{offset:>12} revision {entry.revision:>10} {kind:6} {entry.key!r}")
            count += 1
    except SegmentDamage as damage:
        print(f"journal {damage}; {damage.remaining} bytes after it", file=sys.stderr)
        return 1
    print(f"{count} entries, intact", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(inspect(sys.argv[1]))
