"""
What MySQL's error numbers mean to Ersid, in one place: which leave a
connection dead, which roll a transaction back so that it may run again,
and which only say that the server cannot be reached yet.
"""

from __future__ import annotations

import MySQLdb

__all__ = [
    "DEAD_CONNECTION",
    "NOT_READY",
    "RETRY_TRANSACTION",
    "UNREACHABLE",
    "error_code",
]

# MySQL's ER_UNKNOWN_COM_ERROR, which a Galera node answers while it is not
# part of the cluster's primary component (joining, or cut off).
NOT_READY = 1047

# The client could not reach the server at all (no socket, refused, unknown
# host, gone away, lost): not fatal at startup; requests get 503 until it can.
# A Galera node that is not ready counts as unreachable.
UNREACHABLE = frozenset({NOT_READY, 2002, 2003, 2005, 2006, 2013})
# The connection is dead, or its server of a cluster no longer serves (a
# Galera node cut off from the primary component answers 1047): drop it,
# and run the work again elsewhere unless it had reached its commit.
DEAD_CONNECTION = frozenset({NOT_READY, 1053, 1927, 2006, 2013, 2055, 4031})
# The transaction was rolled back (lock wait timeout, deadlock, which is how
# Galera reports a certification conflict) and may simply run again.
RETRY_TRANSACTION = frozenset({1205, 1213})


def error_code(error: Exception) -> int | None:
    """The MySQL error number of C{error}, or C{None} if it has none."""
    if isinstance(error, MySQLdb.Error) and error.args:
        code = error.args[0]
        return code if isinstance(code, int) else None
    return None
