"""
The daemon as a user runs it: real C{twistd} processes from the checkout,
spoken to over loopback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from ersid.embedded.journal_format import JournalEntry
from ersid.storage import Record
from ersid.testing import free_port_holder

from ._helpers import CHECKOUT, Daemon, http

LOOPBACK_ANY_PORT = "tcp:0:interface=127.0.0.1"


class DaemonTests(TestCase):
    def setUp(self):
        self.data_dir = os.path.abspath(self.mktemp())
        self.http = http()

    def run_async(self, coroutine) -> Deferred:
        return Deferred.fromCoroutine(coroutine)

    def start(self, *args: str, env=None) -> Daemon:
        return Daemon.ersid(self, self.data_dir, *args, env=env)

    def test_help_lists_options_with_defaults(self):
        async def check():
            daemon = Daemon.twistd("ersid", "--help")
            self.assertEqual(await daemon.ended, 0)
            output = " ".join(daemon.output.split())
            for option in [
                "--rest-port=",
                "--dump-interval=",
                "--dump-file=",
                "--data-dir=",
                "--storage=",
                "--max-value-size=",
                "[default: 8080]",
                "[default: 10]",
            ]:
                self.assertIn(option, output)

        return self.run_async(check())

    def test_data_survives_restart(self):
        async def check():
            daemon = self.start("--dump-interval", "3600")
            url = await daemon.rest_url()
            response = await self.http.post(f"{url}/mykey", data=b"myvalue")
            self.assertEqual(response.code, 201)
            await self.http.put(f"{url}/bin", data=b"\x00\xff")
            self.assertEqual(await daemon.stop("TERM"), -signal.SIGTERM)
            self.assertIn("Dumping 2 keys in", daemon.output)

            again = self.start()
            url = await again.rest_url()
            self.assertEqual(
                await (await self.http.get(f"{url}/mykey")).content(), b"myvalue"
            )
            self.assertEqual(
                await (await self.http.get(f"{url}/bin")).content(), b"\x00\xff"
            )
            health = json.loads(await (await self.http.get(f"{url}/_health")).content())
            self.assertEqual((health["keys"], health["revision"]), (2, 2))
            self.assertEqual(await again.stop("INT"), -signal.SIGINT)

        return self.run_async(check())

    def test_port_in_use_is_a_clean_error(self):
        holder, port = free_port_holder()
        self.addCleanup(holder.close)

        async def check():
            daemon = self.start("-p", str(port))
            self.assertEqual(await daemon.ended, 1)
            self.assertIn(
                f"ersid: cannot listen for the REST API on tcp:{port}:"
                "interface=127.0.0.1:backlog=1024: [Errno 98] Address already in use",
                daemon.output,
            )
            self.assertNotIn("Traceback", daemon.output)

        return self.run_async(check())

    def test_bad_option_is_one_line_on_standard_error(self):
        """Not twistd's forty lines of usage on standard output, and status 0."""

        def run() -> subprocess.CompletedProcess:
            return subprocess.run(
                [
                    *(sys.executable, "-c"),
                    "from twisted.scripts.twistd import run; run()",
                    *("-n", "--pidfile=", "ersid", "-p", "99999"),
                ],
                capture_output=True,
                cwd=CHECKOUT,
                env={**os.environ, "PYTHONPATH": CHECKOUT},
            )

        async def check():
            done = await deferToThread(run)
            self.assertEqual(done.returncode, 1)
            self.assertEqual(done.stdout, b"")
            self.assertEqual(
                done.stderr,
                b"ersid: port 99999 is out of range "
                b"(the options: twistd ersid --help)\n",
            )

        return self.run_async(check())

    def test_unknown_storage_is_a_clean_error(self):
        async def check():
            daemon = self.start("--storage", "floppy")
            self.assertEqual(await daemon.ended, 1)
            self.assertIn("unknown storage 'floppy'", daemon.output)
            self.assertNotIn("Traceback", daemon.output)

        return self.run_async(check())

    def test_corrupt_snapshot_refuses_to_start(self):
        os.makedirs(self.data_dir)
        path = os.path.join(self.data_dir, "snapshot.json")
        with open(path, "w") as f:
            f.write('{"ersid_snapshot": 1, "revision": 3, "pages": [\n[["k", 1')

        async def check():
            daemon = self.start()
            self.assertEqual(await daemon.ended, 1)
            self.assertIn(f"ersid: snapshot {path} is corrupt", daemon.output)
            self.assertNotIn("Traceback", daemon.output)
            with open(path) as f:
                self.assertTrue(f.read().endswith('[["k", 1'))

        return self.run_async(check())

    def test_tac_file(self):
        """twistd -ny service.tac runs the same daemon."""

        async def check():
            daemon = Daemon.twistd(
                "-ny",
                "service.tac",
                "--pidfile=",
                env={"ERSID_OPTIONS": f"-p {LOOPBACK_ANY_PORT} -d {self.data_dir}"},
            )
            self.addCleanup(daemon.stop, "KILL")
            url = await daemon.rest_url()
            await self.http.put(f"{url}/k", data=b"tac")
            self.assertEqual(await (await self.http.get(f"{url}/k")).content(), b"tac")
            self.assertEqual(await daemon.stop(), -signal.SIGTERM)

        return self.run_async(check())

    def test_tac_file_with_bad_options_says_so_in_one_line(self):
        async def check():
            daemon = Daemon.twistd(
                "-ny",
                "service.tac",
                "--pidfile=",
                env={"ERSID_OPTIONS": "-p 99999"},
            )
            self.assertEqual(await daemon.ended, 1)
            self.assertEqual(
                daemon.output, "ersid: port 99999 is out of range (in $ERSID_OPTIONS)\n"
            )

        return self.run_async(check())

    def test_bin_service(self):
        return self.check_bin_service(sys.executable)

    def test_bin_service_from_a_python_without_twisted(self):
        """
        The lab's command run with the system's Python, not the checkout's
        .venv: it goes to the .venv rather than failing on a missing module.
        """
        base = os.path.join(sys.base_prefix, "bin", "python3")
        missing = subprocess.run([base, "-c", "import twisted.scripts"], cwd="/")
        self.assertNotEqual(missing.returncode, 0, "this Python has Twisted")
        return self.check_bin_service(base)

    def check_bin_service(self, python: str) -> Deferred:
        async def check():
            script = os.path.join(CHECKOUT, "bin", "service")
            daemon = Daemon(
                [python, script, "-p", LOOPBACK_ANY_PORT, "-d", self.data_dir],
                env={"PYTHONPATH": ""},
            )
            self.addCleanup(daemon.stop, "KILL")
            url = await daemon.rest_url()
            response = await self.http.get(f"{url}/another_key")
            self.assertEqual(response.code, 404)
            await response.content()
            self.assertEqual(await daemon.stop(), -signal.SIGTERM)

        return self.run_async(check())


