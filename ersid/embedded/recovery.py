"""
Recovery: the dict backend's records as they were when the daemon last
stopped, from the snapshot and the journal entries newer than it.

A torn last entry, left by a process that died while appending it, is cut
off with a warning (the one repair done without asking, see
L{ersid.embedded.repair}); damage anywhere else stops the start with a
message saying how to inspect and repair it.
"""

from __future__ import annotations

import gc
import struct
import time
from collections.abc import Iterator

import attrs
from twisted.logger import Logger

from ersid.embedded.journal_format import (
    JournalEntry,
    SegmentDamage,
    read_segment,
    segment_path,
    segment_start,
    segments,
)
from ersid.embedded.packing import pack_record
from ersid.embedded.records import PackedRecords
from ersid.embedded.repair import cut_torn_tail
from ersid.expiry import ExpiryIndex
from ersid.snapshots import SnapshotError, read_snapshot
from ersid.startup import StartupError
from ersid.watch.history import Change, History

__all__ = ["JournalCorrupt", "Recovered", "load_snapshot", "read_journal", "recover"]

_log = Logger()


class JournalCorrupt(Exception):
    """
    A journal is damaged before its end; starting would silently drop the
    entries after the damage, so Ersid refuses. The message says what to do.
    """


@attrs.frozen
class Recovered:
    """
    The records recovered, the revision they are at, and that of the
    snapshot on disk (C{None} without one).
    """

    records: PackedRecords
    revision: int
    snapshot_revision: int | None


def load_snapshot(
    path: str, expiry: ExpiryIndex | None = None
) -> tuple[PackedRecords, int] | None:
    """
    The records of the snapshot at C{path}, packed as a L{DictStorage}
    keeps them, and its revision; or C{None} if there is no file. The keys
    with a time to live go to C{expiry}.

    @raise SnapshotError: if the file cannot be read or is corrupt.
    """
    records = PackedRecords()
    expiring = None if expiry is None else expiry.add
    read = read_snapshot(path, pack_record, records.put_packed, expiring)
    if read is None:
        return None
    revision, count = read
    if len(records) != count:
        raise SnapshotError(
            f"snapshot {path} is corrupt: it holds {len(records)} keys, not "
            f"{count}; restore it from a backup"
        )
    return records, revision


def read_journal(directory: str, after: int) -> Iterator[JournalEntry]:
    """
    The entries of every segment in C{directory} newer than revision
    C{after}, in order, cutting off a torn last entry. Blocking: call it
    before the reactor runs.

    @raise JournalCorrupt: if a segment is damaged other than at its end.
    """
    paths = segments(directory)
    for number, path in enumerate(paths):
        try:
            for _, entry in read_segment(path):
                if entry.revision > after:
                    yield entry
        except SegmentDamage as damage:
            if not (damage.torn and number == len(paths) - 1):
                raise JournalCorrupt(_corruption_advice(damage)) from None
            cut_torn_tail(damage)


def _corruption_advice(damage: SegmentDamage) -> str:
    path, offset = damage.path, damage.offset
    return (
        f"journal {path} is damaged at offset {offset}: {damage.problem}, with "
        f"{damage.remaining} bytes after it. Ersid will not start and silently "
        f"lose the entries after the damage. Inspect it with: ersid-journal check "
        f"{path}; to keep only the entries before the damage (the original kept "
        f"as {path}.bak): ersid-journal repair {path} --backup"
    )


