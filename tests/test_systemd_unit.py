"""
contrib/systemd: the unit passes C{systemd-analyze verify}, its command
line is one the real C{twistd ersid} accepts (with and without the
examples of its environment file), and its user file makes its user.
systemd is not PID 1 where the tests run, so the unit is never started.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys

from twisted.scripts.twistd import ServerOptions
from twisted.trial.unittest import TestCase

from ersid.logs import json_lines
from ersid.snapshots.service import LAST_SNAPSHOT_SECONDS

from ._helpers import CHECKOUT, require

_CONTRIB = os.path.join(CHECKOUT, "contrib", "systemd")
_UNIT = os.path.join(_CONTRIB, "ersid.service")
_ANALYZE = "/usr/bin/systemd-analyze"
_TWISTD = "/opt/ersid/venv/bin/twistd"


def _settings() -> dict[str, list[str]]:
    """The unit's settings, each with its values in order (comments skipped)."""
    settings: dict[str, list[str]] = {}
    with open(_UNIT) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith(("#", ";", "[")):
                key, _, value = line.partition("=")
                settings.setdefault(key, []).append(value)
    return settings


def _examples() -> dict[str, str]:
    """The variables ersid.env shows, commented out, as if they were set."""
    examples = {}
    with open(os.path.join(_CONTRIB, "ersid.env")) as f:
        for line in f:
            name, equals, value = line.strip().removeprefix("#").partition("=")
            if equals and name.startswith("ERSID_") and value:
                examples[name] = value
    return examples


def _command(environment: dict[str, str]) -> list[str]:
    """
    ExecStart's words, each C{$NAME} replaced as systemd does: by the
    variable's value split at white space, or by nothing if it is unset.
    """
    (command,) = _settings()["ExecStart"]
    words = []
    for word in shlex.split(command):
        if word.startswith("$"):
            words.extend(environment.get(word[1:], "").split())
        else:
            words.append(word)
    return words


class UnitTests(TestCase):
    def test_systemd_analyze_verify_says_nothing(self):
        """
        Any warning fails. verify checks that ExecStart's program exists, so
        it is given a copy of the unit naming this virtualenv's twistd
        instead of /opt/ersid/venv/bin/twistd.
        """
        require(
            os.access(_ANALYZE, os.X_OK), "systemd-analyze: apt-get install systemd"
        )
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        copy = os.path.join(directory, "ersid.service")
        with open(_UNIT) as f:
            text = f.read()
        self.assertIn(f"ExecStart={_TWISTD} ", text)
        with open(copy, "w") as f:
            f.write(
                text.replace(
                    _TWISTD, os.path.join(os.path.dirname(sys.executable), "twistd")
                )
            )
        done = subprocess.run(
            [_ANALYZE, "verify", copy], capture_output=True, text=True
        )
        self.assertEqual((done.returncode, done.stdout, done.stderr), (0, "", ""))

    def test_command_line_is_one_twistd_ersid_accepts(self):
        settings = _settings()
        for environment in [{}, _examples()]:
            command = _command(environment)
            self.assertEqual(command[0], _TWISTD)
            config = ServerOptions()
            config.parseOptions(command[1:])
            self.assertTrue(config["nodaemon"])
            self.assertEqual(config["pidfile"], "")
            self.assertEqual(config.subCommand, "ersid")
            ersid = config.subOptions
            # The data in the state directory systemd makes for it.
            (state,) = settings["StateDirectory"]
            self.assertEqual(ersid["data-dir"], f"/var/lib/{state}")
            self.assertEqual(ersid["dump-file"], f"/var/lib/{state}/snapshot.json")
            if environment:
                self.assertEqual(ersid["tokens"], "/etc/ersid/tokens")
                self.assertEqual(ersid["rest-port"], "tcp:8080:interface=0.0.0.0")
                self.assertIs(config["logger"], json_lines)
            else:
                self.assertIsNone(ersid["tokens"])
                self.assertEqual(ersid["rest-port"], "tcp:8080:interface=127.0.0.1")
                self.assertIsNone(ersid["manhole-port"])
                self.assertIsNone(config["logger"])

    def test_restarts_and_stops_as_a_service_should(self):
        settings = _settings()
        self.assertEqual(settings["User"], ["ersid"])
        self.assertEqual(settings["Restart"], ["on-failure"])
        self.assertEqual(settings["ExecReload"], ["/bin/kill -HUP $MAINPID"])
        self.assertEqual(getattr(signal, settings["KillSignal"][0]), signal.SIGTERM)
        # Long enough for the last snapshot, which is given up after
        # LAST_SNAPSHOT_SECONDS.
        (timeout,) = settings["TimeoutStopSec"]
        self.assertGreater(int(timeout.removesuffix("s")), LAST_SNAPSHOT_SECONDS + 10)
        self.assertEqual(settings["UMask"], ["0077"])
        self.assertEqual(settings["ProtectSystem"], ["strict"])
        self.assertEqual(settings["CapabilityBoundingSet"], [""])

    def test_sysusers_file_makes_the_user_with_its_home(self):
        require(
            os.access("/usr/bin/systemd-sysusers", os.X_OK), "apt-get install systemd"
        )
        root = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(root, "etc"))
        subprocess.run(
            [
                "/usr/bin/systemd-sysusers",
                f"--root={root}",
                os.path.join(_CONTRIB, "ersid.sysusers.conf"),
            ],
            check=True,
            capture_output=True,
        )
        with open(os.path.join(root, "etc", "passwd")) as f:
            (user,) = [line.split(":") for line in f if line.startswith("ersid:")]
        self.assertEqual(user[5:], ["/var/lib/ersid", "/usr/sbin/nologin\n"])
        with open(os.path.join(root, "etc", "group")) as f:
            (group,) = [line.split(":") for line in f if line.startswith("ersid:")]
        self.assertEqual(user[3], group[2])
