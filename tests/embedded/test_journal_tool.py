"""
C{ersid-journal}, the installed command, run as a subprocess on journals
written by the real journal writer (and by a real daemon), intact,
damaged by flipped bytes and torn by truncation.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from ersid.embedded.journal import Journal
from ersid.embedded.journal_format import read_segment, segments
from ersid.embedded.memory import DictStorage

from .._helpers import Daemon, http, require

COMMAND = os.path.join(os.path.dirname(sys.executable), "ersid-journal")


def run(*args: str, umask: int = -1, user: int | None = None):
    """C{ersid-journal ARGS}, finished: its exit status, stdout and stderr as text."""
    prefix = []
    if user is not None:
        prefix = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"]
    done = subprocess.run(
        [*prefix, COMMAND, *args], capture_output=True, text=True, umask=umask
    )
    return done.returncode, done.stdout, done.stderr


def _one_line_error(test: TestCase, result, status: int, *said: str) -> None:
    code, stdout, stderr = result
    test.assertEqual(code, status, result)
    test.assertEqual(stdout, "")
    test.assertEqual(stderr.count("\n"), 1, stderr)
    test.assertTrue(stderr.startswith("ersid-journal: "), stderr)
    for part in said:
        test.assertIn(part, stderr)


class _ToolTestCase(TestCase):
    def setUp(self):
        require(os.path.exists(COMMAND), f"{COMMAND}: pip install -e . installs it")
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory, mode=0o700)

    async def write(self, count: int = 4) -> str:
        """
        Journal C{count} writes (a set of a binary value, a key with
        characters a terminal should not be sent, a delete) through the
        real journal writer; the segment's path.
        """
        journal = Journal(self.directory, 0, "always", reactor)
        journal.start()
        storage = DictStorage([], 0, journal)
        await storage.set("plain", b"\x00\xff binary", "image/png")
        await storage.set("tab\there/é", b"text", "text/plain")
        await storage.delete("plain")
        for i in range(count - 3):
            await storage.set(f"k{i}", b"v" * 100)
        await journal.stop()
        (path,) = segments(self.directory)
        return path

    def offsets(self, path: str) -> list[int]:
        return [offset for offset, _ in read_segment(path)]

    def damage(self, path: str) -> tuple[bytes, int]:
        """Flip a byte inside the second entry: its original bytes, and the offset."""
        with open(path, "rb") as f:
            original = f.read()
        offset = self.offsets(path)[1]
        damaged = bytearray(original)
        damaged[offset + 12] ^= 0xFF
        with open(path, "wb") as f:
            f.write(damaged)
        return bytes(damaged), offset

    def run_async(self, coroutine) -> Deferred:
        return Deferred.fromCoroutine(coroutine)


class HelpAndUsageTests(_ToolTestCase):
    def test_help_of_each_command(self):
        for args, said in [
            ([], "check"),
            (["check"], "FILE|DATA_DIR"),
            (["list"], "FILE|DATA_DIR"),
            (["repair"], "--dry-run"),
        ]:
            code, stdout, stderr = run(*args, "--help")
            self.assertEqual((code, stderr), (0, ""))
            self.assertTrue(stdout.startswith("usage: ersid-journal"), stdout)
            self.assertIn(said, stdout)

    def test_usage_errors_are_one_line_and_status_2(self):
        path = os.path.join(self.directory, "journal.00000000000000000000")
        open(path, "wb").close()
        _one_line_error(self, run(), 2, "required: COMMAND", "ersid-journal --help")
        _one_line_error(self, run("check"), 2, "ersid-journal check --help")
        _one_line_error(self, run("frobnicate", path), 2, "invalid choice")
        _one_line_error(self, run("check", path, "--backup"), 2, "unrecognized")


class CheckTests(_ToolTestCase):
    def test_intact_file_and_directory(self):
        async def check():
            path = await self.write(count=5)
            for target in [path, self.directory]:
                code, stdout, stderr = run("check", target)
                self.assertEqual((code, stderr), (0, ""))
                self.assertEqual(
                    stdout, f"{path}: 5 entries (revisions 1 to 5), intact\n"
                )

        return self.run_async(check())

    def test_list_shows_each_entry_on_one_line(self):
        async def check():
            path = await self.write(count=4)
            code, stdout, stderr = run("list", path)
            self.assertEqual((code, stderr), (0, ""))
            lines = stdout.splitlines()
            self.assertEqual(len(lines), 5, stdout)
            offsets = self.offsets(path)
            self.assertEqual(
                [line.split()[:4] for line in lines[:4]],
                [
                    [str(offsets[0]), "revision", "1", "set"],
                    [str(offsets[1]), "revision", "2", "set"],
                    [str(offsets[2]), "revision", "3", "delete"],
                    [str(offsets[3]), "revision", "4", "set"],
                ],
            )
            self.assertIn("'plain'  9 bytes 'image/png'", lines[0])
            # A tab in a key is escaped: one entry, one line.
            self.assertIn("'tab\\there/é'  4 bytes 'text/plain'", lines[1])
            self.assertEqual(lines[4], f"{path}: 4 entries (revisions 1 to 4), intact")

        return self.run_async(check())

    def test_flipped_byte_is_damage_named_with_its_repair(self):
        async def check():
            path = await self.write()
            _, offset = self.damage(path)
            for target in [path, self.directory]:
                code, stdout, stderr = run("check", target)
                self.assertEqual((code, stderr), (1, ""))
                self.assertIn(
                    f"{path}: damaged at offset {offset}: an entry whose checksum "
                    "does not match",
                    stdout,
                )
                self.assertIn("1 entry (revisions 1 to 1) before it", stdout)
                self.assertIn(f"ersid-journal repair {path} --backup", stdout)
            code, stdout, _ = run("list", path)
            self.assertEqual(code, 1)
            self.assertEqual(len(stdout.splitlines()), 3, stdout)

        return self.run_async(check())

    def test_torn_last_entry_is_said_to_be_cut_by_the_daemon(self):
        async def check():
            path = await self.write()
            last = self.offsets(path)[-1]
            os.truncate(path, last + 5)
            code, stdout, _ = run("check", self.directory)
            self.assertEqual(code, 1)
            self.assertIn(f"damaged at offset {last}: an incomplete entry", stdout)
            self.assertIn("the daemon cuts it off itself when it starts", stdout)

        return self.run_async(check())

    def test_segment_gone_when_read_is_skipped_in_a_directory(self):
        """
        A running daemon deletes the segments a snapshot covers, maybe
        between the listing of its directory and their reading (here, a
        listed name whose file is gone: a dangling link): said, not fatal.
        """

        async def check():
            path = await self.write()
            gone = os.path.join(self.directory, "journal.00000000000000000000")
            os.rename(
                path, os.path.join(self.directory, "journal.00000000000000000001")
            )
            os.symlink("nowhere", gone)
            code, stdout, stderr = run("check", self.directory)
            self.assertEqual((code, stderr), (0, ""))
            self.assertIn(f"{gone}: deleted as it was read", stdout)
            self.assertIn("journal.00000000000000000001: 4 entries", stdout)
            # Named on its own, it is an error.
            _one_line_error(self, run("check", gone), 2, "no such file or directory")

        return self.run_async(check())

    def test_files_that_cannot_be_checked_are_one_line_errors(self):
        missing = os.path.join(self.directory, "journal.00000000000000000009")
        _one_line_error(
            self, run("check", missing), 2, f"{missing}: no such file or directory"
        )
        _one_line_error(self, run("list", self.directory), 2, "holds no journal")
        snapshot = os.path.join(self.directory, "snapshot.json")
        with open(snapshot, "w") as f:
            f.write('{"ersid_snapshot": 2, "revision": 0, "pages": [\n], "count": 0}\n')
        _one_line_error(
            self, run("check", snapshot), 2, f"{snapshot} is not an Ersid journal"
        )
        _one_line_error(self, run("check", "/dev/null"), 2, "not a regular file")

    def test_permission_denied_is_a_one_line_error(self):
        require(os.geteuid() == 0 and bool(shutil.which("setpriv")), "root, setpriv")

        async def check():
            path = await self.write()
            # Others may reach the file (mktemp's directory is private), not read it.
            os.chmod(os.path.dirname(self.directory), 0o755)
            os.chmod(self.directory, 0o755)
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
            _one_line_error(
                self,
                run("check", path, user=65534),
                2,
                f"cannot read {path}: Permission denied",
            )

        return self.run_async(check())


class RepairTests(_ToolTestCase):
    def test_dry_run_says_the_cut_and_changes_nothing(self):
        async def check():
            path = await self.write()
            damaged, offset = self.damage(path)
            code, stdout, stderr = run("repair", path, "--dry-run")
            self.assertEqual((code, stderr), (0, ""))
            self.assertIn(f"would cut {path} at offset {offset}", stdout)
            self.assertIn(f"dropping {len(damaged) - offset} bytes", stdout)
            self.assertIn("nothing was changed", stdout)
            with open(path, "rb") as f:
                self.assertEqual(f.read(), damaged)
            self.assertEqual(os.listdir(self.directory), [os.path.basename(path)])

        return self.run_async(check())

    def test_refused_without_a_choice_of_backup(self):
        async def check():
            path = await self.write()
            damaged, _ = self.damage(path)
            _one_line_error(self, run("repair", path), 2, "--backup", "--no-backup")
            with open(path, "rb") as f:
                self.assertEqual(f.read(), damaged)

        return self.run_async(check())

    def test_cut_at_the_damage_keeping_a_private_backup(self):
        """
        Whatever the umask, the backup is mode 0600; the segment is cut at
        the damage, and reads intact with the entries before it.
        """

        async def check():
            path = await self.write()
            damaged, offset = self.damage(path)
            code, stdout, stderr = run("repair", path, "--backup", umask=0)
            self.assertEqual((code, stderr), (0, ""), stdout)
            self.assertIn(f"cut {path} at offset {offset}", stdout)
            self.assertIn(f"the original is {path}.bak", stdout)
            with open(f"{path}.bak", "rb") as f:
                self.assertEqual(f.read(), damaged)
            self.assertEqual(stat.S_IMODE(os.stat(f"{path}.bak").st_mode), 0o600)
            self.assertEqual(os.path.getsize(path), offset)
            self.assertEqual([e.key for _, e in read_segment(path)], ["plain"])
            self.assertEqual(run("check", self.directory)[0], 0)
            # Once repaired, again is nothing to do; the backup is never
            # overwritten.
            self.assertIn("nothing to cut", run("repair", path, "--backup")[1])
            self.damage_again(path)
            _one_line_error(
                self, run("repair", path, "--backup"), 2, f"{path}.bak exists"
            )
            with open(f"{path}.bak", "rb") as f:
                self.assertEqual(f.read(), damaged)

        return self.run_async(check())

    def damage_again(self, path: str) -> None:
        with open(path, "ab") as f:
            f.write(b"\xff" * 20)

    def test_backup_to_a_named_file_or_none(self):
        async def check():
            path = await self.write()
            damaged, offset = self.damage(path)
            backup = os.path.abspath(self.mktemp())
            self.assertEqual(run("repair", path, "--backup-to", backup)[0], 0)
            with open(backup, "rb") as f:
                self.assertEqual(f.read(), damaged)
            self.damage_again(path)
            code, stdout, _ = run("repair", path, "--no-backup")
            self.assertEqual(code, 0)
            self.assertIn("no backup kept", stdout)
            self.assertEqual(os.path.getsize(path), offset)
            self.assertEqual(os.listdir(self.directory), [os.path.basename(path)])

        return self.run_async(check())

    def test_cutting_an_older_segment_says_which_revisions_are_lost(self):
        """
        Damage in a segment a newer one follows (its snapshot failed, say):
        the cut loses the revisions up to where the newer one starts.
        """

        async def check():
            journal = Journal(self.directory, 0, "always", reactor)
            journal.start()
            storage = DictStorage([], 0, journal)
            for i in range(4):
                await storage.set(f"k{i}", b"v")
            await journal.rotate(4)  # the older segment is kept
            await storage.set("k4", b"v")
            await journal.stop()
            older, newer = segments(self.directory)
            self.damage(older)
            code, stdout, _ = run("repair", older, "--dry-run")
            self.assertEqual(code, 0)
            self.assertIn("keeping 1 entry (revisions 1 to 1), dropping", stdout)
            self.assertIn(
                "the revisions after 1 up to 4 are lost (a newer segment follows)",
                stdout,
            )
            code, stdout, _ = run("repair", newer, "--dry-run")
            self.assertIn("intact: nothing to cut", stdout)

        return self.run_async(check())

    def test_a_directory_is_refused(self):
        _one_line_error(
            self,
            run("repair", self.directory, "--backup"),
            2,
            f"{self.directory} is a directory",
        )


class WithTheDaemonTests(_ToolTestCase):
    """The tool and a real daemon: its refusal to start, the repair, the lock."""

    def test_daemon_names_the_repair_which_lets_it_start(self):
        async def check():
            path = await self.write()
            self.damage(path)
            refused = Daemon.ersid(self, self.directory)
            self.assertEqual(await refused.ended, 1)
            self.assertIn(
                f"Inspect it with: ersid-journal check {path}", refused.output
            )
            command = f"ersid-journal repair {path} --backup"
            self.assertIn(command, refused.output)
            code, _, stderr = await deferToThread(run, *command.split()[1:])
            self.assertEqual((code, stderr), (0, ""))

            daemon = Daemon.ersid(self, self.directory)
            url = await daemon.rest_url()
            client = http()
            response = await client.get(f"{url}/plain")
            self.assertEqual(await response.content(), b"\x00\xff binary")
            self.assertEqual((await client.get(f"{url}/k0")).code, 404)
            self.assertNotIn("Traceback", daemon.output)

            # Checking beside the running daemon is allowed, and said; a
            # repair is refused, naming the daemon's process.
            code, stdout, _ = await deferToThread(run, "check", self.directory)
            self.assertEqual(code, 0)
            pid = daemon.process.pid
            self.assertIn(f"note: a daemon (process {pid}) is running", stdout)
            self.damage_after_the_end(path)
            for flags in [["--backup"], ["--dry-run"]]:
                refusal = await deferToThread(run, "repair", path, *flags)
                _one_line_error(
                    self, refusal, 2, f"a daemon (process {pid}) is running on"
                )

        return self.run_async(check())

    def damage_after_the_end(self, path: str) -> None:
        with open(path, "ab") as f:
            f.write(b"\xff" * 20)
