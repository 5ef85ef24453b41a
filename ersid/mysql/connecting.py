"""
A DB-API module for C{adbapi} over C{mysqlclient} that connects to the
first of several servers that is up and ready to serve, so that a node
outlives the death of one server of a cluster.

A Galera node that is not part of the cluster's primary component (it is
joining, or cut off from the others) accepts connections but refuses
queries; it is passed over. On Galera, every session waits for the
writes the cluster has committed before it reads (C{wsrep_sync_wait}), so
that a write through any node is read through every other at once.
"""

from __future__ import annotations

from typing import Any

import MySQLdb
from MySQLdb import (  # noqa: F401 (the DB-API's names, for adbapi)
    DatabaseError,
    Error,
    IntegrityError,
    InterfaceError,
    OperationalError,
    apilevel,
    paramstyle,
    threadsafety,
)

from ersid.mysql.errors import NOT_READY, UNREACHABLE, error_code

__all__ = ["connect"]


def connect(hosts: tuple[tuple[str, int], ...], **arguments: Any) -> Any:
    """
    A connection to the first of C{hosts} that accepts one and is synced
    with its cluster, in autocommit mode (transactions are begun
    explicitly). If none is: the error of the first server that answered
    with something other than "not ready" (a refused password, a missing
    database: what to fix), else that of the first server.
    """
    errors: list[MySQLdb.Error] = []
    for host, port in hosts:
        try:
            connection = MySQLdb.connect(host=host, port=port, **arguments)
        except MySQLdb.OperationalError as e:
            errors.append(e)
            continue
        try:
            _prepare(connection)
        except MySQLdb.Error as e:
            connection.close()
            errors.append(e)
            continue
        return connection
    answered = [e for e in errors if error_code(e) not in UNREACHABLE]
    raise (answered or errors)[0]


def _prepare(connection: Any) -> None:
    connection.autocommit(True)
    cursor = connection.cursor()
    cursor.execute("SHOW VARIABLES LIKE 'wsrep_on'")
    row = cursor.fetchone()
    if row is None or row[1] != "ON":
        return
    cursor.execute(
        "SHOW STATUS WHERE Variable_name IN ('wsrep_ready', 'wsrep_local_state_comment')"
    )
    status = dict(cursor.fetchall())
    if status.get("wsrep_ready") != "ON":
        raise MySQLdb.OperationalError(
            NOT_READY, "this Galera node is not ready (not in the primary component)"
        )
    if status.get("wsrep_local_state_comment") != "Synced":
        # A donor may hold a global read lock for a state transfer.
        raise MySQLdb.OperationalError(
            NOT_READY,
            f"this Galera node is {status.get('wsrep_local_state_comment')}, not synced",
        )
    cursor.execute("SET SESSION wsrep_sync_wait = 1")
