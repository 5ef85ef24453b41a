"""
The Grafana dashboard in C{contrib/grafana/}, checked with a real
Prometheus: it scrapes two real daemons (the dict backend and MySQL), and
every query of every panel must be valid PromQL, name only metrics the
daemons expose, and find data. Each scrape also passes C{promtool check
metrics}, Prometheus's own lint of names and types.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from urllib.parse import quote

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from ersid.testing import port_for_a_server
from ersid.testing.mariadb import PASSWORD

from ._helpers import CHECKOUT, Daemon, http, require
from ._mariadb import shared_server

DASHBOARD = os.path.join(CHECKOUT, "contrib", "grafana", "ersid.json")
_NAME = re.compile(r"\b((?:ersid|process)_[a-z_]+)\b")


def queries(dashboard: dict) -> list[str]:
    """Every PromQL expression of the dashboard's panels."""
    return [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", ())
    ]


class DashboardTests(TestCase):
    def prometheus(self, *urls: str) -> str:
        """A Prometheus of the test's own scraping C{urls} every second."""
        require(
            bool(shutil.which("prometheus") and shutil.which("promtool")),
            "needs Prometheus: apt-get install prometheus (bin/dev test does this)",
        )
        root = tempfile.mkdtemp(prefix="ersid-prometheus-")
        self.addCleanup(shutil.rmtree, root, True)
        targets = [url.removeprefix("http://") for url in urls]
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {
                    "job_name": "ersid",
                    "metrics_path": "/_metrics",
                    "static_configs": [{"targets": targets}],
                }
            ],
        }
        path = os.path.join(root, "prometheus.yml")
        with open(path, "w") as f:
            json.dump(config, f)  # YAML reads JSON
        port = port_for_a_server()
        server = Daemon(
            [
                shutil.which("prometheus"),
                f"--config.file={path}",
                f"--storage.tsdb.path={root}/data",
                f"--web.listen-address=127.0.0.1:{port}",
            ]
        )
        self.addCleanup(server.stop, "KILL")
        return f"http://127.0.0.1:{port}"

    async def query(self, prometheus: str, expression: str) -> dict:
        response = await http().get(
            f"{prometheus}/api/v1/query?query={quote(expression)}"
        )
        answer = json.loads(await response.content())
        self.assertEqual(answer["status"], "success", (expression, answer))
        return answer["data"]

    async def until(self, prometheus: str, expression: str) -> None:
        """Wait for Prometheus to have scraped enough (it scrapes every second)."""
        for _ in range(300):
            try:
                if (await self.query(prometheus, expression))["result"]:
                    return
            except Exception:
                pass  # not listening yet
            await deferLater(reactor, 0.1, lambda: None)
        self.fail(f"Prometheus never had {expression}")

    def lint(self, scrape: bytes) -> None:
        checked = subprocess.run(
            ["promtool", "check", "metrics"], input=scrape, capture_output=True
        )
        self.assertEqual(checked.returncode, 0, checked.stdout + checked.stderr)
        self.assertEqual(checked.stdout + checked.stderr, b"")

    def test_every_panel_queries_metrics_that_exist_and_finds_data(self):
        async def check():
            with open(DASHBOARD) as f:
                dashboard = json.load(f)
            server = shared_server()
            server.fresh_database()
            dict_daemon = Daemon.ersid(self, os.path.abspath(self.mktemp()))
            mysql_daemon = Daemon.ersid(
                self,
                os.path.abspath(self.mktemp()),
                *("--storage", "mysql", "--mysql-url"),
                f"mysql://ersid@localhost/ersid?unix_socket={server.socket}",
                env={"ERSID_MYSQL_PASSWORD": PASSWORD},
            )
            urls = [await dict_daemon.rest_url(), await mysql_daemon.rest_url()]
            client = http()
            for url in urls:
                for n in range(3):
                    response = await client.put(f"{url}/k{n}", data=b"v")
                    await response.content()
                response = await client.get(f"{url}/k0")
                await response.content()
                response = await client.get(f"{url}/_metrics")
                self.lint(await response.content())
            prometheus = self.prometheus(*urls)
            # Two targets up, each scraped three times: enough for rate().
            await self.until(
                prometheus, "count(count_over_time(ersid_store_keys[1m]) >= 3) == 2"
            )
            response = await client.get(f"{prometheus}/api/v1/label/__name__/values")
            exposed = set(json.loads(await response.content())["data"])
            expressions = queries(dashboard)
            self.assertGreater(len(expressions), 20)
            template = dashboard["templating"]["list"][0]["definition"]
            for expression in [*expressions, template]:
                for name in _NAME.findall(expression):
                    self.assertIn(name, exposed, expression)
            for expression in expressions:
                expression = expression.replace("$instance", ".+")
                data = await self.query(prometheus, expression)
                self.assertTrue(data["result"], f"no data for {expression}")

        return Deferred.fromCoroutine(check())
