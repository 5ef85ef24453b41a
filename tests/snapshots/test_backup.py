"""
Online backups of the dict backend: the contract (L{BackupContractMixin})
through the real daemon, whose backups a forked child writes into a
socket; C{ersid restore --data-dir}; and a writer that fails midway.
"""

from __future__ import annotations

import os
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from ersid.embedded.journal_format import segment_path, segments
from ersid.embedded.memory import DictStorage
from ersid.files import create_private
from ersid.snapshots import write_snapshot
from ersid.snapshots.streaming import ForkedBackups
from ersid.storage import Record
from ersid.web.app import Service

from .._helpers import Daemon, serve
from ..backup_contract import BackupContractMixin, numbered


class DictBackupTests(BackupContractMixin, TestCase):
    def setUp(self):
        self.data_dirs: dict[Daemon, str] = {}

    async def start_daemon(self, keys: int, pad: int = 0, *args: str) -> Daemon:
        data_dir = os.path.abspath(self.mktemp())
        os.makedirs(data_dir, mode=0o700)
        revision = keys + 2
        snapshot = os.path.join(data_dir, "snapshot.json")
        await deferToThread(write_snapshot, snapshot, revision, numbered(keys, pad))
        # As ersid restore does: a journal that starts at the snapshot.
        create_private(segment_path(data_dir, revision))
        return await self._daemon(data_dir, *args)

    async def _daemon(self, data_dir: str, *args: str) -> Daemon:
        daemon = Daemon.ersid(self, data_dir, "-i", "3600", *args)
        await daemon.rest_url()
        self.data_dirs[daemon] = data_dir
        return daemon

    async def restore(self, path: str) -> Daemon:
        data_dir = os.path.abspath(self.mktemp())
        command = self.ersid("restore", path, "--data-dir", data_dir)
        self.assertEqual(await command.ended, 0, command.output)
        self.assertIn(f"restored into {data_dir}", command.output)
        return await self._daemon(data_dir)

    async def leftovers(self, daemon: Daemon) -> list[str]:
        """The daemon's child processes, and the temporaries of its data directory."""
        pid = daemon.process.pid
        children = []
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as listed:
                children += [
                    f"child process {child}" for child in listed.read().split()
                ]
        data_dir = self.data_dirs[daemon]
        hidden = [name for name in os.listdir(data_dir) if name.startswith(".")]
        return sorted(children + hidden)


