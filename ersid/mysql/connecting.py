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

__all__ = ["NOT_READY", "connect"]

# MySQL's ER_UNKNOWN_COM_ERROR, which Galera answers while not ready.
NOT_READY = 1047


def connect(hosts: tuple[tuple[str, int], ...], **arguments: Any) -> Any:
    """
    A connection to the first of C{hosts} that accepts one and is ready, in
    autocommit mode (transactions are begun explicitly); the last error if
    none is.
    """
    error: MySQLdb.Error | None = None
    for host, port in hosts:
        try:
            connection = MySQLdb.connect(host=host, port=port, **arguments)
        except MySQLdb.OperationalError as e:
            error = e
            continue
        try:
            _prepare(connection)
        except MySQLdb.Error as e:
            connection.close()
            error = e
            continue
        return connection
    assert error is not None
    raise error


def _prepare(connection: Any) -> None:
    connection.autocommit(True)
    cursor = connection.cursor()
    cursor.execute("SHOW VARIABLES LIKE 'wsrep_on'")
    row = cursor.fetchone()
    if row is None or row[1] != "ON":
        return
    cursor.execute("SHOW STATUS LIKE 'wsrep_ready'")
    row = cursor.fetchone()
    if row is None or row[1] != "ON":
        raise MySQLdb.OperationalError(
            NOT_READY, "this Galera node is not ready (not in the primary component)"
        )
    cursor.execute("SET SESSION wsrep_sync_wait = 1")