class DaemonFaultTests(TestCase):
    """Faults the daemon meets at startup: each a clear message and exit 1."""

    def run_async(self, coroutine) -> Deferred:
        return Deferred.fromCoroutine(coroutine)

    async def refused(self, data_dir: str, *args: str) -> str:
        daemon = Daemon.ersid(self, data_dir, *args)
        self.assertEqual(await daemon.ended, 1, daemon.output)
        self.assertNotIn("Traceback", daemon.output)
        return daemon.output

    def test_unwritable_data_directory(self):
        blocker = os.path.abspath(self.mktemp())
        with open(blocker, "w") as f:
            f.write("a file, not a directory")
        data_dir = os.path.join(blocker, "data")

        async def check():
            output = await self.refused(data_dir)
            self.assertIn(f"ersid: [Errno 20] Not a directory: '{data_dir}'", output)

        return self.run_async(check())

    def test_corrupt_journal_refuses_to_start(self):
        data_dir = os.path.abspath(self.mktemp())
        os.makedirs(data_dir)
        entries = [
            JournalEntry(i, f"k{i}", Record(b"v", version=i)).encode()
            for i in (1, 2, 3)
        ]
        damaged = bytearray(b"".join(entries))
        damaged[len(entries[0]) + 10] ^= 0xFF
        segment = os.path.join(data_dir, f"journal.{0:020d}")
        with open(segment, "wb") as f:
            f.write(damaged)

        async def check():
            output = await self.refused(data_dir)
            self.assertIn(
                f"journal {segment} is damaged at offset {len(entries[0])}", output
            )
            self.assertIn(f"ersid-journal repair {segment} --backup", output)
            with open(segment, "rb") as f:
                self.assertEqual(f.read(), damaged)

        return self.run_async(check())

    def test_bad_fsync_policy(self):
        async def check():
            output = await self.refused(
                os.path.abspath(self.mktemp()), "--fsync", "sometimes"
            )
            self.assertIn("--fsync must be one of always, everysec, no", output)

        return self.run_async(check())

    def test_journal_replayed_after_kill(self):
        """Writes since the last snapshot come back from the journal."""
        data_dir = os.path.abspath(self.mktemp())
        client = http()

        async def check():
            first = Daemon.ersid(self, data_dir, "-i", "3600", "--fsync", "always")
            url = await first.rest_url()
            for i in range(5):
                await (await client.put(f"{url}/k{i}", data=b"%d" % i)).content()
            await (await client.delete(f"{url}/k0")).content()
            self.assertEqual(await first.stop("KILL"), -signal.SIGKILL)
            second = Daemon.ersid(self, data_dir)
            url = await second.rest_url()
            self.assertIn("Replayed 6 journal entries, up to revision 6", second.output)
            keys = await (await client.get(f"{url}/_keys")).json()
            self.assertEqual(keys["keys"], ["k1", "k2", "k3", "k4"])
            health = await (await client.get(f"{url}/_health")).json()
            self.assertEqual(health["journal"], {"fsync": "everysec", "error": None})

        return self.run_async(check())
