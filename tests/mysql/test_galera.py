"""
Ersid on a real three-node MariaDB Galera cluster that the tests start: the
storage contract, writes through any node read through every other at
once, conflicts between nodes, the change log, and a node killed or cut
off under a write load through three Ersid daemons.
"""

from __future__ import annotations

import json
import os
import time

import MySQLdb
from twisted.internet import reactor
from twisted.internet.defer import Deferred, TimeoutError, gatherResults
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from ersid.mysql.changes import ChangeFeed
from ersid.mysql.errors import UNREACHABLE, error_code
from ersid.mysql.schema import check_schema
from ersid.mysql.storage import MySQLStorage
from ersid.storage import Precondition, PreconditionFailed
from ersid.testing.galera import GaleraCluster
from ersid.testing.mariadb import PASSWORD
from ersid.watch import History, Hub

from .._helpers import Daemon, http
from .._mariadb import private_cluster, shared_cluster, storage_for
from ..storage_contract import ExpiryContractMixin, StorageContractMixin


class GaleraContractTests(ExpiryContractMixin, StorageContractMixin, TestCase):
    """The storage contract, through the second node of the cluster."""

    def make_storage(self):
        cluster = shared_cluster()
        cluster.fresh_database()
        return storage_for(self, cluster.settings(1, 0, 2), clock=self.clock)


