"""
The daemon's files: one daemon to a data directory and to a snapshot,
never a start that takes part of the data for all of it, every file
private, and a snapshot path that means what it says.
"""

from __future__ import annotations

import gc
import os
import signal
import stat
import sys

from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from ersid.files import FileLock, claim_files
from ersid.startup import StartupError

from ._helpers import Daemon, http


def _mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


class ClaimFilesTests(TestCase):
    def setUp(self):
        self.root = os.path.abspath(self.mktemp())
        os.makedirs(self.root)
        self.data_dir = os.path.join(self.root, "data")

    def test_lock_names_the_process_holding_it(self):
        claimed = claim_files(self.data_dir, os.path.join(self.data_dir, "s.json"))
        with self.assertRaises(StartupError) as raised:
            claim_files(self.data_dir, os.path.join(self.root, "other.json"))
        message = str(raised.exception)
        self.assertIn(f"data directory {self.data_dir} is in use by process", message)
        self.assertIn(str(os.getpid()), message)
        for lock in claimed.locks:
            lock.release()
        claim_files(self.data_dir, os.path.join(self.root, "other.json"))

    def test_snapshot_shared_by_two_data_directories(self):
        dump = os.path.join(self.root, "shared.json")
        claimed = claim_files(self.data_dir, dump)
        with self.assertRaises(StartupError) as raised:
            claim_files(os.path.join(self.root, "elsewhere"), dump)
        self.assertIn(f"snapshot {dump} is in use by process", str(raised.exception))
        self.assertEqual(len(claimed.locks), 2)

    def test_a_failed_start_leaves_no_lock(self):
        """The locks of a daemon that is not kept go with it."""
        FileLock(os.path.join(self.root, "lock"), "the thing")
        FileLock(os.path.join(self.root, "lock"), "the thing")

    def test_planted_link_for_a_lock_refused(self):
        """
        In a shared directory someone could point the lock's name at a file
        of the daemon's user: it must not be truncated.
        """
        victim = os.path.join(self.root, "victim")
        with open(victim, "w") as f:
            f.write("precious")
        dump = os.path.join(self.root, "shared.json")
        os.symlink(victim, dump + ".lock")
        with self.assertRaises(StartupError):
            claim_files(self.data_dir, dump)
        with open(victim) as f:
            self.assertEqual(f.read(), "precious")

    def test_a_lock_that_cannot_be_opened_says_so_once(self):
        unraisable = []
        self.patch(sys, "unraisablehook", unraisable.append)
        with self.assertRaises(StartupError) as raised:
            FileLock(os.path.join(self.root, "missing", "lock"), "the thing")
        self.assertIn("cannot lock the thing", str(raised.exception))
        gc.collect()
        self.assertEqual(unraisable, [])

    def test_data_directory_readable_by_others_made_private(self):
        os.makedirs(self.data_dir, mode=0o755)
        os.chmod(self.data_dir, 0o755)
        claim_files(self.data_dir, os.path.join(self.data_dir, "s.json"))
        self.assertEqual(_mode(self.data_dir), 0o700)

    def test_files_are_private_whatever_the_umask(self):
        previous = os.umask(0)
        self.addCleanup(os.umask, previous)
        claimed = claim_files(self.data_dir, os.path.join(self.data_dir, "s.json"))
        self.assertEqual(_mode(self.data_dir), 0o700)
        for lock in claimed.locks:
            self.assertEqual(_mode(lock.path), 0o600)

    def test_snapshot_through_a_link_is_written_where_it_points(self):
        target = os.path.join(self.root, "volume", "snapshot.json")
        os.makedirs(os.path.dirname(target))
        link = os.path.join(self.root, "link.json")
        os.symlink(target, link)
        self.assertEqual(claim_files(self.data_dir, link).dump_file, target)

    def test_link_another_user_made_is_not_followed(self):
        """
        In a shared directory (/tmp) another user could point the snapshot's
        name into a directory of ours, and have us write there.
        """
        target = os.path.join(self.root, "ours", "planted.json")
        os.makedirs(os.path.dirname(target))
        link = os.path.join(self.root, "s.json")
        os.symlink(target, link)
        os.lchown(link, 65534, 65534)
        with self.assertRaises(StartupError) as raised:
            claim_files(self.data_dir, link)
        self.assertIn("a link another user made", str(raised.exception))

    def snapshot(self, mode: int) -> str:
        """A snapshot file of C{mode}, where the daemon will look for it."""
        dump = os.path.join(self.root, "s.json")
        with open(dump, "w") as f:
            f.write("{}")
        os.chmod(dump, mode)
        return dump

    def test_snapshot_another_user_owns_or_may_write_refused(self):
        dump = self.snapshot(0o600)
        os.chown(dump, 65534, 65534)
        with self.assertRaises(StartupError) as raised:
            claim_files(self.data_dir, dump)
        self.assertIn("belongs to another user", str(raised.exception))
        os.chown(dump, os.geteuid(), os.getegid())
        os.chmod(dump, 0o666)
        with self.assertRaises(StartupError) as raised:
            claim_files(self.data_dir, dump)
        self.assertIn("may have been written by others", str(raised.exception))

    def test_snapshot_others_may_read_made_private(self):
        dump = self.snapshot(0o644)
        claim_files(self.data_dir, dump)
        self.assertEqual(_mode(dump), 0o600)

    def test_dump_file_that_names_no_file(self):
        for dump in ["", self.root]:
            with self.assertRaises(StartupError) as raised:
                claim_files(self.data_dir, dump)
            self.assertIn("must name a file", str(raised.exception))
        blocker = os.path.join(self.root, "a-file")
        open(blocker, "w").close()
        with self.assertRaises(StartupError) as raised:
            claim_files(self.data_dir, os.path.join(blocker, "s.json"))
        self.assertIn(f"{blocker}, is a file", str(raised.exception))

    def test_link_to_nothing_refused(self):
        link = os.path.join(self.root, "link.json")
        os.symlink(os.path.join(self.root, "unmounted", "snapshot.json"), link)
        with self.assertRaises(StartupError) as raised:
            claim_files(self.data_dir, link)
        self.assertIn("whose directory does not exist", str(raised.exception))
        self.assertFalse(os.path.exists(os.path.join(self.root, "unmounted")))

    def test_no_directory_made_outside_the_data_directory(self):
        dump = os.path.join(self.root, "nonexistent", "x.json")
        with self.assertRaises(StartupError) as raised:
            claim_files(self.data_dir, dump)
        self.assertIn("does not exist; create it first", str(raised.exception))
        self.assertFalse(os.path.exists(os.path.join(self.root, "nonexistent")))
        inside = os.path.join(self.data_dir, "snapshots", "x.json")
        claim_files(self.data_dir, inside)
        self.assertEqual(_mode(os.path.dirname(inside)), 0o700)


