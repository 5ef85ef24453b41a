"""
The daemon's log as JSON lines (C{twistd --logger ersid.logs.json_lines}),
read as a log shipper reads it: a real daemon, every line of its output
parsed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat

from twisted.internet import inotify
from twisted.internet.defer import Deferred
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase

from ._helpers import Daemon, http

_JSON_LOGGER = ("--logger", "ersid.logs.json_lines")
_LISTENING = re.compile(rb"REST API listening on .*?host='([\d.]+)', port=(\d+)")


async def _url_written_to(path: str, skip: int = 0) -> str:
    """
    The REST API's URL, once a daemon logging to the file at C{path} has
    written that it listens (after C{skip} earlier such lines): the file
    is watched with inotify, not polled.
    """
    written: Deferred[tuple[bytes, bytes]] = Deferred()

    def look(*ignored: object) -> None:
        try:
            with open(path, "rb") as f:
                found = _LISTENING.findall(f.read())
        except FileNotFoundError:
            return
        if len(found) > skip and not written.called:
            written.callback(found[skip])

    notifier = inotify.INotify()
    notifier.startReading()
    try:
        notifier.watch(
            FilePath(os.path.dirname(path)),
            mask=inotify.IN_MODIFY | inotify.IN_CREATE,
            callbacks=[look],
        )
        look()
        host, port = await written
    finally:
        notifier.stopReading()
        notifier.loseConnection()
    return f"http://{host.decode()}:{port.decode()}"


class JSONLinesTests(TestCase):
    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.data_dir = os.path.join(self.directory, "data")

    def start(self, env=None) -> Daemon:
        """A daemon logging JSON lines, spawned with umask 0."""
        previous = os.umask(0)
        try:
            daemon = Daemon.twistd(
                *("-n", "--pidfile=", *_JSON_LOGGER, "ersid"),
                *("-d", self.data_dir, "-m", "none", "--dump-interval", "3600"),
                *("-p", "tcp:0:interface=127.0.0.1"),
                env=env,
            )
        finally:
            os.umask(previous)
        self.addCleanup(daemon.stop, "KILL")
        return daemon

    async def run_and_stop(self, daemon: Daemon, url: str) -> None:
        """Write a key to the daemon at C{url}, then stop it."""
        response = await http().put(f"{url}/key", data=b"value")
        self.assertIn(response.code, (201, 204))
        self.assertEqual(await daemon.stop("TERM"), -signal.SIGTERM)

    def events(self, text: str) -> list[dict]:
        """Every line parsed as one JSON object, with its text and level."""
        events = [json.loads(line) for line in text.splitlines()]
        for event in events:
            self.assertIsInstance(event["text"], str)
            self.assertIn(
                event["level"], ["debug", "info", "warn", "error", "critical"]
            )
            self.assertIsInstance(event["log_time"], float)
        return events

    def assert_a_whole_run(self, events: list[dict]) -> None:
        texts = [event["text"] for event in events]
        for said in [
            "twistd 26.",
            "REST API listening on",
            "Received SIGTERM, shutting down.",
            "Dumping 1 keys in",
            "Server Shut Down.",
        ]:
            self.assertTrue(any(t.startswith(said) for t in texts), (said, texts))
        # A warning is a warning: the data directory made private again.
        (warning,) = [event for event in events if event["level"] == "warn"]
        self.assertIn("could be read by others", warning["text"])
        self.assertEqual(warning["log_namespace"], "ersid.files")

    def test_one_json_object_a_line_on_standard_output(self):
        os.makedirs(self.data_dir, mode=0o755)

        async def check():
            daemon = self.start()
            await self.run_and_stop(daemon, await daemon.rest_url())
            self.assert_a_whole_run(self.events(daemon.output))

        return Deferred.fromCoroutine(check())

    def test_to_a_private_file(self):
        os.makedirs(self.data_dir, mode=0o755)
        path = os.path.join(self.directory, "ersid.json")

        async def check():
            daemon = self.start(env={"ERSID_LOG_FILE": path})
            await self.run_and_stop(daemon, await _url_written_to(path))
            self.assertEqual(daemon.output, "")
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
            with open(path, encoding="utf-8") as f:
                first = self.events(f.read())
            self.assert_a_whole_run(first)
            # A restart appends.
            with open(path, "rb") as f:
                listening = len(_LISTENING.findall(f.read()))
            again = self.start(env={"ERSID_LOG_FILE": path})
            await self.run_and_stop(again, await _url_written_to(path, listening))
            with open(path, encoding="utf-8") as f:
                self.assertGreater(len(self.events(f.read())), len(first))

        return Deferred.fromCoroutine(check())

    def test_log_file_that_cannot_be_opened_is_one_line(self):
        path = os.path.join(self.directory, "no-such-directory", "ersid.json")

        async def check():
            daemon = self.start(env={"ERSID_LOG_FILE": path})
            self.assertEqual(await daemon.ended, 1)
            self.assertEqual(
                daemon.output,
                f"ersid: cannot open the log file {path} ($ERSID_LOG_FILE): "
                "No such file or directory\n",
            )

        return Deferred.fromCoroutine(check())
