"""
C{/_metrics} as Prometheus reads it: what clients did to a real daemon,
counted; the bytes on the wire to the byte; each part's figures (journal,
snapshots, watchers, expiry, MySQL) after the events that move them; the
text parsed by C{prometheus_client}'s own parser, as a scraper would.
"""

from __future__ import annotations

import json
import os
import socket

from prometheus_client.parser import text_string_to_metric_families
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

from ersid.embedded import open_embedded
from ersid.embedded.memory import DictStorage
from ersid.listening import endpoint_description
from ersid.metrics import Metrics
from ersid.mysql.settings import MySQLSettings
from ersid.snapshots import Snapshotter
from ersid.storage import StorageUnavailable
from ersid.testing import free_port
from ersid.watch import History, Hub
from ersid.watch.history import Change
from ersid.web import Service, Traffic, makeSite

from ._helpers import Daemon, http, raw_exchange
from ._mariadb import shared_server, storage_for

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape, by name and labels, as Prometheus reads it."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name, tuple(sorted(labels.items()))]


async def scrape(metrics: Metrics) -> Samples:
    return parse((await metrics.render()).decode("utf-8"))


async def _serve(test, service: Service, traffic: Traffic) -> int:
    endpoint = serverFromString(reactor, endpoint_description("0"))
    port = await endpoint.listen(makeSite(service, traffic=traffic))
    test.addCleanup(port.stopListening)
    return port.getHost().port


async def _turns(condition, most: int = 1000) -> None:
    """Let the reactor turn until C{condition()} holds (a connection closing)."""
    for _ in range(most):
        if condition():
            return
        await deferLater(reactor, 0.001, lambda: None)
    raise AssertionError("the condition never held")