def _check_continuity(
    data_dir: str, dump_file: str, snapshot_revision: int | None
) -> None:
    """
    Refuse a journal that starts after the revision the snapshot holds:
    the changes between the two are in neither (the snapshot was moved,
    lost, or restored from an older backup), and starting would drop them
    now and delete the journal that holds the rest at the next snapshot.
    """
    paths = segments(data_dir)
    if not paths:
        if snapshot_revision is None:
            return  # a new store
        raise JournalCorrupt(
            f"the snapshot {dump_file} holds revisions up to {snapshot_revision}, "
            f"but {data_dir} holds no journal: the changes after it are missing "
            "(was --data-dir changed?). Ersid will not start with part of your "
            "data; to start from a backup, restore it into an empty data "
            "directory with: ersid restore FILE --data-dir DIR; to start from this "
            "snapshot alone, give it an empty journal: touch "
            f"{segment_path(data_dir, snapshot_revision)}"
        )
    start = segment_start(paths[0])
    if start <= (snapshot_revision or 0):
        return
    if snapshot_revision is None:
        found = f"there is no snapshot at {dump_file}"
    else:
        found = (
            f"the snapshot {dump_file} holds only revisions up to {snapshot_revision}"
        )
    raise JournalCorrupt(
        f"the journal in {data_dir} starts after revision {start}, but {found}: "
        "the changes before it are missing. Ersid will not start with part of "
        "your data; put the snapshot that holds revision "
        f"{start} back at {dump_file} (or point --dump-file at it)"
    )


def recover(
    data_dir: str,
    dump_file: str,
    history: History | None = None,
    expiry: ExpiryIndex | None = None,
) -> Recovered:
    """
    Load the snapshot, if there is one, and replay the journal entries newer
    than it, which become the changes of C{history}, if given; the keys
    with a time to live go to C{expiry}, if given. Blocking: call it
    before the reactor runs. Keys past their expiry are recovered as they
    are: the reaper removes them, journaled, once the daemon runs.

    @raise StartupError: if the snapshot or the journal cannot be read.
    """
    # A store of millions of objects loads twice as fast without the cyclic
    # garbage collector reacting to every allocation; and as it lives as
    # long as the daemon, it is then frozen out of the collector's walks,
    # which would otherwise stall the reactor for a tenth of a second.
    gc.disable()
    try:
        recovered = _recover(
            data_dir,
            dump_file,
            History() if history is None else history,
            ExpiryIndex(1) if expiry is None else expiry,
        )
    except (OSError, ValueError, struct.error, SnapshotError, JournalCorrupt) as e:
        raise StartupError(str(e)) from None
    finally:
        gc.enable()
    gc.collect()
    gc.freeze()
    return recovered


def _recover(
    data_dir: str, dump_file: str, history: History, expiry: ExpiryIndex
) -> Recovered:
    started = time.monotonic()
    loaded = load_snapshot(dump_file, expiry)
    records, revision = loaded if loaded is not None else (PackedRecords(), 0)
    _log.info(
        "Loaded {count} keys at revision {revision} from {path} in {seconds:.2f} s",
        count=len(records),
        revision=revision,
        path=dump_file
        if loaded is not None
        else f"{dump_file} (absent: starting empty)",
        seconds=time.monotonic() - started,
    )
    snapshot_revision = revision if loaded is not None else None
    _check_continuity(data_dir, dump_file, snapshot_revision)
    history.restart(revision)
    replayed = 0
    for entry in read_journal(data_dir, after=revision):
        record = entry.record
        if record is None:
            records.pop(entry.key, None)
            history.append(
                Change(entry.revision, entry.key, None, expired=entry.expired)
            )
        else:
            records[entry.key] = record
            if record.expires is not None:
                expiry.add(entry.key, record.expires)
            history.append(
                Change(
                    entry.revision,
                    entry.key,
                    record.value,
                    record.content_type,
                    record.expires,
                )
            )
        revision = entry.revision
        replayed += 1
    if replayed:
        _log.info(
            "Replayed {count} journal entries, up to revision {revision}",
            count=replayed,
            revision=revision,
        )
    # Revisions taken by writes that were then refused leave no entry, but
    # a segment may be named after one (its snapshot failed): revisions go
    # on from past it, so that none is handed out twice and segments keep
    # their order.
    paths = segments(data_dir)
    if paths:
        revision = max(revision, segment_start(paths[-1]))
    return Recovered(records, revision, snapshot_revision)
