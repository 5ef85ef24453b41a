"""
Opening the MySQL backend: connect, check the schema, and sort what goes
wrong into what stops the start (refused credentials, a missing schema) and
what does not (a server that cannot be reached yet: requests get 503 until
it can).
"""

from __future__ import annotations

from typing import Any

import MySQLdb
from twisted.logger import Logger

from ersid.expiry import Reaper
from ersid.mysql.backup import MySQLBackups
from ersid.mysql.changes import ChangeFeed
from ersid.mysql.errors import UNREACHABLE, error_code
from ersid.mysql.schema import SchemaError, check_schema
from ersid.mysql.settings import MySQLSettings
from ersid.mysql.storage import MySQLStorage
from ersid.snapshots import SnapshotService, Snapshotter, remove_stale_temporaries
from ersid.startup import StartupError
from ersid.storage import OpenedStorage
from ersid.watch import Hub

__all__ = ["open_database"]

_log = Logger()


def open_database(
    settings: MySQLSettings,
    pool: tuple[int, int],
    dump_file: str,
    dump_interval: float,
    hub: Hub,
    poll_interval: float,
    history_age: float | None,
    reap_interval: float,
    reactor: Any,
) -> OpenedStorage:
    """
    The database C{settings} name, through a pool of C{pool} (fewest, most)
    connections, with snapshots to C{dump_file} every C{dump_interval}
    seconds as backups, and its change log read into C{hub} every
    C{poll_interval} seconds and kept to the last C{history_age} seconds
    (if given); this node reaps expired rows every C{reap_interval} seconds.
    Blocking: call it before the reactor runs.

    @raise StartupError: if the database refuses Ersid or lacks its tables.
    """
    _check(settings)
    remove_stale_temporaries(dump_file)
    storage = MySQLStorage(settings, *pool)
    snapshotter = Snapshotter(storage, dump_file, reactor)
    snapshots = SnapshotService(dump_interval, snapshotter)
    feed = ChangeFeed(storage, hub, poll_interval, reactor, history_age)
    reaper = Reaper(storage.reap, reap_interval, reactor)
    collectors = (*storage.collectors, *snapshotter.collectors)
    backups = MySQLBackups(storage, reactor)
    return OpenedStorage(
        storage, [snapshots, feed, reaper], snapshotter.health, collectors, backups
    )


def _check(settings: MySQLSettings) -> None:
    try:
        check_schema(settings)
    except SchemaError as e:
        raise StartupError(str(e)) from None
    except MySQLdb.Error as e:
        if error_code(e) not in UNREACHABLE:
            raise StartupError(
                f"database {settings.describe()}: {e.args[-1]}"
            ) from None
        _log.warn(
            "Database {database} unreachable ({message}); serving 503 until it is",
            database=settings.describe(),
            message=e.args[-1],
        )
    else:
        _log.info("Using database {database}", database=settings.describe())
