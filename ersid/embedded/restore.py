"""
Restoring a backup for the dict backend (C{ersid restore FILE --data-dir
DIR}): the snapshot file copied to where the daemon loads it, with the
empty journal segment that starts at its revision. A daemon refuses a
snapshot without its journal (the sign of a data directory moved or
lost, see L{ersid.embedded.recovery}); this is how one says "start from
the snapshot alone".
"""

from __future__ import annotations

import os

from ersid.embedded.journal_format import segment_path, segments
from ersid.files import claim_files, create_private, sync_directory
from ersid.snapshots.atomic import AtomicFile
from ersid.snapshots.format import read_snapshot
from ersid.snapshots.restore import RestoreRefused

__all__ = ["restore_data_dir"]

_CHUNK = 1 << 20


def restore_data_dir(
    path: str, data_dir: str, dump_file: str | None = None
) -> tuple[int, int]:
    """
    Put the snapshot at C{path} in the data directory C{data_dir}, which
    must hold no store yet, as C{dump_file} (by default the daemon's
    C{snapshot.json} in it), holding the daemon's locks meanwhile. Blocking.

    @return: the number of keys restored and the snapshot's revision.
    @raise RestoreRefused: if the directory holds a store, or there is no
        file at C{path}.
    @raise SnapshotError: if it is not a whole snapshot.
    @raise StartupError: if the directory cannot be had (a daemon uses it).
    @raise OSError: if a file cannot be read or written.
    """
    if dump_file is None:
        dump_file = os.path.join(data_dir, "snapshot.json")
    claimed = claim_files(data_dir, dump_file)
    try:
        if segments(data_dir) or os.path.lexists(claimed.dump_file):
            raise RestoreRefused(
                f"{data_dir} holds a store already (a snapshot or a journal): a "
                "backup is restored into an empty data directory"
            )
        read = read_snapshot(path, _nothing, _nothing)
        if read is None:
            raise RestoreRefused(f"no such file: {path}")
        revision, count = read
        target = AtomicFile(claimed.dump_file)
        try:
            with open(path, "rb") as backup:
                while chunk := backup.read(_CHUNK):
                    target.write(chunk)
            target.commit()
        except BaseException:
            target.abort()
            raise
        create_private(segment_path(data_dir, revision))
        sync_directory(data_dir)
    finally:
        for lock in claimed.locks:
            lock.release()
    return count, revision


def _nothing(*_: object) -> None:
    """What is read is only checked, not kept."""
