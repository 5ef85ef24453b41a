"""
L{MySQLStorage} against a real MariaDB server that the tests start: the
storage contract, schema checks, a server restart under load, and two Ersid
nodes on one database.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import attrs
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock, deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from ersid.mysql.changes import ChangeFeed
from ersid.mysql.schema import SCHEMA_FILE, SchemaError, check_schema
from ersid.mysql.settings import MySQLSettings
from ersid.mysql.storage import MySQLStorage
from ersid.storage import Precondition, PreconditionFailed, StorageUnavailable
from ersid.testing import free_port
from ersid.testing.mariadb import PASSWORD
from ersid.watch import History, Hub, IWatcher
from ersid.web.app import Service

from .._helpers import Daemon, http, serve
from .._mariadb import private_server, shared_server, storage_for
from ..storage_contract import ExpiryContractMixin, StorageContractMixin


class MySQLStorageContractTests(ExpiryContractMixin, StorageContractMixin, TestCase):
    def make_storage(self):
        return storage_for(self, shared_server().fresh_database(), clock=self.clock)


class MySQLSettingsTests(TestCase):
    def test_url(self):
        settings = MySQLSettings.from_url("mysql://app@db.example:3307/kv", "pw")
        self.assertEqual(
            (settings.user, settings.host, settings.port, settings.database),
            ("app", "db.example", 3307, "kv"),
        )
        self.assertNotIn("pw", repr(settings))

    def test_several_servers_tried_in_order(self):
        settings = MySQLSettings.from_url(
            "mysql://app@db1:3307,db2,[::1]:3308,127.0.0.1/kv", "pw"
        )
        self.assertEqual(
            settings.hosts,
            (("db1", 3307), ("db2", 3306), ("::1", 3308), ("127.0.0.1", 3306)),
        )
        self.assertEqual(
            settings.describe(), "app@db1:3307,db2:3306,[::1]:3308,127.0.0.1:3306/kv"
        )
        for url in [
            "mysql://app@db1,,db2/kv",
            "mysql://app@db1:x/kv",
            "mysql://app@db1,/kv",
            "mysql://app@db1:0/kv",
            "mysql://app@db1 ,db2/kv",
        ]:
            with self.assertRaises(ValueError) as raised:
                MySQLSettings.from_url(url)
            self.assertIn("bad server", str(raised.exception))

    def test_the_error_to_fix_is_reported_not_the_last_servers(self):
        """A refused password on the one server that answers is what to fix."""
        server = shared_server()
        server.fresh_database()
        closed = free_port()
        storage = storage_for(
            self,
            MySQLSettings.from_url(
                f"mysql://ersid@127.0.0.1:{server.port},127.0.0.1:{closed}/ersid",
                "wrong",
            ),
        )

        async def check():
            with self.assertRaises(StorageUnavailable) as raised:
                await storage.get("k")
            self.assertIn("Access denied", str(raised.exception))

        return Deferred.fromCoroutine(check())

    def test_a_server_that_refuses_is_passed_over(self):
        server = shared_server()
        settings = server.fresh_database()
        closed = free_port()
        storage = storage_for(
            self,
            MySQLSettings.from_url(
                f"mysql://ersid@127.0.0.1:{closed},127.0.0.1:{server.port}/ersid",
                PASSWORD,
            ),
        )
        reader = storage_for(self, settings)

        async def check():
            await storage.set("k", b"v")
            self.assertEqual((await reader.get("k")).value, b"v")

        return Deferred.fromCoroutine(check())

    def test_unix_socket(self):
        for host in ["localhost", ""]:
            settings = MySQLSettings.from_url(
                f"mysql://app@{host}/kv?unix_socket=/run/m.sock"
            )
            self.assertEqual(settings.unix_socket, "/run/m.sock")
            self.assertEqual(settings.host, "localhost")

    def test_password_in_url_refused(self):
        with self.assertRaises(ValueError) as raised:
            MySQLSettings.from_url("mysql://app:secret@localhost/kv")
        self.assertIn("--mysql-password-file", str(raised.exception))

    def test_bad_urls(self):
        for url in [
            "postgres://a@b/c",
            "mysql://localhost/kv",
            "mysql://a@b/",
            "mysql://a@b/kv/more",
            "mysql://a@b/kv#x",
        ]:
            self.assertRaises(ValueError, MySQLSettings.from_url, url)

    def test_options_other_than_one_socket_refused(self):
        """
        A mistyped option would otherwise be ignored, and the daemon would
        quietly connect somewhere else.
        """
        for query, complaint in [
            ("socket=/run/m.sock", "unknown option 'socket'"),
            ("unix_socket=/a&ssl=1", "unknown option 'ssl'"),
            ("unix_socket=", "give unix_socket once"),
            ("unix_socket=/a&unix_socket=/b", "give unix_socket once"),
        ]:
            with self.assertRaises(ValueError) as raised:
                MySQLSettings.from_url(f"mysql://app@localhost/kv?{query}")
            self.assertIn(complaint, str(raised.exception))

    def test_socket_with_another_host_refused(self):
        """The client would connect over TCP to that host, not to the socket."""
        for host in ["127.0.0.1", "db.example:3307"]:
            with self.assertRaises(ValueError) as raised:
                MySQLSettings.from_url(f"mysql://app@{host}/kv?unix_socket=/run/m.sock")
            self.assertIn(
                "with unix_socket the host is localhost", str(raised.exception)
            )


class SchemaTests(TestCase):
    def test_fresh_schema_passes(self):
        check_schema(shared_server().fresh_database())

    def test_missing_table_named_with_command(self):
        server = shared_server()
        settings = server.fresh_database()
        server.as_root("DROP TABLE ersid.ersid_revision")
        with self.assertRaises(SchemaError) as raised:
            check_schema(settings)
        message = str(raised.exception)
        self.assertIn("lacks table ersid_revision", message)
        self.assertIn(
            f"mysql --socket={server.socket} -u ersid -p < {SCHEMA_FILE}", message
        )

    def test_schema_is_byte_exact(self):
        """Keys do not fold case or trailing spaces; values keep every byte."""
        storage = storage_for(self, shared_server().fresh_database())

        async def check():
            await storage.set("a", b"\x00" * 3 + bytes(range(256)))
            await storage.set("A", b"upper")
            await storage.set("a ", b"space")
            self.assertEqual(
                (await storage.get("a")).value, b"\x00" * 3 + bytes(range(256))
            )
            self.assertEqual((await storage.keys()).items, ["A", "a", "a "])

        return Deferred.fromCoroutine(check())

    def test_wrong_password_is_unavailable(self):
        settings = shared_server().fresh_database()
        storage = storage_for(self, attrs.evolve(settings, password="wrong"))

        async def check():
            with self.assertRaises(StorageUnavailable) as raised:
                await storage.get("k")
            self.assertIn("Access denied", str(raised.exception))

        return Deferred.fromCoroutine(check())


class RestartTests(TestCase):
    """
    The database killed and restarted under a stream of writes: requests
    fail fast with 503 meanwhile, Ersid recovers by itself, and every write
    it acknowledged is there afterwards.
    """

    def test_kill_and_restart_under_load(self):
        server = private_server(self)
        storage = storage_for(self, server.fresh_database(), max_connections=4)
        client = http()
        acknowledged: dict[str, bytes] = {}
        statuses: list[int] = []
        errors: set[str] = set()

        async def write(i: int) -> int:
            key, value = f"k{i}", b"value %d" % i
            response = await client.put(f"{base}/{key}", data=value)
            body = await response.content()
            statuses.append(response.code)
            if response.code in (201, 204):
                acknowledged[key] = value
            else:
                errors.add(json.loads(body)["error"])
            return response.code

        async def writes_until(done: Deferred, then_successes: int, start: int) -> int:
            i, successes = start, 0
            while not done.called or successes < then_successes:
                if await write(i) in (201, 204) and done.called:
                    successes += 1
                i += 1
            return i

        base = ""

        async def check():
            nonlocal base
            base = await serve(self, Service(storage))
            for i in range(20):
                self.assertEqual(await write(i), 201)
            outage = deferToThread(server.kill)
            next_key = await writes_until(outage, 0, 20)
            for i in range(next_key, next_key + 5):
                self.assertEqual(await write(i), 503)
            restart = deferToThread(server.start)
            await writes_until(restart, 20, next_key + 5)
            self.assertEqual(errors, {"unavailable"})
            self.assertTrue(set(statuses) <= {201, 503}, set(statuses))
            reader = storage_for(self, server.settings())
            for key, value in acknowledged.items():
                self.assertEqual((await reader.get(key)).value, value, key)
            health = await (await client.get(f"{base}/_health")).json()
            self.assertEqual(health["status"], "ok")

        return Deferred.fromCoroutine(check())

    def test_health_reports_database_down(self):
        server = private_server(self)
        storage = storage_for(self, server.fresh_database())

        async def check():
            base = await serve(self, Service(storage))
            server.kill()
            response = await http().get(f"{base}/_health")
            health = json.loads(await response.content())
            self.assertEqual(response.code, 503)
            self.assertEqual(health["status"], "unavailable")
            self.assertIn("database ersid@", health["error"])

        return Deferred.fromCoroutine(check())


class TwoNodesTests(TestCase):
    """Two Ersid services on one database are stateless peers."""

    def setUp(self):
        settings = shared_server().fresh_database()
        self.client = http()

        async def start_nodes():
            self.nodes = [
                await serve(self, Service(storage_for(self, settings)))
                for _ in range(2)
            ]

        return Deferred.fromCoroutine(start_nodes())

    def test_write_through_one_read_through_other(self):
        first, second = self.nodes
        client = self.client

        async def check():
            await client.put(f"{first}/shared", data=b"from first")
            response = await client.get(f"{second}/shared")
            self.assertEqual(await response.content(), b"from first")
            await client.delete(f"{second}/shared")
            response = await client.get(f"{first}/shared")
            self.assertEqual(response.code, 404)
            await response.content()

        return Deferred.fromCoroutine(check())

    def test_concurrent_compare_and_set_has_one_winner(self):
        async def check():
            created = await self.client.put(f"{self.nodes[0]}/counter", data=b"0")
            etag = created.headers.getRawHeaders("etag")[0]
            attempts = [
                self.client.put(
                    f"{self.nodes[i % 2]}/counter",
                    data=b"%d" % i,
                    headers={"If-Match": etag},
                )
                for i in range(10)
            ]
            codes = sorted(response.code for response in await gatherResults(attempts))
            self.assertEqual(codes, [204] + [412] * 9)

        return Deferred.fromCoroutine(check())

    def test_versions_ordered_across_nodes(self):
        async def check():
            etags = []
            for i in range(6):
                response = await self.client.put(
                    f"{self.nodes[i % 2]}/k{i % 3}", data=b"x"
                )
                etags.append(int(response.headers.getRawHeaders("etag")[0].strip('"')))
            self.assertEqual(etags, sorted(set(etags)))

        return Deferred.fromCoroutine(check())


class DirectStorageTests(TestCase):
    def test_conditional_write_checked_in_database(self):
        """A compare-and-set with a stale version changes nothing."""
        settings = shared_server().fresh_database()
        first, second = storage_for(self, settings), storage_for(self, settings)

        async def check():
            written = await first.set("k", b"1")
            await second.set("k", b"2")
            with self.assertRaises(PreconditionFailed):
                await first.set(
                    "k", b"3", precondition=Precondition.if_version([written.version])
                )
            self.assertEqual((await first.get("k")).value, b"2")

        return Deferred.fromCoroutine(check())

    def test_scan_pages_by_primary_key(self):
        settings = shared_server().fresh_database()
        storage = storage_for(self, settings)

        async def check():
            for i in range(7):
                await storage.set(f"s{i}", b"v")
            page = await storage.scan(None, 3)
            self.assertEqual([key for key, _ in page.items], ["s0", "s1", "s2"])
            self.assertEqual(page.cursor, b"s2")

        return Deferred.fromCoroutine(check())

    def test_closed_storage_refuses_writes(self):
        storage = storage_for(self, shared_server().fresh_database())

        async def check():
            await storage.set("k", b"v")
            await storage.close()
            with self.assertRaises(StorageUnavailable):
                await storage.set("k", b"new")
            self.assertEqual((await storage.get("k")).value, b"v")

        return Deferred.fromCoroutine(check())


class MySQLDaemonTests(TestCase):
    """twistd ersid --storage mysql, as an operator runs it."""

    def run_daemon(self, server, *args: str) -> Daemon:
        return Daemon.ersid(
            self,
            os.path.abspath(self.mktemp()),
            *("--storage", "mysql", "--mysql-url"),
            f"mysql://ersid@localhost/ersid?unix_socket={server.socket}",
            *args,
            env={"ERSID_MYSQL_PASSWORD": PASSWORD},
        )

    def ersid_lock(self, url: str, *args: str) -> Daemon:
        command = Daemon(
            [
                sys.executable,
                "-c",
                "from ersid.client.cli import main; main()",
                "lock",
                *args,
            ],
            env={"ERSID_URL": url},
        )
        self.addCleanup(command.stop, "KILL")
        return command

    def test_ersid_lock_excludes_across_nodes_and_survives_its_holders_death(self):
        """
        ersid lock on two nodes of one database: the commands it runs are
        never inside at once; a holder killed with SIGKILL leaves a lock
        that the other node's ersid lock takes within its time to live.
        """
        server = shared_server()
        server.fresh_database()
        log = os.path.abspath(self.mktemp())
        critical = (
            "import os, sys, time\n"
            "with open(sys.argv[1], 'a') as log: log.write(f'in {sys.argv[2]}\\n')\n"
            "time.sleep(0.1)\n"
            "with open(sys.argv[1], 'a') as log: log.write(f'out {sys.argv[2]}\\n')\n"
        )

        async def check():
            nodes = [self.run_daemon(server), self.run_daemon(server)]
            urls = [await node.rest_url() for node in nodes]
            competitors = [
                self.ersid_lock(
                    urls[i % 2],
                    "--ttl",
                    "2",
                    "deploy",
                    "--",
                    sys.executable,
                    "-c",
                    critical,
                    log,
                    str(i),
                )
                for i in range(6)
            ]
            for competitor in competitors:
                self.assertEqual(await competitor.ended, 0, competitor.output)
            with open(log) as f:
                lines = f.read().split()
            entries = list(zip(lines[0::2], lines[1::2], strict=True))
            self.assertEqual(len(entries), 12)
            for enter, leave in zip(entries[0::2], entries[1::2], strict=True):
                self.assertEqual(
                    (enter[0], leave[0], enter[1]), ("in", "out", leave[1])
                )
            # The holder dies; its lock is free within its time to live.
            marker = os.path.abspath(self.mktemp())
            holder = self.ersid_lock(
                urls[0],
                "--ttl",
                "1",
                "deploy",
                "--",
                sys.executable,
                "-c",
                # Its output closed, so that the killed holder's pipes close.
                "import os, sys, time\n"
                "os.close(0), os.close(1), os.close(2)\n"
                "open(sys.argv[1], 'w').write(str(os.getpid()))\n"
                "time.sleep(60)\n",
                marker,
            )
            while not os.path.exists(marker) or not open(marker).read():
                await deferLater(reactor, 0.02)
            self.addCleanup(os.kill, int(open(marker).read()), signal.SIGKILL)
            await holder.stop("KILL")
            started = time.monotonic()
            waiter = self.ersid_lock(urls[1], "--timeout", "10", "deploy", "--", "true")
            self.assertEqual(await waiter.ended, 0, waiter.output)
            self.assertLess(time.monotonic() - started, 1 + 1.5)

        return Deferred.fromCoroutine(check())

    def test_two_daemons_share_one_database(self):
        server = shared_server()
        server.fresh_database()
        client = http()

        async def check():
            first, second = self.run_daemon(server), self.run_daemon(server)
            first_url, second_url = await first.rest_url(), await second.rest_url()
            response = await client.post(f"{first_url}/mykey", data=b"myvalue")
            self.assertEqual(response.code, 201)
            response = await client.get(f"{second_url}/mykey")
            self.assertEqual(await response.content(), b"myvalue")
            health = await (await client.get(f"{second_url}/_health")).json()
            self.assertEqual((health["storage"], health["keys"]), ("mysql", 1))
            self.assertEqual(await first.stop(), -signal.SIGTERM)
            self.assertEqual(await second.stop(), -signal.SIGTERM)

        return Deferred.fromCoroutine(check())

    def test_missing_schema_stops_startup(self):
        server = shared_server()
        server.fresh_database()
        server.as_root("DROP TABLE ersid.ersid_data")

        async def check():
            daemon = self.run_daemon(server)
            self.assertEqual(await daemon.ended, 1)
            self.assertIn(
                "lacks table ersid_data; create them with: mysql", daemon.output
            )
            self.assertNotIn("Traceback", daemon.output)

        return Deferred.fromCoroutine(check())

    def test_wrong_password_stops_startup(self):
        server = shared_server()
        server.fresh_database()

        async def check():
            password_file = os.path.abspath(self.mktemp())
            with open(
                os.open(password_file, os.O_WRONLY | os.O_CREAT, 0o600), "w"
            ) as f:
                f.write("wrong\n")
            daemon = self.run_daemon(server, "--mysql-password-file", password_file)
            self.assertEqual(await daemon.ended, 1)
            self.assertIn("Access denied for user 'ersid'", daemon.output)

        return Deferred.fromCoroutine(check())


class ChangeLogTests(TestCase):
    """The change log: what a node's watchers learn of every node's writes."""

    def setUp(self):
        self.settings = shared_server().fresh_database()
        self.clock = Clock()

    def node(self, history: int = 1000) -> tuple[MySQLStorage, Hub, ChangeFeed]:
        storage = storage_for(self, self.settings)
        hub = Hub(History(0, history), self.clock)
        return storage, hub, ChangeFeed(storage, hub, 3600, self.clock)

    def test_older_database_told_what_to_run(self):
        server = shared_server()
        server.as_root("DROP TABLE ersid.ersid_changes")
        with self.assertRaises(SchemaError) as raised:
            check_schema(self.settings)
        message = str(raised.exception)
        self.assertIn("lacks table ersid_changes", message)
        self.assertIn(f"< {SCHEMA_FILE}", message)
        # Running the schema again, as the message says, adds what is missing.
        server.run_schema()
        check_schema(self.settings)

    def test_database_from_before_expiry_is_upgraded_by_the_schema(self):
        """
        A database made before keys could expire lacks the expiry columns;
        running the schema file again adds them and keeps the data.
        """

        async def check():
            storage, _, _ = self.node()
            await storage.set("kept", b"v")
            server = shared_server()
            server.as_root(
                "ALTER TABLE ersid.ersid_data "
                "DROP INDEX ersid_expiry, DROP COLUMN expires_at"
            )
            server.as_root(
                "ALTER TABLE ersid.ersid_changes "
                "DROP COLUMN expires_at, DROP COLUMN expired"
            )
            with self.assertRaises(SchemaError) as raised:
                check_schema(self.settings)
            message = str(raised.exception)
            self.assertIn("columns expires_at of ersid_data", message)
            self.assertIn("columns expired, expires_at of ersid_changes", message)
            server.run_schema()
            check_schema(self.settings)
            self.assertEqual((await storage.get("kept")).value, b"v")

        return Deferred.fromCoroutine(check())

    def test_expiries_reach_the_watchers_of_every_node(self):
        """
        A key expires by the database's clock, whichever node reaps it: the
        other node's watchers see the put with its expiry, then an expire.
        """

        async def check():
            clock = Clock()
            clock.advance(1_800_000_000)
            first = storage_for(self, self.settings, clock=clock)
            _, second_hub, second_feed = self.node()
            await second_feed.poll()
            await first.set("lock", b"me", ttl=5)
            clock.advance(5)
            self.assertFalse(await first.reap())
            await second_feed.poll()
            changes = list(second_hub.history.after(0))
            self.assertEqual(
                [(c.revision, c.kind, c.key, c.expires) for c in changes],
                [(1, "put", "lock", 1_800_000_005.0), (2, "expire", "lock", None)],
            )
            self.assertEqual(
                changes[-1].document(True),
                {"type": "expire", "key": "lock", "revision": 2},
            )

        return Deferred.fromCoroutine(check())

    def test_nodes_reaping_at_once_expire_each_row_once(self):
        """
        Two nodes reap the same due rows at the same time: with SKIP LOCKED
        each takes rows the other has not, and every row expires once.
        """

        async def check():
            clock = Clock()
            clock.advance(1_800_000_000)
            first = storage_for(self, self.settings, clock=clock, max_connections=4)
            second = storage_for(self, self.settings, clock=clock, max_connections=4)
            count = 1_500  # three batches of 500
            for i in range(count):
                await first.set(f"k{i:04d}", b"v", ttl=1)
            clock.advance(2)

            async def reap_all(storage: MySQLStorage) -> None:
                while await storage.reap():
                    pass

            await gatherResults(
                [Deferred.fromCoroutine(reap_all(node)) for node in (first, second)]
            )
            log = await first.change_log(count, 10 * count)
            expired = [change.key for change in log.changes]
            self.assertEqual({change.kind for change in log.changes}, {"expire"})
            self.assertEqual(sorted(expired), [f"k{i:04d}" for i in range(count)])
            self.assertEqual(await first.stats(), (0, 2 * count))

        return Deferred.fromCoroutine(check())

    def test_every_node_sees_every_write_once_in_order(self):
        async def check():
            first, first_hub, first_feed = self.node()
            second, _, _ = self.node()
            self.assertFalse(first_hub.ready)
            await first_feed.poll()
            self.assertTrue(first_hub.ready)
            await first.set("a", b"1", "text/plain")
            await second.set("b", b"\xff")
            await second.delete("a")
            self.assertFalse(await second.delete("a"))  # no change, no revision
            await first.set("c", b"3")
            await first_feed.poll()
            self.assertEqual(
                [
                    (c.revision, c.kind, c.key, c.value, c.content_type)
                    for c in first_hub.history.after(0)
                ],
                [
                    (1, "put", "a", b"1", "text/plain"),
                    (2, "put", "b", b"\xff", "application/octet-stream"),
                    (3, "delete", "a", None, "application/octet-stream"),
                    (4, "put", "c", b"3", "application/octet-stream"),
                ],
            )
            # A node started later reads the log's newest changes, to resume from.
            _, late_hub, late_feed = self.node(history=2)
            await late_feed.poll()
            self.assertEqual([c.revision for c in late_hub.history.after(2)], [3, 4])
            self.assertEqual(late_hub.history.floor, 2)

        return Deferred.fromCoroutine(check())

    def test_one_query_a_poll_whatever_the_watchers(self):
        async def check():
            storage, hub, feed = self.node()
            await feed.poll()
            queries = []
            read = storage.change_log

            def counted(*args):
                queries.append(args)
                return read(*args)

            storage.change_log = counted
            for n in range(50):
                hub.add(_Silent(f"p{n}/"))
            await storage.set("p7/x", b"v")  # and its poll, the node having watchers
            await feed.poll()
            self.assertLessEqual(len(queries), 2)
            self.assertEqual(hub.revision, 1)

        return Deferred.fromCoroutine(check())

    def test_log_trimmed_to_the_history_size(self):
        async def check():
            storage = storage_for(self, self.settings)  # no feed, which would trim too
            for n in range(10):
                await storage.set(f"k{n}", b"v")
            self.assertEqual(await storage.trim_change_log(3), 7)
            log = await storage.change_log(0, 100)
            self.assertEqual([c.revision for c in log.changes], [8, 9, 10])
            self.assertEqual((log.floor, log.revision), (7, 10))

        return Deferred.fromCoroutine(check())

    def test_log_trimmed_by_age_by_the_database_clock(self):
        async def check():
            storage = storage_for(self, self.settings)
            for n in range(5):
                await storage.set(f"k{n}", b"v")
            subprocess.run(
                ["mariadb", f"--socket={shared_server().socket}", "-u", "root"],
                input=b"UPDATE ersid.ersid_changes SET changed_at = "
                b"NOW(6) - INTERVAL 1 HOUR WHERE revision <= 3",
                check=True,
            )
            self.assertEqual(await storage.trim_change_log(1000, age=60), 3)
            log = await storage.change_log(0, 100)
            self.assertEqual([c.revision for c in log.changes], [4, 5])
            self.assertEqual(await storage.trim_change_log(1000, age=60), 0)

        return Deferred.fromCoroutine(check())

    def test_changes_trimmed_before_being_read_end_every_watcher(self):
        async def check():
            _, hub, feed = self.node()
            await feed.poll()
            watcher = _Silent("")
            hub.add(watcher)
            writer = storage_for(self, self.settings)  # no feed: this node is not told
            for n in range(5):
                await writer.set(f"k{n}", b"v")
            await writer.trim_change_log(2)
            await feed.poll()
            self.assertEqual(len(watcher.ended), 1)
            self.assertIn("lost", watcher.ended[0])
            self.assertEqual(hub.history.floor, 3)
            self.assertEqual([c.revision for c in hub.history.after(3)], [4, 5])

        return Deferred.fromCoroutine(check())


@implementer(IWatcher)
class _Silent:
    """A watcher that takes what it is told, and notes only its end."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.ended: list[str | None] = []

    def deliver(self, batch: Any) -> None:
        pass

    def tick(self, revision: int, progress: bytes) -> None:
        pass

    def end(self, reason: str | None) -> None:
        self.ended.append(reason)
