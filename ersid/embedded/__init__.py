"""
The embedded backend, Ersid's default: every record in the daemon's memory
(L{DictStorage}), made durable by a journal written before each write is
acknowledged and by snapshots that let the journal be cut short.

| module | what it holds |
| --- | --- |
| C{records} | L{PackedRecords}: the records, packed, sorted, many keys to a block |
| C{memory} | L{DictStorage}: the storage contract over them |
| C{undo} | the undoing of changes made in memory whose journal entries fail |
| C{journal_format} | the journal's entries and segment files, and reading them |
| C{journal} | L{Journal}: the writer thread, group commit, rotation |
| C{recovery} | the store as it was: snapshot, then journal replay |
| C{repair} | cutting off a torn last entry, the one repair made without asking |
| C{restore} | a backup put in an empty data directory, with its journal |
| C{journal_tool} | C{ersid-journal}: check, list and repair the journal |

L{open_embedded} is the one way in: it recovers the store from its files
and returns it with the service that keeps it durable.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred

from ersid.embedded.journal import FSYNC_POLICIES, Journal
from ersid.embedded.memory import DictStorage
from ersid.embedded.recovery import recover
from ersid.expiry import ExpiryIndex, Reaper
from ersid.snapshots import SnapshotService, Snapshotter, remove_stale_temporaries
from ersid.snapshots.fork import CAN_FORK
from ersid.snapshots.streaming import ForkedBackups
from ersid.startup import StartupError
from ersid.storage import OpenedStorage
from ersid.watch import Hub

__all__ = ["FSYNC_POLICIES", "DictStorage", "open_embedded"]


def open_embedded(
    data_dir: str,
    dump_file: str,
    fsync: str,
    dump_interval: float,
    hub: Hub,
    reap_interval: float,
    reactor: Any,
) -> OpenedStorage:
    """
    Recover the store from the snapshot C{dump_file} and the journal in
    C{data_dir}, and keep journaling into it with the C{fsync} policy and
    snapshotting it every C{dump_interval} seconds; its changes are
    published to C{hub}, whose history starts with those the journal
    replayed; its expired keys are removed within C{reap_interval}
    seconds. Blocking: call it before the reactor runs.

    @raise StartupError: if the store cannot be recovered.
    """
    remove_stale_temporaries(dump_file)
    expiry = ExpiryIndex(reap_interval / 2)
    recovered = recover(data_dir, dump_file, hub.history, expiry)
    try:
        journal = Journal(data_dir, recovered.revision, fsync, reactor)
    except OSError as e:
        raise StartupError(str(e)) from None
    hub.skip(recovered.revision)
    storage = DictStorage(
        recovered.records,
        recovered.revision,
        journal,
        hub.publish,
        hub.skip,
        clock=reactor,
        expiry=expiry,
    )
    snapshotter = Snapshotter(
        storage,
        dump_file,
        reactor,
        written_revision=recovered.snapshot_revision,
        covering=journal.rotate,
        fork_with=storage.durable_records,
    )

    def health() -> dict[str, Any]:
        journal_facts = {"fsync": journal.fsync, "error": journal.error}
        expiry_facts = {"interval": reap_interval, "pending": expiry.pending}
        return {
            **snapshotter.health(),
            "journal": journal_facts,
            "expiry": expiry_facts,
        }

    durability = _Durability(journal, SnapshotService(dump_interval, snapshotter))
    Reaper(storage.reap, reap_interval, reactor).setServiceParent(durability)
    collectors = (*storage.collectors, *journal.collectors, *snapshotter.collectors)
    return OpenedStorage(
        storage, [durability], health, collectors, _backups(storage, reactor)
    )


def _backups(storage: DictStorage, reactor: Any) -> ForkedBackups | None:
    """Backups forked, as the snapshots are, from what the journal has written."""
    if not CAN_FORK:
        return None
    return ForkedBackups(
        lambda: (storage.written_revision, storage.durable_records()), reactor
    )


class _Durability(MultiService):
    """
    The journal, the snapshot timer and the reaper. The journal runs from
    the start to the last snapshot, taken when the daemon stops, and is
    closed only then.
    """

    def __init__(self, journal: Journal, snapshots: SnapshotService) -> None:
        super().__init__()
        self.journal = journal
        snapshots.setServiceParent(self)

    def startService(self) -> None:
        self.journal.start()
        super().startService()

    def stopService(self) -> Deferred[None]:
        stopped = super().stopService()
        return stopped.addCallback(lambda _: self.journal.stop())
