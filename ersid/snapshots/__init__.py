"""
Snapshots: the whole store in one file, written atomically on a timer and
loaded at startup; the dict backend's durable image, and a backup of any
other backend.

| module | what it holds |
| --- | --- |
| C{format} | the file's layout, and reading it |
| C{atomic} | files replaced atomically |
| C{fork} | work done in a forked child |
| C{writer} | L{Snapshotter}: one snapshot at a time, forked or cooperative |
| C{service} | L{SnapshotService}: the timer |
| C{streaming} | online backups streamed: L{IBackups}, and the dict backend's, forked |
| C{restore} | C{ersid restore}: a backup put where a new daemon starts from it |
"""

from ersid.snapshots.atomic import remove_stale_temporaries
from ersid.snapshots.format import SnapshotError, read_snapshot
from ersid.snapshots.service import SnapshotService
from ersid.snapshots.writer import SnapshotOutcome, Snapshotter, write_snapshot

__all__ = [
    "SnapshotError",
    "SnapshotOutcome",
    "SnapshotService",
    "Snapshotter",
    "read_snapshot",
    "remove_stale_temporaries",
    "write_snapshot",
]