class RestoreDataDirTests(TestCase):
    """C{ersid restore FILE --data-dir DIR}: into an empty directory only, whole."""

    def setUp(self):
        self.backup = os.path.abspath(self.mktemp())
        write_snapshot(self.backup, 12, numbered(10))

    def restore(self, *args: str) -> Deferred[tuple[int, str]]:
        code = "from ersid.client.cli import main; main()"
        command = Daemon([sys.executable, "-c", code, "restore", *args])

        async def outcome() -> tuple[int, str]:
            return await command.ended, command.output

        return Deferred.fromCoroutine(outcome())

    def test_files_made_private_with_the_journal_the_daemon_needs(self):
        async def check():
            data_dir = os.path.abspath(self.mktemp())
            status, output = await self.restore(self.backup, "--data-dir", data_dir)
            self.assertEqual(status, 0, output)
            snapshot = os.path.join(data_dir, "snapshot.json")
            with open(snapshot, "rb") as restored, open(self.backup, "rb") as backup:
                self.assertEqual(restored.read(), backup.read())
            self.assertEqual(segments(data_dir), [segment_path(data_dir, 12)])
            for name in os.listdir(data_dir):
                mode = os.stat(os.path.join(data_dir, name)).st_mode & 0o777
                self.assertEqual(mode, 0o600, name)
            self.assertEqual(os.stat(data_dir).st_mode & 0o777, 0o700)

        return Deferred.fromCoroutine(check())

    def test_a_directory_holding_a_store_is_refused(self):
        async def check():
            for existing in ("snapshot.json", "journal.00000000000000000003"):
                data_dir = os.path.abspath(self.mktemp())
                os.makedirs(data_dir)
                with open(os.path.join(data_dir, existing), "wb") as f:
                    f.write(b"precious")
                status, output = await self.restore(self.backup, "--data-dir", data_dir)
                self.assertEqual(status, 4)
                self.assertEqual(
                    output,
                    f"ersid: {data_dir} holds a store already (a snapshot or a "
                    "journal): a backup is restored into an empty data directory\n",
                )
                with open(os.path.join(data_dir, existing), "rb") as f:
                    self.assertEqual(f.read(), b"precious")
                self.assertEqual(len(os.listdir(data_dir)), 3)  # and the locks

        return Deferred.fromCoroutine(check())

    def test_a_backup_that_is_not_whole_is_refused(self):
        async def check():
            with open(self.backup, "rb") as f:
                whole = f.read()
            cut = whole[: whole.rindex(b"\n]")] + b"\n"
            for broken in (cut, whole.replace(b'"count": 12', b'"count": 13')):
                with open(self.backup, "wb") as f:
                    f.write(broken)
                data_dir = os.path.abspath(self.mktemp())
                status, output = await self.restore(self.backup, "--data-dir", data_dir)
                self.assertEqual(status, 4)
                self.assertRegex(output, f"^ersid: snapshot {self.backup} is corrupt: ")
                self.assertEqual(
                    sorted(os.listdir(data_dir)), ["ersid.lock", "snapshot.json.lock"]
                )

        return Deferred.fromCoroutine(check())

    def test_a_missing_backup_is_refused(self):
        async def check():
            data_dir = os.path.abspath(self.mktemp())
            missing = self.backup + ".missing"
            status, output = await self.restore(missing, "--data-dir", data_dir)
            self.assertEqual((status, output), (4, f"ersid: no such file: {missing}\n"))

        return Deferred.fromCoroutine(check())


def _failing_midway():
    """Records, until the writer fails (a disk error, say) a few pages in."""
    for i in range(5000):
        yield f"key{i:05d}", Record(b"v" * 100, "text/plain", i + 1)
    raise OSError(5, "Input/output error")


class BackupRouteTests(TestCase):
    """/_snapshot served in this process, over a writer that fails, or none."""

    def test_a_writer_failing_midway_cuts_the_connection(self):
        """
        The client gets no end of a snapshot whose writer failed: curl
        reports a transfer cut short, C{ersid backup} exits 5 and saves
        nothing.
        """

        async def check():
            backups = ForkedBackups(lambda: (5000, _failing_midway()), reactor)
            url = await serve(self, Service(DictStorage(), backups=backups))
            path = os.path.abspath(self.mktemp())
            curl = Daemon(["curl", "-sS", "-o", path, f"{url}/_snapshot"])
            # A transfer cut short: reset, or closed, before its end.
            self.assertIn(await curl.ended, (18, 56), curl.output)
            os.unlink(path)
            code = "from ersid.client.cli import main; main()"
            command = Daemon([sys.executable, "-c", code, "--url", url, "backup", path])
            self.assertEqual(await command.ended, 5)
            self.assertIn("ersid: the backup was cut short", command.output)
            self.assertEqual(os.listdir(os.path.dirname(path)), [])

        return Deferred.fromCoroutine(check())

    def test_a_server_that_takes_no_backups(self):
        """Its 404 is a refusal (exit 4), not a missing key (exit 1)."""

        async def check():
            url = await serve(self, Service(DictStorage()))
            path = os.path.abspath(self.mktemp())
            code = "from ersid.client.cli import main; main()"
            command = Daemon([sys.executable, "-c", code, "--url", url, "backup", path])
            self.assertEqual(await command.ended, 4)
            self.assertEqual(command.output, "ersid: this server takes no backups\n")
            self.assertEqual(os.listdir(os.path.dirname(path)), [])

        return Deferred.fromCoroutine(check())
