"""
What the layout promises: the client stands apart from the server, the
benchmarks from the tests, and the schema users run is the one shipped.
"""

from __future__ import annotations

import ast
import glob
import json
import os
import subprocess
import sys

from twisted.trial.unittest import TestCase

from ersid.mysql.schema import SCHEMA_FILE

from ._helpers import CHECKOUT


def _loaded_by(statement: str) -> dict[str, list[str]]:
    """The Ersid modules, and some server libraries, a fresh Python loads."""
    script = (
        f"import sys, json; {statement}; "
        "print(json.dumps(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('ersid', 'klein', 'MySQLdb', 'twisted'))))"
    )
    output = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        check=True,
        cwd=CHECKOUT,
        env={**os.environ, "PYTHONPATH": CHECKOUT},
    ).stdout
    return json.loads(output)


class LayoutTests(TestCase):
    def test_client_loads_no_server_code(self):
        """The client, the ersid command and ersid-bench load only themselves."""
        loaded = _loaded_by("import ersid.client, ersid.client.cli, ersid.client.bench")
        ersid = [m for m in loaded if m.split(".")[0] == "ersid"]
        self.assertEqual(
            [m for m in ersid if m != "ersid" and not m.startswith("ersid.client")],
            [],
        )
        self.assertIn("ersid.client.bench", ersid)
        servers = ("klein", "MySQLdb", "twisted.web.server", "twisted.conch")
        self.assertEqual([m for m in loaded if m.startswith(servers)], [])

    def test_the_package_loads_nothing(self):
        self.assertEqual(_loaded_by("import ersid"), ["ersid"])

    def test_benchmarks_import_nothing_from_the_tests(self):
        for path in glob.glob(os.path.join(CHECKOUT, "benchmarks", "*.py")):
            with open(path) as f:
                tree = ast.parse(f.read())
            imported = [
                alias.name
                for node in ast.walk(tree)
                if isinstance(node, ast.Import)
                for alias in node.names
            ] + [
                node.module or ""
                for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom)
            ]
            self.assertEqual([m for m in imported if m.split(".")[0] == "tests"], [])

    def test_top_level_schema_is_the_shipped_one(self):
        """mysql_schema.sql in the checkout is the package's, byte for byte."""
        with open(os.path.join(CHECKOUT, "mysql_schema.sql"), "rb") as top:
            with open(SCHEMA_FILE, "rb") as shipped:
                self.assertEqual(top.read(), shipped.read())
