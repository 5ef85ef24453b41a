"""
The MySQL backend: records in a MySQL or MariaDB database through
C{adbapi} and C{mysqlclient}, so that any number of Ersid nodes can share
it as stateless peers.

| module | what it holds |
| --- | --- |
| C{settings} | L{MySQLSettings}: where the database is, and the password file |
| C{schema} | the shipped C{mysql_schema.sql}, and the check that it was run |
| C{errors} | what MySQL's error numbers mean to Ersid |
| C{storage} | L{MySQLStorage}: the storage contract in SQL |
| C{opening} | opening it at startup |

Importing this package needs no C{mysqlclient}; L{open_mysql} says how to
install it if it is missing.
"""

from __future__ import annotations

from typing import Any

from ersid.startup import StartupError
from ersid.storage import OpenedStorage

__all__ = ["open_mysql"]


def open_mysql(*args: Any, **kwargs: Any) -> OpenedStorage:
    """
    Open the database as L{ersid.mysql.opening.open_database} does, with
    the same arguments, once C{mysqlclient} is known to be installed.

    @raise StartupError: if it cannot be used, or C{mysqlclient} is missing.
    """
    try:
        from ersid.mysql.opening import open_database
    except ImportError:
        raise StartupError(
            "--storage mysql needs mysqlclient: pip install 'ersid[mysql]' "
            "(which needs: apt-get install libmariadb-dev pkg-config)"
        ) from None
    return open_database(*args, **kwargs)
