"""
The options of C{twistd ersid} and the composition of the daemon.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator

from twisted.application.internet import TimerService
from twisted.application.service import IService, MultiService
from twisted.trial.unittest import TestCase

from ersid.files import default_data_dir
from ersid.tap import Options, makeService
from ersid.web.app import DEFAULT_MAX_VALUE_SIZE


def _services(parent: Iterable[IService]) -> Iterator[IService]:
    """Every service under C{parent}, at any depth."""
    for child in parent:
        yield child
        if isinstance(child, MultiService):
            yield from _services(child)


class OptionsTests(TestCase):
    def parse(self, *args: str) -> Options:
        options = Options()
        options.parseOptions(list(args))
        return options

    def test_lab_defaults(self):
        options = self.parse()
        self.assertEqual(
            options["rest-port"], "tcp:8080:interface=127.0.0.1:backlog=1024"
        )
        self.assertEqual(options["dump-interval"], 10)
        self.assertEqual(options["storage"], "dict")
        self.assertEqual(options["max-value-size"], DEFAULT_MAX_VALUE_SIZE)
        self.assertEqual(
            options["dump-file"], os.path.join(options["data-dir"], "snapshot.json")
        )

    def test_lab_short_options(self):
        options = self.parse("-p", "9090", "-i", "5", "-f", "/srv/dump.json")
        self.assertEqual(
            options["rest-port"], "tcp:9090:interface=127.0.0.1:backlog=1024"
        )
        self.assertEqual(options["dump-interval"], 5)
        self.assertEqual(options["dump-file"], "/srv/dump.json")

    def test_endpoint_descriptions(self):
        for description in [
            "tcp:8080:interface=0.0.0.0",
            "unix:/run/ersid.sock",
            "tcp6:8080:interface=\\:\\:1",
        ]:
            self.assertEqual(self.parse("-p", description)["rest-port"], description)

    def test_bad_values(self):
        for args in [
            ["-p", "tcp:notaport"],
            ["-p", "70000"],
            ["-p", "\u00b2"],  # a digit to str.isdigit(), not to int()
            ["-p", "carrier-pigeon:1"],
            ["-i", "0"],
            ["-i", "soon"],
            ["--max-value-size", "-1"],
            ["--storage", "floppy"],
            ["--no-such-option"],
        ]:
            with self.assertRaises(SystemExit) as raised:
                self.parse(*args)
            message = raised.exception.code
            self.assertTrue(message.startswith("ersid: "), message)
            self.assertNotIn("\n", message)

    def test_data_dir_from_environment(self):
        self.patch(os, "environ", {"ERSID_DATA_DIR": "/srv/ersid"})
        self.assertEqual(default_data_dir(), "/srv/ersid")
        self.patch(os, "environ", {"XDG_DATA_HOME": "/x", "HOME": "/home/u"})
        self.assertEqual(default_data_dir(), "/x/ersid")


class MakeServiceTests(TestCase):
    def setUp(self):
        self.data_dir = os.path.abspath(self.mktemp())

    def options(self, *args: str) -> Options:
        options = Options()
        options.parseOptions(["--data-dir", self.data_dir, *args])
        return options

    def test_composes_rest_and_snapshots(self):
        daemon = makeService(self.options("-p", "tcp:0:interface=127.0.0.1", "-i", "3"))
        by_type = {type(child).__name__: child for child in _services(daemon)}
        self.assertEqual(by_type["Listener"].description, "tcp:0:interface=127.0.0.1")
        timer = by_type["SnapshotService"]
        self.assertIsInstance(timer, TimerService)
        self.assertEqual(timer.step, 3)
        self.assertEqual(os.stat(self.data_dir).st_mode & 0o777, 0o700)

    def test_corrupt_snapshot_stops_startup(self):
        os.makedirs(self.data_dir)
        path = os.path.join(self.data_dir, "snapshot.json")
        with open(path, "w") as f:
            f.write("{not json")
        with self.assertRaises(SystemExit) as raised:
            makeService(self.options())
        self.assertIn(f"snapshot {path} is corrupt", str(raised.exception))
        with open(path) as f:
            self.assertEqual(f.read(), "{not json")