class GaleraNodesTests(TestCase):
    """One storage on each node of the cluster: stateless peers."""

    def setUp(self):
        cluster = shared_cluster()
        cluster.fresh_database()
        self.nodes = [storage_for(self, cluster.settings(i)) for i in range(3)]

    def test_a_write_through_any_node_is_read_through_every_other_at_once(self):
        async def check():
            for i in range(90):
                writer = self.nodes[i % 3]
                if i % 5 == 4:
                    self.assertTrue(await writer.delete("k"))
                    expected = None
                else:
                    written = await writer.set("k", b"%d" % i)
                    expected = (b"%d" % i, written.version)
                for reader in self.nodes:
                    record = await reader.get("k")
                    seen = None if record is None else (record.value, record.version)
                    self.assertEqual(seen, expected, (i, self.nodes.index(reader)))

        return Deferred.fromCoroutine(check())

    def test_a_read_waits_for_the_writes_its_node_has_yet_to_apply(self):
        """
        A node whose applier lags (paused here by a global read lock) holds
        a read back until it has applied what the cluster committed before,
        rather than answering with the old value.
        """
        cluster = shared_cluster()
        # One connection, made before the lock: a node that is not synced
        # (the lock desyncs it) is not connected to.
        reader = storage_for(self, cluster.settings(1), max_connections=1)

        async def check():
            await self.nodes[0].set("k", b"old")
            self.assertEqual((await reader.get("k")).value, b"old")
            lock = _root(cluster, 1, synced=False)
            cursor = lock.__enter__()
            self.addCleanup(lock.__exit__)
            await deferToThread(cursor.execute, "FLUSH TABLES WITH READ LOCK")
            await self.nodes[0].set("k", b"new")
            # New connections pass over the desynced node.
            passing = storage_for(self, cluster.settings(1, 0))
            self.assertEqual((await passing.get("k")).value, b"new")
            read = reader.get("k")
            await deferToThread(_wait_for_query, cluster, 1, "ersid_data")
            self.assertFalse(read.called)
            await deferToThread(cursor.execute, "UNLOCK TABLES")
            self.assertEqual((await read).value, b"new")

        return Deferred.fromCoroutine(check())

    def test_a_node_cut_off_from_the_cluster_is_passed_over(self):
        """
        A node isolated from the others (as by a partition) still accepts
        connections but is no longer ready: a storage that used it moves to
        the next server of its list, and new connections skip it.
        """
        cluster = shared_cluster()
        storage = storage_for(self, cluster.settings(2, 0, 1))

        def isolate(on: bool) -> None:
            cluster.nodes[2].as_root(
                "SET GLOBAL wsrep_provider_options = %s", f"gmcast.isolate={int(on)}"
            )

        async def check():
            await storage.set("k", b"before")
            self.addCleanup(deferToThread, cluster.wait_synced)
            self.addCleanup(isolate, False)
            await deferToThread(isolate, True)
            await deferToThread(cluster.wait_for, 2, "wsrep_ready", "OFF")
            # A daemon starting on it alone waits, serving 503, as for a
            # server it cannot reach, rather than refusing to start.
            with self.assertRaises(MySQLdb.OperationalError) as raised:
                await deferToThread(check_schema, cluster.settings(2))
            self.assertIn(error_code(raised.exception), UNREACHABLE)
            written = await storage.set("k", b"after")
            self.assertEqual((await storage.get("k")).version, written.version)
            self.assertEqual((await self.nodes[0].get("k")).value, b"after")

        return Deferred.fromCoroutine(check())

    def test_concurrent_writes_through_every_node_take_every_revision_once(self):
        """
        Writes through three nodes at once conflict on the revision row; every
        one of them succeeds in the end (they are retried), each with its own
        revision, none lost, and the change log has them all in order.
        """

        async def check():
            per_node = 60
            writes = [
                self.nodes[n].set(f"n{n}/{i}" if i % 3 else "hot", b"%d.%d" % (n, i))
                for i in range(per_node)
                for n in range(3)
            ]
            results = await gatherResults(writes)
            versions = sorted(result.version for result in results)
            self.assertEqual(versions, list(range(1, 3 * per_node + 1)))
            for reader in self.nodes:
                log = await reader.change_log(0, 1000)
                self.assertEqual([change.revision for change in log.changes], versions)
                hot = await reader.get("hot")
                last_hot = [c for c in log.changes if c.key == "hot"][-1]
                self.assertEqual(hot.version, last_hot.revision)
                self.assertEqual(hot.value, last_hot.value)
                listing = await reader.keys(limit=1000)
                self.assertEqual(len(listing.items), 1 + 3 * (per_node - per_node // 3))

        return Deferred.fromCoroutine(check())

    def test_compare_and_set_across_nodes_loses_no_increment(self):
        async def increment(node: MySQLStorage, times: int) -> None:
            for _ in range(times):
                while True:
                    current = await node.get("counter")
                    try:
                        await node.set(
                            "counter",
                            b"%d" % (int(current.value) + 1),
                            precondition=_if_version(current.version),
                        )
                        break
                    except PreconditionFailed:
                        pass

        async def check():
            await self.nodes[0].set("counter", b"0")
            await gatherResults(
                [Deferred.fromCoroutine(increment(node, 15)) for node in self.nodes]
            )
            for node in self.nodes:
                self.assertEqual((await node.get("counter")).value, b"45")

        return Deferred.fromCoroutine(check())

    def test_every_node_feeds_its_watchers_every_write_once_in_order(self):
        async def check():
            clock = Clock()
            hubs = []
            for node in self.nodes:
                hub = Hub(History(0, 1000), clock)
                hubs.append((hub, ChangeFeed(node, hub, 3600, clock)))
            for _, feed in hubs:
                await feed.poll()
            results = await gatherResults(
                [self.nodes[i % 3].set(f"k{i % 7}", b"%d" % i) for i in range(60)]
            )
            written = sorted((r.version, f"k{i % 7}") for i, r in enumerate(results))
            for hub, feed in hubs:
                await feed.poll()
                self.assertEqual(
                    [(c.revision, c.key) for c in hub.history.after(0)], written
                )

        return Deferred.fromCoroutine(check())


def _if_version(version: int) -> Precondition:
    return Precondition.if_version([version])


class GaleraFaultTests(TestCase):
    """
    A cluster of its own under a write load through three Ersid daemons,
    each using its own Galera node first: one node killed, or stopped for
    longer than Galera waits before evicting it, then back.
    """

    timeout = 300

    def setUp(self):
        self.cluster = private_cluster(self)
        self.cluster.fresh_database()
        self.client = http()

    async def daemons(self) -> list[str]:
        urls = []
        for i in range(3):
            order = [i] + [j for j in range(3) if j != i]
            daemon = Daemon.ersid(
                self,
                os.path.abspath(self.mktemp()),
                *("--storage", "mysql", "--mysql-url", self.cluster.url(*order)),
                env={"ERSID_MYSQL_PASSWORD": PASSWORD},
            )
            urls.append(await daemon.rest_url())
        return urls

    def test_node_killed_under_load_loses_no_acknowledged_write(self):
        return Deferred.fromCoroutine(
            self.check_fault(self.cluster.kill, self.cluster.restart, node=0)
        )

    def test_node_cut_off_is_left_behind_and_rejoins(self):
        def cut_off(node: int) -> None:
            self.cluster.pause(node)
            # Until the others have evicted it.
            self.cluster.wait_for((node + 1) % 3, "wsrep_cluster_size", "2", timeout=60)

        return Deferred.fromCoroutine(
            self.check_fault(cut_off, self.cluster.resume, node=2)
        )

    async def check_fault(self, fail, heal, node: int) -> None:
        """
        Writers through every daemon; C{fail(node)}, then writes go on
        through every daemon, the one using that node included; C{heal(node)};
        every acknowledged write is then on every node and read through every
        daemon, and only 503s were refused.
        """
        urls = await self.daemons()
        load = _Load(self.client, urls)
        writers = [Deferred.fromCoroutine(load.write_until_stopped(u)) for u in urls]
        await load.acknowledged_through_each(20)
        await deferToThread(fail, node)
        await load.acknowledged_through_each(20)
        await deferToThread(heal, node)
        await deferToThread(self.cluster.wait_synced)
        await load.acknowledged_through_each(20)
        load.stopped = True
        await gatherResults(writers)
        self.assertTrue(set(load.statuses) <= {201, 503}, set(load.statuses))
        self.assertEqual(
            load.errors, set() if 503 not in load.statuses else {"unavailable"}
        )
        for url in urls:
            for key, value in load.acknowledged.items():
                response = await self.client.get(f"{url}/{key}")
                self.assertEqual(
                    (response.code, await response.content()), (200, value)
                )
        for i in range(3):
            rows = await deferToThread(_rows_on, self.cluster, i)
            self.assertLessEqual(load.acknowledged.items(), rows.items())
            revisions = await deferToThread(_revisions_on, self.cluster, i)
            self.assertEqual(revisions, list(range(1, len(revisions) + 1)))


# Seconds a daemon may go without acknowledging writes (the longest stall
# is a node cut off: Galera's suspect timeout, then the daemon's read and
# connect timeouts on the lost node).
_STALL = 60


class _Load:
    """Writes of new keys through daemons, noting which were acknowledged."""

    def __init__(self, client, urls: list[str]) -> None:
        self.client = client
        self.acknowledged: dict[str, bytes] = {}
        self.by_url = {url: 0 for url in urls}
        self.statuses: list[int] = []
        self.errors: set[str] = set()
        self.stopped = False
        self._next = 0
        self._waiting: list[tuple[dict[str, int], Deferred[None]]] = []

    async def write_until_stopped(self, url: str) -> None:
        while not self.stopped:
            self._next += 1
            key, value = f"k{self._next}", b"v%d" % self._next
            response = await self.client.put(f"{url}/{key}", data=value)
            body = await response.content()
            self.statuses.append(response.code)
            if response.code == 201:
                self.acknowledged[key] = value
                self.by_url[url] += 1
                self._wake()
            else:
                self.errors.add(json.loads(body)["error"])

    async def acknowledged_through_each(self, more: int) -> None:
        """Wait until every daemon has acknowledged C{more} more writes."""
        wanted = {url: count + more for url, count in self.by_url.items()}
        done: Deferred[None] = Deferred()
        self._waiting.append((wanted, done))
        done.addTimeout(_STALL, reactor)
        try:
            await done
        except TimeoutError:
            raise AssertionError(
                f"no {more} writes through each daemon in {_STALL} s: {self.by_url}"
            ) from None

    def _wake(self) -> None:
        for wanted, done in list(self._waiting):
            if all(self.by_url[url] >= count for url, count in wanted.items()):
                self._waiting.remove((wanted, done))
                done.callback(None)


def _rows_on(cluster: GaleraCluster, node: int) -> dict[str, bytes]:
    with _root(cluster, node) as cursor:
        cursor.execute("SELECT ersid_key, ersid_value FROM ersid.ersid_data")
        return {bytes(k).decode(): bytes(v) for k, v in cursor.fetchall()}


def _revisions_on(cluster: GaleraCluster, node: int) -> list[int]:
    with _root(cluster, node) as cursor:
        cursor.execute("SELECT revision FROM ersid.ersid_changes ORDER BY revision")
        return [int(row[0]) for row in cursor.fetchall()]


def _wait_for_query(cluster: GaleraCluster, node: int, text: str) -> None:
    """Block until a query mentioning C{text} runs on C{node}."""
    with _root(cluster, node, synced=False) as cursor:
        for _ in range(2000):
            cursor.execute(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST "
                "WHERE INFO LIKE %s AND ID != CONNECTION_ID()",
                (f"%{text}%",),
            )
            if cursor.fetchone()[0]:
                return
            time.sleep(0.005)
    raise AssertionError(f"no query of {text} ran on node {node}")


class _root:
    """
    A root session on a node; C{synced}: its reads wait for what the
    cluster committed, even if this node lags.
    """

    def __init__(self, cluster: GaleraCluster, node: int, synced: bool = True) -> None:
        self.connection = MySQLdb.connect(
            unix_socket=cluster.nodes[node].socket, user="root"
        )
        self.synced = synced

    def __enter__(self):
        cursor = self.connection.cursor()
        cursor.execute("SET SESSION wsrep_sync_wait = %s", (int(self.synced),))
        return cursor

    def __exit__(self, *exc):
        self.connection.close()
