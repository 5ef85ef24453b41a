"""
Online backups of the MySQL backend against a real MariaDB server: the
contract (L{BackupContractMixin}), whose backups are read in one
transaction; and C{ersid restore --mysql-url}, into an empty database
only, all or nothing.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile

import MySQLdb
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from ersid.snapshots import write_snapshot
from ersid.testing.mariadb import PASSWORD, MariaDB

from .._helpers import Daemon, http
from .._mariadb import shared_server
from ..backup_contract import BINARY, TTL, BackupContractMixin, numbered

_ENV = {"ERSID_MYSQL_PASSWORD": PASSWORD}


def _load(server: MariaDB, keys: int, pad: int) -> None:
    """
    Fill a fresh database with L{numbered}C{(keys, pad)} in three
    statements, the fastest way: MariaDB makes the rows itself.
    """
    server.fresh_database()
    connection = MySQLdb.connect(unix_socket=server.socket, user="root", db="ersid")
    try:
        cursor = connection.cursor()
        if keys:
            cursor.execute(
                "INSERT INTO ersid_data (ersid_key, ersid_value, content_type, version) "
                "SELECT CONCAT('key', LPAD(seq, 7, '0')), "
                "CONCAT('value-', seq, REPEAT('x', %s)), 'text/plain', seq + 2 "
                f"FROM seq_0_to_{keys - 1}",
                (pad,),
            )
        cursor.execute(
            "INSERT INTO ersid_data VALUES "
            "('bin', %s, 'application/octet-stream', 1, NULL), "
            "('ttl', 'lease', 'text/plain', %s, UTC_TIMESTAMP(6) + INTERVAL %s SECOND)",
            (BINARY, keys + 2, TTL),
        )
        cursor.execute("UPDATE ersid_revision SET revision = %s", (keys + 2,))
        connection.commit()
    finally:
        connection.close()


def _read_views(server: MariaDB) -> list[str]:
    """The sessions holding a read view: those in a transaction that has read."""
    connection = MySQLdb.connect(unix_socket=server.socket, user="root")
    try:
        cursor = connection.cursor()
        cursor.execute("SHOW ENGINE INNODB STATUS")
        status = cursor.fetchone()[2]
    finally:
        connection.close()
    listed = status.split("LIST OF TRANSACTIONS FOR EACH SESSION:")[1]
    sessions = listed.split("\n--------\n")[0].split("---TRANSACTION")[1:]
    return [
        re.search(r"MariaDB thread id \d+", session)[0]
        for session in sessions
        if "read view" in session
    ]


class MySQLBackupTests(BackupContractMixin, TestCase):
    def setUp(self):
        self.server = shared_server()

    def url(self) -> str:
        return f"mysql://ersid@localhost/ersid?unix_socket={self.server.socket}"

    async def start_daemon(self, keys: int, pad: int = 0, *args: str) -> Daemon:
        await deferToThread(_load, self.server, keys, pad)
        return await self._daemon(*args)

    async def _daemon(self, *args: str) -> Daemon:
        daemon = Daemon.ersid(
            self,
            os.path.abspath(self.mktemp()),
            *("--storage", "mysql", "--mysql-url", self.url()),
            # Nothing but the backups reads the database once it has started.
            *("-i", "3600", "--watch-poll", "3600", "--reap-interval", "3600"),
            *args,
            env=_ENV,
        )
        await daemon.rest_url()
        # Its first snapshot, a backup of its own, taken at its start.
        await daemon.said(rb"Dumping \d+ keys")
        return daemon

    async def restore(self, path: str) -> Daemon:
        await deferToThread(self.server.fresh_database)
        command = self.ersid("restore", path, "--mysql-url", self.url(), env=_ENV)
        self.assertEqual(await command.ended, 0, command.output)
        return await self._daemon()

    async def leftovers(self, daemon: Daemon) -> list[str]:
        return await deferToThread(_read_views, self.server)


class UnreachableTests(TestCase):
    def test_a_backup_of_a_database_out_of_reach_is_503(self):
        async def check():
            # Not under _trial_temp: socket paths must stay under 108 bytes.
            directory = tempfile.mkdtemp(prefix="ersid-")
            self.addCleanup(os.rmdir, directory)
            socket = os.path.join(directory, "none.sock")
            daemon = Daemon.ersid(
                self,
                os.path.abspath(self.mktemp()),
                *("--storage", "mysql", "--mysql-url"),
                f"mysql://ersid@localhost/ersid?unix_socket={socket}",
                env=_ENV,
            )
            url = await daemon.rest_url()
            response = await http().get(f"{url}/_snapshot")
            self.assertEqual(response.code, 503)
            self.assertEqual(response.headers.getRawHeaders("retry-after"), ["1"])
            error = json.loads(await response.content())
            self.assertEqual(error["error"], "unavailable")
            self.assertIn("storage unavailable: database", error["message"])

        return Deferred.fromCoroutine(check())


class RestoreDatabaseTests(TestCase):
    """C{ersid restore FILE --mysql-url URL}: into an empty database only, whole."""

    def setUp(self):
        self.server = shared_server()
        self.backup = os.path.abspath(self.mktemp())
        write_snapshot(self.backup, 12, numbered(10))

    def restore(self, *args: str) -> Deferred[tuple[int, str]]:
        code = "from ersid.client.cli import main; main()"
        url = f"mysql://ersid@localhost/ersid?unix_socket={self.server.socket}"
        command = Daemon(
            [sys.executable, "-c", code, "restore", *args, "--mysql-url", url], env=_ENV
        )

        async def outcome() -> tuple[int, str]:
            return await command.ended, command.output

        return Deferred.fromCoroutine(outcome())

    def rows(self) -> list[tuple]:
        connection = MySQLdb.connect(
            unix_socket=self.server.socket, user="root", db="ersid"
        )
        try:
            cursor = connection.cursor()
            cursor.execute(
                "SELECT ersid_key, version FROM ersid_data ORDER BY ersid_key"
            )
            rows = list(cursor.fetchall())
            cursor.execute("SELECT revision FROM ersid_revision")
            return [*rows, cursor.fetchone()]
        finally:
            connection.close()

    def test_a_database_holding_keys_is_refused(self):
        async def check():
            self.server.fresh_database()
            status, output = await self.restore(self.backup)
            self.assertEqual(status, 0, output)
            restored = self.rows()
            self.assertEqual(len(restored), 13)
            self.assertEqual(restored[-1], (12,))
            status, output = await self.restore(self.backup)
            self.assertEqual(status, 4)
            self.assertRegex(
                output,
                r"^ersid: database .* holds keys already: a backup is restored into "
                r"an empty one \(run mysql_schema.sql on a new database\)\n\Z",
            )
            self.assertEqual(self.rows(), restored)

        return Deferred.fromCoroutine(check())

    def test_a_backup_that_is_not_whole_restores_nothing(self):
        """
        The rows before the damage, inserted in several statements, are
        rolled back.
        """

        async def check():
            self.server.fresh_database()
            write_snapshot(self.backup, 3002, numbered(3000, 1000))
            with open(self.backup, "rb") as f:
                whole = f.read()
            with open(self.backup, "wb") as f:
                f.write(whole.replace(b'"count": 3002', b'"count": 3003'))
            status, output = await self.restore(self.backup)
            self.assertEqual(status, 4)
            self.assertIn("is corrupt: it holds 3002 entries, not 3003", output)
            self.assertEqual(self.rows(), [(0,)])

        return Deferred.fromCoroutine(check())

    def test_an_unreachable_database_exits_5(self):
        async def check():
            code = "from ersid.client.cli import main; main()"
            command = Daemon(
                [
                    *(sys.executable, "-c", code, "restore", self.backup),
                    *(
                        "--mysql-url",
                        "mysql://ersid@localhost/ersid?unix_socket=/nonexistent",
                    ),
                ],
                env=_ENV,
            )
            self.assertEqual(await command.ended, 5)
            self.assertRegex(command.output, r"^ersid: database .*: .*\n\Z")

        return Deferred.fromCoroutine(check())

    def test_expiry_and_binary_values_kept_to_the_byte_and_microsecond(self):
        async def check():
            self.server.fresh_database()
            status, output = await self.restore(self.backup)
            self.assertEqual(status, 0, output)
            url = await self.daemon()
            response = await http().get(f"{url}/bin")
            self.assertEqual(await response.content(), BINARY)
            with open(self.backup, "rb") as f:
                expires = re.search(rb'"lease", ([\d.]+)\]', f.read())[1]
            response = await http().get(f"{url}/ttl")
            self.assertEqual(
                response.headers.getRawHeaders("ersid-expires"),
                [f"{float(expires):.6f}"],
            )
            await response.content()

        return Deferred.fromCoroutine(check())

    async def daemon(self) -> str:
        daemon = Daemon.ersid(
            self,
            os.path.abspath(self.mktemp()),
            *("--storage", "mysql", "--mysql-url"),
            f"mysql://ersid@localhost/ersid?unix_socket={self.server.socket}",
            env=_ENV,
        )
        return await daemon.rest_url()