class TrafficTests(TestCase):
    """The connections' counts, over real loopback sockets."""

    def setUp(self):
        self.storage = DictStorage()
        self.traffic = Traffic()
        self.metrics = Metrics(self.storage, [self.traffic])
        self.service = Service(self.storage, metrics=self.metrics)

    def test_the_bytes_on_the_wire_and_the_answers_are_counted(self):
        async def check():
            port = await _serve(self, self.service, self.traffic)
            sent = (
                b"PUT /k HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
                b"GET /k HTTP/1.1\r\nHost: x\r\n\r\n"
                b"GET /missing HTTP/1.1\r\nHost: x\r\n\r\n"
                b"GET /_keys HTTP/1.1\r\nHost: x\r\n\r\n"
                # Refused (a method llhttp does not know), and the end.
                b"BREW /k HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            received = await raw_exchange(port, sent)
            await _turns(lambda: self.traffic.accepted == 1 and self.traffic.open == 0)
            samples = await scrape(self.metrics)
            self.assertEqual(
                value(samples, "ersid_http_received_bytes_total"), len(sent)
            )
            self.assertEqual(
                value(samples, "ersid_http_sent_bytes_total"), len(received)
            )
            requests = "ersid_http_requests_total"
            self.assertEqual(value(samples, requests, method="PUT", code="201"), 1)
            self.assertEqual(value(samples, requests, method="GET", code="200"), 2)
            self.assertEqual(value(samples, requests, method="GET", code="404"), 1)
            # A method a client made up is no label of its own.
            self.assertEqual(value(samples, requests, method="other", code="405"), 1)
            counted = sum(v for (n, _), v in samples.items() if n == requests)
            self.assertEqual(counted, 5)
            durations = "ersid_http_request_duration_seconds_count"
            self.assertEqual(value(samples, durations, method="GET"), 3)
            self.assertEqual(value(samples, "ersid_http_connections_total"), 1)
            self.assertEqual(value(samples, "ersid_http_open_connections"), 0)
            self.assertEqual(value(samples, "ersid_store_keys"), 1)
            self.assertEqual(value(samples, "ersid_store_revision"), 1)

        return Deferred.fromCoroutine(check())

    def test_a_refused_request_is_counted_with_its_status(self):
        async def check():
            port = await _serve(self, self.service, self.traffic)
            sent = b"GET /k HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"
            received = await raw_exchange(port, sent)
            self.assertTrue(received.startswith(b"HTTP/1.1 400"))
            samples = await scrape(self.metrics)
            requests = "ersid_http_requests_total"
            self.assertEqual(value(samples, requests, method="GET", code="400"), 1)
            self.assertEqual(
                value(samples, "ersid_http_sent_bytes_total"), len(received)
            )
            # Refused before it was answered: no duration of the API's.
            durations = "ersid_http_request_duration_seconds_count"
            self.assertEqual(value(samples, durations, method="GET"), 0)
            # Garbage has no method (llhttp's refusal is a 405).
            received = await raw_exchange(port, b"\x00\x01 nonsense\r\n\r\n")
            self.assertTrue(received.startswith(b"HTTP/1.1 405"))
            samples = await scrape(self.metrics)
            self.assertEqual(value(samples, requests, method="other", code="405"), 1)

        return Deferred.fromCoroutine(check())

    def test_open_connections_go_up_and_down(self):
        async def check():
            port = await _serve(self, self.service, self.traffic)
            clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
            await _turns(lambda: self.traffic.accepted == 3)
            # Bytes read by connections still open count too.
            partial = b"GET /k HTTP/1.1\r\nHost:"
            clients[0].sendall(partial)
            await _turns(lambda: self.traffic.received == len(partial))
            samples = await scrape(self.metrics)
            self.assertEqual(value(samples, "ersid_http_open_connections"), 3)
            self.assertEqual(
                value(samples, "ersid_http_received_bytes_total"), len(partial)
            )
            for client in clients:
                client.close()
            await _turns(lambda: self.traffic.open == 0)
            samples = await scrape(self.metrics)
            self.assertEqual(value(samples, "ersid_http_open_connections"), 0)
            self.assertEqual(value(samples, "ersid_http_connections_total"), 3)
            self.assertEqual(
                value(samples, "ersid_http_received_bytes_total"), len(partial)
            )

        return Deferred.fromCoroutine(check())

    async def watched(self) -> tuple[Hub, Metrics, socket.socket]:
        """A store with a hub, served; a client connected to it."""
        hub = Hub(History(), reactor)
        storage = DictStorage(publish=hub.publish)
        metrics = Metrics(storage, [self.traffic])
        service = Service(storage, hub=hub, metrics=metrics)
        port = await _serve(self, service, self.traffic)
        return hub, metrics, socket.create_connection(("127.0.0.1", port))

    def test_a_watch_is_counted_when_it_ends_but_not_timed(self):
        """A stream lasts as long as its client watches: no latency of the API."""

        async def check():
            hub, metrics, client = await self.watched()
            client.sendall(b"GET /_watch?prefix=a/ HTTP/1.1\r\nHost: x\r\n\r\n")
            await _turns(lambda: len(hub) == 1)
            client.close()
            await _turns(lambda: self.traffic.accepted == 1 and self.traffic.open == 0)
            samples = await scrape(metrics)
            requests = "ersid_http_requests_total"
            self.assertEqual(value(samples, requests, method="GET", code="200"), 1)
            durations = "ersid_http_request_duration_seconds_count"
            self.assertEqual(value(samples, durations, method="GET"), 0)

        return Deferred.fromCoroutine(check())

    def test_a_long_poll_its_client_left_is_not_counted(self):
        """Nothing was answered: no status to count."""

        async def check():
            _, metrics, client = await self.watched()
            client.sendall(
                b"GET /_watch?prefix=a/&since=0&wait=20 HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            await _turns(lambda: self.traffic.received > 0)
            client.close()
            await _turns(lambda: self.traffic.accepted == 1 and self.traffic.open == 0)
            samples = await scrape(metrics)
            counted = [n for (n, _) in samples if n == "ersid_http_requests_total"]
            self.assertEqual(counted, [])

        return Deferred.fromCoroutine(check())

    def test_key_requests_are_timed_by_the_connection_clock(self):
        """
        The connections count key requests themselves (the fast path, not
        Traffic.answered): from the request read to its answer written,
        whether the storage answers at once or later.
        """
        clock = Clock()

        class Slow(DictStorage):
            def get_now(self, key):
                clock.advance(0.0001)  # the first bucket's bound, exactly
                return DictStorage.get_now(self, key)

            def get(self, key):
                return deferLater(clock, 0.003, DictStorage.get_now, self, key)

            def set(self, *arguments):
                return deferLater(clock, 0.0003, DictStorage.set, self, *arguments)

        traffic = Traffic()
        metrics = Metrics(Slow(), [traffic], process=False)
        service = Service(Slow(), metrics=metrics)
        site = makeSite(service, reactor=clock, traffic=traffic)
        connection = site.buildProtocol(None)
        transport = StringTransport()
        connection.makeConnection(transport)
        get = b"GET /k HTTP/1.1\r\nHost: x\r\n\r\n"
        connection.dataReceived(get)  # read at once, twice
        connection.dataReceived(get)
        service.read_now = None  # then through get, late
        connection.dataReceived(get)
        clock.advance(0.003)
        connection.dataReceived(
            b"PUT /k HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nv"
        )
        clock.advance(0.0003)
        samples = self.successResultOf(Deferred.fromCoroutine(scrape(metrics)))
        bucket = "ersid_http_request_duration_seconds_bucket"
        self.assertEqual(value(samples, bucket, method="GET", le="0.0001"), 2)
        self.assertEqual(value(samples, bucket, method="GET", le="0.0025"), 2)
        self.assertEqual(value(samples, bucket, method="GET", le="0.005"), 3)
        self.assertEqual(value(samples, bucket, method="PUT", le="0.00025"), 0)
        self.assertEqual(value(samples, bucket, method="PUT", le="0.0005"), 1)
        durations = "ersid_http_request_duration_seconds_sum"
        self.assertAlmostEqual(value(samples, durations, method="GET"), 0.0032)
        self.assertAlmostEqual(value(samples, durations, method="PUT"), 0.0003)
        requests = "ersid_http_requests_total"
        self.assertEqual(value(samples, requests, method="GET", code="404"), 3)
        self.assertEqual(value(samples, requests, method="PUT", code="201"), 1)
        sent = value(samples, "ersid_http_sent_bytes_total")
        self.assertEqual(sent, len(transport.value()))

    def test_durations_fall_in_the_bucket_of_their_upper_bound(self):
        """Prometheus's buckets hold what is less than or equal to their bound."""

        async def check():
            self.traffic.answered(b"GET", 200, 0.001)
            self.traffic.answered(b"GET", 200, 0.0011)
            self.traffic.answered(b"GET", 500, 30.0)
            samples = await scrape(self.metrics)
            bucket = "ersid_http_request_duration_seconds_bucket"
            self.assertEqual(value(samples, bucket, method="GET", le="0.0005"), 0)
            self.assertEqual(value(samples, bucket, method="GET", le="0.001"), 1)
            self.assertEqual(value(samples, bucket, method="GET", le="0.0025"), 2)
            self.assertEqual(value(samples, bucket, method="GET", le="10.0"), 2)
            self.assertEqual(value(samples, bucket, method="GET", le="+Inf"), 3)
            total = value(
                samples, "ersid_http_request_duration_seconds_sum", method="GET"
            )
            self.assertAlmostEqual(total, 30.0021)

        return Deferred.fromCoroutine(check())


class ScrapeTests(TestCase):
    """The route: who may read it, what it answers."""

    def test_metrics_off_answer_404_in_json(self):
        async def check():
            service = Service(DictStorage())
            response = await StubTreq(service.resource()).get("http://x/_metrics")
            self.assertEqual(response.code, 404)
            self.assertEqual(json.loads(await response.content())["error"], "not_found")

        return Deferred.fromCoroutine(check())

    def test_a_storage_that_does_not_answer_is_shown_down(self):
        class Down(DictStorage):
            def stats(self):
                raise StorageUnavailable("the database is down")

        async def check():
            storage = Down()
            traffic = Traffic()
            service = Service(storage, metrics=Metrics(storage, [traffic]))
            port = await _serve(self, service, traffic)
            response = await http().get(f"http://127.0.0.1:{port}/_metrics")
            self.assertEqual(response.code, 200)
            self.assertEqual(
                response.headers.getRawHeaders("content-type"),
                ["text/plain; version=0.0.4; charset=utf-8"],
            )
            samples = parse((await response.content()).decode())
            self.assertEqual(value(samples, "ersid_store_up"), 0)
            self.assertNotIn(("ersid_store_keys", ()), samples)

        return Deferred.fromCoroutine(check())


class ProcessFiguresTests(TestCase):
    def test_read_in_a_thread_at_most_once_a_second_and_shared(self):
        """
        Counting open files takes 10 ms with 10,000 of them: scrapes in a
        burst share one reading, made off the reactor's thread.
        """
        import threading

        from prometheus_client.process_collector import ProcessCollector

        readers = []
        collect = ProcessCollector.collect

        def counted(collector):
            readers.append(threading.current_thread())
            return collect(collector)

        self.patch(ProcessCollector, "collect", counted)

        async def check():
            storage = DictStorage()
            metrics = Metrics(storage)
            # Both under way at once: the second waits on the first's reading.
            first = Deferred.fromCoroutine(metrics.render())
            second = Deferred.fromCoroutine(metrics.render())
            texts = [await first, await second, await metrics.render()]
            self.assertEqual(len(readers), 1)
            self.assertIsNot(readers[0], threading.current_thread())
            for text in texts:
                samples = parse(text.decode())
                self.assertGreater(value(samples, "process_resident_memory_bytes"), 0)

        return Deferred.fromCoroutine(check())


class PartsTests(TestCase):
    """Each part's figures, after the events that move them."""

    def test_the_journal_and_snapshots_count_what_they_did(self):
        async def check():
            data = os.path.abspath(self.mktemp())
            os.mkdir(data, 0o700)
            dump = os.path.join(data, "snapshot.json")
            hub = Hub(History(), reactor)
            opened = open_embedded(data, dump, "always", 3600, hub, 0.2, reactor)
            for service in opened.services:
                service.startService()
                self.addCleanup(service.stopService)
            metrics = Metrics(opened.storage, opened.collectors)
            # Together: the journal writes them in batches.
            await gatherResults(
                [opened.storage.set(f"k{n}", b"v" * 100) for n in range(5)]
            )
            await opened.storage.delete("k0")
            samples = await scrape(metrics)
            self.assertEqual(value(samples, "ersid_journal_appends_total"), 6)
            # fsync=always: each write waited for one (a batch may share one).
            fsyncs = value(samples, "ersid_journal_fsyncs_total")
            self.assertGreaterEqual(fsyncs, 1)
            self.assertEqual(
                value(samples, "ersid_journal_fsync_duration_seconds_count"), fsyncs
            )
            self.assertEqual(value(samples, "ersid_store_keys"), 4)
            before = value(samples, "ersid_store_bytes")
            self.assertGreaterEqual(before, 400)
            await opened.storage.delete("k1")
            samples = await scrape(metrics)
            self.assertLessEqual(value(samples, "ersid_store_bytes"), before - 100)
            snapshots = "ersid_snapshots_total"
            snapshotter = opened.services[0].services[0].snapshotter
            await snapshotter.snapshot()  # the timer's first, if under way, ends
            written = value(await scrape(metrics), snapshots, outcome="written")
            outcome = await snapshotter.snapshot(force=True)
            samples = await scrape(metrics)
            self.assertEqual(value(samples, snapshots, outcome="written"), written + 1)
            self.assertEqual(
                value(samples, "ersid_snapshot_size_bytes"), os.path.getsize(dump)
            )
            self.assertEqual(
                value(samples, "ersid_snapshot_last_success_timestamp_seconds"),
                outcome.finished_at,
            )
            self.assertEqual(value(samples, snapshots, outcome="failed"), 0)

        return Deferred.fromCoroutine(check())

    def test_a_failed_snapshot_is_counted_and_timed(self):
        async def check():
            storage = DictStorage()
            await storage.set("k", b"v")
            path = os.path.join(os.path.abspath(self.mktemp()), "missing", "s.json")
            snapshotter = Snapshotter(storage, path, reactor)
            metrics = Metrics(storage, snapshotter.collectors)
            outcome = await snapshotter.snapshot()
            self.assertFalse(outcome.ok)
            samples = await scrape(metrics)
            self.assertEqual(
                value(samples, "ersid_snapshots_total", outcome="failed"), 1
            )
            self.assertEqual(
                value(samples, "ersid_snapshots_total", outcome="written"), 0
            )
            self.assertEqual(
                value(samples, "ersid_snapshot_last_failure_timestamp_seconds"),
                outcome.finished_at,
            )
            self.assertEqual(
                value(samples, "ersid_snapshot_last_success_timestamp_seconds"), 0
            )

        return Deferred.fromCoroutine(check())

    async def _watchers(self):
        clock = Clock()
        hub = Hub(History(), clock, telling_share=0.5)
        storage = DictStorage()
        metrics = Metrics(storage, hub.collectors)

        class Watcher:
            def __init__(self, prefix):
                self.prefix = prefix
                self.told = []

            def deliver(self, batch):
                self.told.extend(batch.changes)

            def tick(self, revision, progress):
                pass

            def end(self, reason):
                pass

        watchers = [Watcher("a/"), Watcher("a/"), Watcher("b/")]
        for watcher in watchers:
            hub.add(watcher)
        # The first telling is at once and takes 0.2 s of the clock: the
        # next is held back as long, and the changes published meanwhile
        # wait for it.
        clock.advance(1)
        hub.publish([Change(1, "a/1", None)])
        hub.publish([Change(2, "a/2", None), Change(3, "b/1", None)])
        clock.advance(0.25)
        samples = await scrape(metrics)
        self.assertEqual(value(samples, "ersid_watchers"), 3)
        told = sum(len(w.told) for w in watchers)
        self.assertEqual(told, 5)
        self.assertEqual(value(samples, "ersid_watch_events_total"), told)
        self.assertEqual(value(samples, "ersid_watch_delivery_lag_seconds_count"), 2)
        hub.dropped += 1
        samples = await scrape(metrics)
        self.assertEqual(value(samples, "ersid_watchers_dropped_total"), 1)

    def test_watchers_the_events_they_are_told_and_the_lag(self):
        return Deferred.fromCoroutine(self._watchers())

    def test_expired_keys_are_counted_with_how_late_they_went(self):
        async def check():
            clock = Clock()
            clock.advance(1_000_000)
            storage = DictStorage(clock=clock)
            metrics = Metrics(storage, storage.collectors)
            await storage.set("early", b"v", ttl=1)
            await storage.set("late", b"v", ttl=2)
            await storage.set("lasting", b"v", ttl=100)
            clock.advance(4.5)
            while storage.reap():
                pass
            samples = await scrape(metrics)
            self.assertEqual(value(samples, "ersid_keys_expired_total"), 2)
            self.assertEqual(value(samples, "ersid_expiry_lag_seconds_count"), 1)
            # The most overdue of the slice: 3.5 s late.
            self.assertAlmostEqual(value(samples, "ersid_expiry_lag_seconds_sum"), 3.5)
            self.assertEqual(value(samples, "ersid_store_keys"), 1)

        return Deferred.fromCoroutine(check())


class DaemonTests(TestCase):
    """A real daemon, scraped over HTTP as Prometheus does."""

    def test_a_scrape_shows_what_clients_did(self):
        async def check():
            daemon = Daemon.ersid(self, os.path.abspath(self.mktemp()))
            url = await daemon.rest_url()
            client = http()
            for n in range(3):
                response = await client.put(f"{url}/k{n}", data=b"x" * 10)
                await response.content()
            response = await client.get(f"{url}/nothing")
            await response.content()
            response = await client.get(f"{url}/_metrics")
            self.assertEqual(response.code, 200)
            samples = parse((await response.content()).decode())
            requests = "ersid_http_requests_total"
            self.assertEqual(value(samples, requests, method="PUT", code="201"), 3)
            self.assertEqual(value(samples, requests, method="GET", code="404"), 1)
            self.assertEqual(value(samples, "ersid_store_keys"), 3)
            self.assertEqual(value(samples, "ersid_store_revision"), 3)
            self.assertEqual(value(samples, "ersid_journal_appends_total"), 3)
            self.assertGreater(value(samples, "process_resident_memory_bytes"), 0)
            self.assertGreaterEqual(value(samples, "ersid_http_open_connections"), 1)
            await daemon.stop()

        return Deferred.fromCoroutine(check())

    def test_no_metrics_turns_them_off(self):
        async def check():
            daemon = Daemon.ersid(self, os.path.abspath(self.mktemp()), "--no-metrics")
            url = await daemon.rest_url()
            response = await http().get(f"{url}/_metrics")
            self.assertEqual(response.code, 404)
            self.assertIn(
                "--no-metrics", json.loads(await response.content())["message"]
            )
            await daemon.stop()

        return Deferred.fromCoroutine(check())


class MySQLTests(TestCase):
    """The MySQL backend's figures, on a real MariaDB."""

    def setUp(self):
        self.server = shared_server()
        self.clock = Clock()
        self.clock.advance(2_000_000_000)
        self.storage = storage_for(self, self.server.fresh_database(), clock=self.clock)
        self.metrics = Metrics(self.storage, self.storage.collectors)

    def test_queries_are_counted_and_timed_and_the_pool_emptied(self):
        async def check():
            before = await scrape(self.metrics)
            queries = value(before, "ersid_mysql_queries_total")
            await self.storage.set("k", b"v")
            await self.storage.get("k")
            await self.storage.keys()
            samples = await scrape(self.metrics)
            # One scrape's stats, and the three: each one transaction or read.
            self.assertEqual(value(samples, "ersid_mysql_queries_total"), queries + 4)
            self.assertEqual(
                value(samples, "ersid_mysql_query_duration_seconds_count"), queries + 4
            )
            self.assertEqual(value(samples, "ersid_mysql_pool_connections_in_use"), 0)
            self.assertEqual(
                value(samples, "ersid_mysql_retries_total", errno="1213"), 0
            )

        return Deferred.fromCoroutine(check())

    def test_a_lock_wait_timeout_is_retried_and_counted(self):
        import MySQLdb

        async def check():
            self.server.as_root("SET GLOBAL innodb_lock_wait_timeout = 1")
            self.addCleanup(
                self.server.as_root, "SET GLOBAL innodb_lock_wait_timeout = 50"
            )
            storage = storage_for(self, self.server.settings())
            metrics = Metrics(storage, storage.collectors)
            holder = MySQLdb.connect(
                unix_socket=self.server.socket, user="root", db="ersid"
            )
            self.addCleanup(holder.close)
            holder.cursor().execute("START TRANSACTION")
            holder.cursor().execute("SELECT * FROM ersid_revision FOR UPDATE")
            written = storage.set("k", b"v")
            retried = "ersid_mysql_retries_total"
            for _ in range(600):
                samples = await scrape(metrics)
                if value(samples, retried, errno="1205") >= 1:
                    break
                await deferLater(reactor, 0.01, lambda: None)
            holder.rollback()
            await written
            samples = await scrape(metrics)
            self.assertGreaterEqual(value(samples, retried, errno="1205"), 1)
            self.assertEqual((await storage.get("k")).value, b"v")

        return Deferred.fromCoroutine(check())

    def test_an_unreachable_server_is_counted_by_its_error(self):
        async def check():
            nowhere = MySQLSettings("ersid", "ersid", (("127.0.0.1", free_port()),))
            storage = storage_for(self, nowhere)
            metrics = Metrics(storage, storage.collectors)
            with self.assertRaises(StorageUnavailable):
                await storage.set("k", b"v")
            samples = await scrape(metrics)
            self.assertEqual(value(samples, "ersid_store_up"), 0)
            # MariaDB's client says 2002, can't connect, for a refused TCP
            # connection too: once for the write, once for the scrape's stats.
            self.assertEqual(
                value(samples, "ersid_mysql_failures_total", errno="2002"), 2
            )

        return Deferred.fromCoroutine(check())

    def test_expired_rows_are_counted_with_how_late_they_went(self):
        async def check():
            await self.storage.set("early", b"v", ttl=1)
            await self.storage.set("late", b"v", ttl=2)
            await self.storage.set("lasting", b"v", ttl=100)
            self.clock.advance(4.5)
            while await self.storage.reap():
                pass
            samples = await scrape(self.metrics)
            self.assertEqual(value(samples, "ersid_keys_expired_total"), 2)
            self.assertEqual(value(samples, "ersid_expiry_lag_seconds_count"), 1)
            self.assertAlmostEqual(
                value(samples, "ersid_expiry_lag_seconds_sum"), 3.5, places=3
            )

        return Deferred.fromCoroutine(check())
