"""
C{ersid restore FILE} (its arguments are in L{ersid.client.cli}): a backup,
a snapshot file as C{ersid backup} saves it, put where a new daemon starts
from it: into an empty data directory for the dict backend
(L{ersid.embedded.restore}), into a database without keys for MySQL
(L{ersid.mysql.restore}). All of it, or nothing.
"""

from __future__ import annotations

import argparse
import os
import sys

from ersid.snapshots.format import SnapshotError
from ersid.startup import StartupError

__all__ = ["RestoreRefused", "run_restore_command"]

_EXIT_USAGE = 2
_EXIT_REFUSED = 4
_EXIT_UNAVAILABLE = 5
_EXIT_LOCAL_IO = 6


class RestoreRefused(Exception):
    """The target holds a store already, or there is no backup to restore."""


def run_restore_command(arguments: argparse.Namespace) -> int:
    """Do what C{ersid restore} was asked; the exit status."""
    if arguments.mysql_url is None:
        if arguments.mysql_password_file is not None:
            return _failed("--mysql-password-file goes with --mysql-url", _EXIT_USAGE)
        return _restore_data_dir(arguments)
    if arguments.dump_file is not None:
        return _failed("--dump-file goes with --data-dir", _EXIT_USAGE)
    return _restore_database(arguments)


def _restore_data_dir(arguments: argparse.Namespace) -> int:
    from ersid.embedded.restore import restore_data_dir

    try:
        keys, revision = restore_data_dir(
            arguments.file, arguments.data_dir, arguments.dump_file
        )
    except (RestoreRefused, SnapshotError, StartupError) as e:
        return _failed(str(e), _EXIT_REFUSED)
    except OSError as e:
        return _failed(f"{e.filename or arguments.file}: {e.strerror}", _EXIT_LOCAL_IO)
    where = os.path.abspath(arguments.data_dir)
    print(
        f"{arguments.file}: {keys} keys at revision {revision} restored into {where}; "
        f"start the daemon with --data-dir {where}"
        + (f" --dump-file {arguments.dump_file}" if arguments.dump_file else "")
    )
    return 0


def _restore_database(arguments: argparse.Namespace) -> int:
    from ersid.mysql.settings import MySQLSettings, read_password_file

    try:
        if arguments.mysql_password_file:
            password = read_password_file(arguments.mysql_password_file)
        else:
            password = os.environ.get("ERSID_MYSQL_PASSWORD", "")
        settings = MySQLSettings.from_url(arguments.mysql_url, password)
    except (OSError, ValueError) as e:
        return _failed(str(e), _EXIT_USAGE)
    try:
        import MySQLdb

        from ersid.mysql.restore import restore_into_database
        from ersid.mysql.schema import SchemaError
    except ModuleNotFoundError as e:
        if e.name != "MySQLdb":
            raise
        return _failed(
            "restoring into MySQL needs mysqlclient: pip install 'ersid[mysql]'",
            _EXIT_USAGE,
        )
    try:
        keys, revision = restore_into_database(settings, arguments.file)
    except (RestoreRefused, SnapshotError, SchemaError) as e:
        return _failed(str(e), _EXIT_REFUSED)
    except MySQLdb.Error as e:
        return _failed(
            f"database {settings.describe()}: {e.args[-1]}", _EXIT_UNAVAILABLE
        )
    except OSError as e:
        return _failed(f"{arguments.file}: {e.strerror}", _EXIT_LOCAL_IO)
    print(
        f"{arguments.file}: {keys} keys at revision {revision} restored into "
        f"database {settings.describe()}"
    )
    return 0


def _failed(message: str, status: int) -> int:
    print(f"ersid: {message}", file=sys.stderr)
    return status
