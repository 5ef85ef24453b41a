"""
Ersid's version, said by the commands an operator runs, from its one
source, C{ersid.__version__}, which setup.py reads from ersid/__init__.py.
"""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.trial.unittest import TestCase

import ersid

from ._helpers import CHECKOUT

_BIN = os.path.dirname(sys.executable)


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        args,
        capture_output=True,
        text=True,
        cwd=CHECKOUT,
        env={**os.environ, "PYTHONPATH": CHECKOUT},
    )


class VersionTests(TestCase):
    def test_client_command(self):
        done = _run(os.path.join(_BIN, "ersid"), "--version")
        self.assertEqual(
            (done.returncode, done.stdout), (0, f"ersid {ersid.__version__}\n")
        )

    def test_daemon(self):
        """twistd's own --version says Twisted's; twistd ersid's, Ersid's."""
        done = _run(os.path.join(_BIN, "twistd"), "ersid", "--version")
        self.assertEqual(
            (done.returncode, done.stdout), (0, f"ersid {ersid.__version__}\n")
        )

    def test_setup_reads_the_package_version(self):
        done = _run(sys.executable, "setup.py", "--version")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(done.stdout.splitlines()[-1], ersid.__version__)