class DaemonFilesTests(TestCase):
    """The same, for real twistd processes."""

    def setUp(self):
        self.data_dir = os.path.abspath(self.mktemp())
        self.http = http()

    def run_async(self, coroutine) -> Deferred:
        return Deferred.fromCoroutine(coroutine)

    def test_second_daemon_on_a_data_directory_refused_and_no_stale_lock(self):
        async def check():
            first = Daemon.ersid(self, self.data_dir, "--fsync", "always")
            url = await first.rest_url()
            await (await self.http.put(f"{url}/k", data=b"first")).content()
            second = Daemon.ersid(self, self.data_dir)
            self.assertEqual(await second.ended, 1)
            self.assertEqual(
                second.output.strip().splitlines()[-1],
                f"ersid: data directory {self.data_dir} is in use by process "
                f"{first.process.pid} (it holds {self.data_dir}/ersid.lock); two "
                "daemons on the same files would lose each other's writes",
            )
            self.assertEqual(await first.stop("KILL"), -signal.SIGKILL)
            third = Daemon.ersid(self, self.data_dir)
            url = await third.rest_url()
            self.assertEqual(
                await (await self.http.get(f"{url}/k")).content(), b"first"
            )

        return self.run_async(check())

    def test_lost_snapshot_refused_not_taken_for_a_new_store(self):
        """
        With the snapshot gone, the journal alone holds only the changes
        since it: the daemon refuses to start, and keeps the journal.
        """

        async def check():
            first = Daemon.ersid(self, self.data_dir, "--fsync", "always")
            url = await first.rest_url()
            for i in range(3):
                await (await self.http.put(f"{url}/old{i}", data=b"v")).content()
            self.assertEqual(await first.stop("TERM"), -signal.SIGTERM)
            second = Daemon.ersid(self, self.data_dir, "--fsync", "always")
            url = await second.rest_url()
            await (await self.http.put(f"{url}/new", data=b"v")).content()
            self.assertEqual(await second.stop("KILL"), -signal.SIGKILL)
            snapshot = os.path.join(self.data_dir, "snapshot.json")
            os.rename(snapshot, snapshot + ".moved")
            journal = sorted(n for n in os.listdir(self.data_dir) if "journal" in n)

            third = Daemon.ersid(self, self.data_dir)
            self.assertEqual(await third.ended, 1)
            self.assertIn(
                f"ersid: the journal in {self.data_dir} starts after revision 3, "
                f"but there is no snapshot at {snapshot}",
                third.output,
            )
            self.assertEqual(
                sorted(n for n in os.listdir(self.data_dir) if "journal" in n), journal
            )
            os.rename(snapshot + ".moved", snapshot)
            fourth = Daemon.ersid(self, self.data_dir)
            url = await fourth.rest_url()
            keys = await (await self.http.get(f"{url}/_keys")).json()
            self.assertEqual(keys["keys"], ["new", "old0", "old1", "old2"])

        return self.run_async(check())

    def test_journal_and_snapshot_private_under_umask_000(self):
        async def check():
            daemon = Daemon.twistd(
                *("-n", "--pidfile=", "--umask", "000", "ersid"),
                *("-d", self.data_dir, "-m", "none", "-p", "tcp:0:interface=127.0.0.1"),
            )
            self.addCleanup(daemon.stop, "KILL")
            url = await daemon.rest_url()
            await (await self.http.put(f"{url}/k", data=b"v")).content()
            await daemon.stop("TERM")
            names = os.listdir(self.data_dir)
            self.assertIn("snapshot.json", names)
            self.assertTrue(any(name.startswith("journal.") for name in names))
            for name in names:
                self.assertEqual(_mode(os.path.join(self.data_dir, name)), 0o600, name)

        return self.run_async(check())
