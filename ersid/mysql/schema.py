"""
Ersid's tables: the schema shipped with the package (C{mysql_schema.sql}),
and the check at startup that the database has them.
"""

from __future__ import annotations

from importlib import resources

from ersid.mysql.connecting import connect
from ersid.mysql.settings import MySQLSettings

__all__ = ["SCHEMA_FILE", "SchemaError", "check_schema"]

SCHEMA_FILE = str(resources.files("ersid.mysql").joinpath("mysql_schema.sql"))

_EXPECTED_COLUMNS = {
    "ersid_data": {"ersid_key", "ersid_value", "content_type", "version", "expires_at"},
    "ersid_revision": {"id", "revision"},
    "ersid_changes": {
        "revision",
        "ersid_key",
        "ersid_value",
        "content_type",
        "changed_at",
        "expires_at",
        "expired",
    },
}


class SchemaError(Exception):
    """The database lacks Ersid's tables; the message says how to make them."""


def check_schema(settings: MySQLSettings) -> None:
    """
    Check, blocking, that the database holds Ersid's tables.

    @raise SchemaError: naming what is missing and the command to create it.
    @raise MySQLdb.OperationalError: if the server cannot be reached.
    """
    connection = connect(**settings.connect_arguments())
    try:
        cursor = connection.cursor()
        cursor.execute(
            "SELECT TABLE_NAME, COLUMN_NAME FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA = DATABASE()"
        )
        found: dict[str, set[str]] = {}
        for table, column in cursor.fetchall():
            found.setdefault(table, set()).add(column)
        missing = [
            f"table {table}"
            if table not in found
            else f"columns {', '.join(sorted(columns - found[table]))} of {table}"
            for table, columns in _EXPECTED_COLUMNS.items()
            if not columns <= found.get(table, set())
        ]
        if not missing:
            cursor.execute("SELECT COUNT(*) FROM ersid_revision WHERE id = 1")
            if cursor.fetchone()[0] != 1:
                missing.append("the row of ersid_revision")
    finally:
        connection.close()
    if missing:
        raise SchemaError(
            f"database {settings.database} lacks {'; '.join(missing)}; create "
            f"them with: mysql {settings.client_arguments()} < {SCHEMA_FILE}"
        )
