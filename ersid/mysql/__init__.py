"""
The MySQL backend: records in a MySQL or MariaDB database through
C{adbapi} and C{mysqlclient}, so that any number of Ersid nodes can share
it as stateless peers.

| module | what it holds |
| --- | --- |
| C{settings} | L{MySQLSettings}: where the database is (one server or several), and the password file |
| C{connecting} | a connection to the first server of the list that is ready |
| C{schema} | the shipped C{mysql_schema.sql}, and the check that it was run |
| C{errors} | what MySQL's error numbers mean to Ersid |
| C{storage} | L{MySQLStorage}: the storage contract over a pool, with batches and retries |
| C{batching} | L{Batches}: requests that arrive together, run together |
| C{writes} | a batch of writes in one transaction, in SQL |
| C{transactions} | reads and reaping in SQL |
| C{change_log} | the change log in SQL: written with each change, read, trimmed |
| C{changes} | L{ChangeFeed}: the change log read for this node's watchers |
| C{opening} | opening it at startup |
| C{backup} | online backups: one transaction read a page at a time |
| C{restore} | a backup loaded into an empty database |

Importing this package needs no C{mysqlclient}; L{open_mysql} says how to
install it if it is missing.
"""

from __future__ import annotations

import os
from typing import Any

from ersid.mysql.settings import MySQLSettings, read_password_file
from ersid.startup import StartupError
from ersid.storage import OpenedStorage
from ersid.watch import Hub

__all__ = ["DEFAULT_POLL_INTERVAL", "open_mysql"]

# Seconds between two reads of the change log by a node (--watch-poll).
DEFAULT_POLL_INTERVAL = 0.1


def open_mysql(
    url: str,
    password_file: str | None,
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
    The database at C{url} (see L{MySQLSettings.from_url}), its password
    from C{password_file}, else C{$ERSID_MYSQL_PASSWORD}, through a pool of
    C{pool} (fewest, most) connections; snapshots go to C{dump_file} every
    C{dump_interval} seconds as backups; its change log is read into C{hub}
    every C{poll_interval} seconds, and kept to the last C{history_age}
    seconds if given; its expired rows are reaped every C{reap_interval}
    seconds. Blocking: call it before the reactor runs.

    @raise StartupError: if the database cannot be used, or C{mysqlclient}
        is not installed.
    """
    try:
        if password_file:
            password = read_password_file(password_file)
        else:
            password = os.environ.get("ERSID_MYSQL_PASSWORD", "")
        settings = MySQLSettings.from_url(url, password)
    except (OSError, ValueError) as e:
        raise StartupError(str(e)) from None
    try:
        from ersid.mysql.opening import open_database
    except ModuleNotFoundError as e:
        if e.name != "MySQLdb":
            raise
        raise StartupError(
            "--storage mysql needs mysqlclient: pip install 'ersid[mysql]' "
            "(which needs: apt-get install libmariadb-dev pkg-config)"
        ) from None
    return open_database(
        settings,
        pool,
        dump_file,
        dump_interval,
        hub,
        poll_interval,
        history_age,
        reap_interval,
        reactor,
    )
