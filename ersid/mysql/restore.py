"""
Restoring a backup into MySQL (C{ersid restore FILE --mysql-url URL}): the
snapshot file loaded into a database that holds no key yet, in one
transaction, each record with its version, content type and expiry, in
multi-row inserts of about a megabyte each (as L{ersid.mysql.writes}
makes them); the store's revision becomes the snapshot's.
"""

from __future__ import annotations

from typing import Any

from ersid.mysql.connecting import connect
from ersid.mysql.schema import check_schema
from ersid.mysql.settings import MySQLSettings
from ersid.snapshots.format import read_snapshot
from ersid.snapshots.restore import RestoreRefused

__all__ = ["restore_into_database"]

_INSERT = (
    b"INSERT INTO ersid_data (ersid_key, ersid_value, content_type, version, "
    b"expires_at) VALUES "
)
# Bytes of rows in one statement, at most (unless one row is larger).
_STATEMENT_BYTES = 1 << 20


def restore_into_database(settings: MySQLSettings, path: str) -> tuple[int, int]:
    """
    Load the snapshot at C{path} into the database of C{settings}, which
    must hold no key, all or nothing. Blocking. The revision counter is
    locked throughout: writers of running daemons wait, and are refused
    with 503 if the load takes longer than their lock wait.

    @return: the number of keys loaded and the snapshot's revision.
    @raise RestoreRefused: if the database holds keys or there is no file.
    @raise SchemaError: if the database lacks Ersid's tables.
    @raise SnapshotError: if the file is not a whole snapshot.
    @raise MySQLdb.Error: if the database fails.
    """
    check_schema(settings)
    connection = connect(**settings.connect_arguments())
    try:
        cursor = connection.cursor()
        cursor.execute("START TRANSACTION")
        cursor.execute("SELECT revision FROM ersid_revision WHERE id = 1 FOR UPDATE")
        cursor.execute("SELECT EXISTS (SELECT 1 FROM ersid_data)")
        if cursor.fetchone()[0]:
            raise RestoreRefused(
                f"database {settings.describe()} holds keys already: a backup is "
                "restored into an empty one (run mysql_schema.sql on a new database)"
            )
        rows = _Rows(cursor, connection.string_literal)
        read = read_snapshot(path, rows.columns, rows.insert)
        if read is None:
            raise RestoreRefused(f"no such file: {path}")
        rows.flush()
        revision, count = read
        cursor.execute(
            "UPDATE ersid_revision SET revision = GREATEST(revision, %s) WHERE id = 1",
            (revision,),
        )
        connection.commit()
    finally:
        # Without a commit, nothing of it stays.
        connection.close()
    return count, revision


class _Rows:
    """
    Rows of C{ersid_data} escaped as SQL once, by the client library's
    C{string_literal} (a tenth of the time of C{execute}'s parameters), and
    inserted a statement of about L{_STATEMENT_BYTES} at a time.
    """

    def __init__(self, cursor: Any, literal: Any) -> None:
        self._cursor = cursor
        self._literal = literal
        self._pending: list[bytes] = []
        self._size = 0

    def columns(
        self, version: int, content_type: str, value: bytes, expires: float | None
    ) -> bytes:
        """A record's columns after its key, as SQL; its expiry to the microsecond."""
        at = b"NULL" if expires is None else b"FROM_UNIXTIME(%.6f)" % (expires,)
        literal = self._literal
        return b"_binary%s, %s, %d, %s)" % (
            literal(value),
            literal(content_type.encode("ascii")),
            version,
            at,
        )

    def insert(self, keys: list[str], columns: list[bytes], _: int) -> None:
        """Insert a page's rows, or keep them for the next statement."""
        literal = self._literal
        for key, rest in zip(keys, columns, strict=True):
            row = b"(_binary%s, %s" % (literal(key.encode("utf-8")), rest)
            self._pending.append(row)
            self._size += len(row)
            if self._size >= _STATEMENT_BYTES:
                self.flush()

    def flush(self) -> None:
        """Insert the rows kept."""
        if self._pending:
            self._cursor.execute(_INSERT + b", ".join(self._pending))
            self._pending = []
            self._size = 0
