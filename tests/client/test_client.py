"""
The client library, the C{ersid} command and C{ersid-bench}, against a real
Ersid on loopback.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import sys
from contextlib import redirect_stderr

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IHostnameResolver, IHostResolution
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.protocols.policies import WrappingFactory
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from ersid.client import (
    Client,
    ConditionFailed,
    Event,
    HistoryGone,
    KeyNotFound,
    RequestRejected,
    ServerUnavailable,
    ValueTooLarge,
    bench,
    check_url,
)
from ersid.client.bench import main as bench_main
from ersid.client.bench import parse_mix, percentile
from ersid.embedded.memory import DictStorage
from ersid.testing import free_port_holder
from ersid.watch import History, Hub
from ersid.web.app import Service
from ersid.web.site import makeSite

from .._helpers import Daemon, serve


class _ServerTestCase(TestCase):
    def setUp(self):
        self.hub = Hub(History(0, max_changes=10), reactor)
        self.storage = DictStorage(publish=self.hub.publish)

        async def start():
            service = Service(self.storage, max_value_size=1000, hub=self.hub)
            self.url = await serve(self, service)
            self.client = Client(self.url, reactor)
            self.addCleanup(self.client.close)

        return Deferred.fromCoroutine(start())

    def run_async(self, coroutine) -> Deferred:
        return Deferred.fromCoroutine(coroutine)


class ClientTests(_ServerTestCase):
    def test_set_get_delete(self):
        async def check():
            etag = await self.client.set("k", b"\x00v", "text/plain")
            value = await self.client.get("k")
            self.assertEqual(
                (value.data, value.content_type, value.etag),
                (b"\x00v", "text/plain", etag),
            )
            await self.client.delete("k")
            with self.assertRaises(KeyNotFound):
                await self.client.get("k")
            with self.assertRaises(KeyNotFound):
                await self.client.delete("k")

        return self.run_async(check())

    def test_keys_survive_url_encoding(self):
        keys = [".", "..", "a/b", "a//b", "/lead", "100%", "q?x=1#f", "sp ace", "é/🔑"]

        async def check():
            for key in keys:
                await self.client.set(key, key.encode())
            for key in keys:
                self.assertEqual((await self.client.get(key)).data, key.encode())
            self.assertEqual(sorted(await self.client.list()), sorted(keys))

        return self.run_async(check())

    def test_conditional_writes(self):
        async def check():
            etag = await self.client.set("k", b"1", create_only=True)
            with self.assertRaises(ConditionFailed):
                await self.client.set("k", b"2", create_only=True)
            newer = await self.client.set("k", b"2", if_match=etag)
            with self.assertRaises(ConditionFailed):
                await self.client.set("k", b"3", if_match=etag)
            with self.assertRaises(ConditionFailed):
                await self.client.delete("k", if_match=etag)
            await self.client.delete("k", if_match=newer)

        return self.run_async(check())

    def test_list_pages_through_everything(self):
        async def check():
            for i in range(25):
                await self.client.set(f"p/{i:02d}", b"x")
            await self.client.set("q", b"x")
            keys = await self.client.list("p/", page_size=10)
            self.assertEqual(keys, [f"p/{i:02d}" for i in range(25)])

        return self.run_async(check())

    def test_typed_errors(self):
        async def check():
            with self.assertRaises(ValueTooLarge):
                await self.client.set("k", b"x" * 1001)
            with self.assertRaises(RequestRejected) as raised:
                await self.client.set("_reserved", b"x")
            self.assertIn("reserved", str(raised.exception))

        return self.run_async(check())

    def test_unreachable_server(self):
        holder, port = free_port_holder()
        holder.close()
        client = Client(f"http://127.0.0.1:{port}", reactor)

        async def check():
            with self.assertRaises(ServerUnavailable):
                await client.get("k")

        return self.run_async(check())

    def test_server_hanging_up_is_unavailable_in_words(self):
        async def check():
            port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
                Factory.forProtocol(_HangUp)
            )
            self.addCleanup(port.stopListening)
            client = Client(f"http://127.0.0.1:{port.getHost().port}", reactor)
            with self.assertRaises(ServerUnavailable) as raised:
                await client.get("k")
            message = str(raised.exception)
            self.assertIn("cannot reach http://127.0.0.1:", message)
            self.assertIn("closed cleanly", message)
            self.assertNotIn("Failure", message)

        return self.run_async(check())

    def test_one_connection_serves_a_series_of_requests(self):
        async def check():
            counting = _CountingFactory(makeSite(Service(DictStorage())))
            endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
            port = await endpoint.listen(counting)
            self.addCleanup(port.stopListening)
            client = Client(f"http://127.0.0.1:{port.getHost().port}", reactor)
            self.addCleanup(client.close)
            await client.set("k", b"v")
            await client.get("k")
            self.assertEqual(await client.list(), ["k"])
            await client.delete("k")
            self.assertEqual(counting.built, 1)

        return self.run_async(check())

    def test_host_name_that_does_not_resolve_is_unavailable(self):
        previous = reactor.installNameResolver(_NoAddresses())
        self.addCleanup(reactor.installNameResolver, previous)
        client = Client("http://nowhere.example:8080", reactor)

        async def check():
            with self.assertRaises(ServerUnavailable) as raised:
                await client.get("k")
            self.assertIn("DNS lookup failed", str(raised.exception))

        return self.run_async(check())


@implementer(IHostResolution)
class _Resolution:
    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:
        pass


@implementer(IHostnameResolver)
class _NoAddresses:
    """A name resolver that finds no address for any name, at once."""

    def resolveHostName(self, receiver, hostName, *args, **kwargs):
        resolution = _Resolution(hostName)
        receiver.resolutionBegan(resolution)
        receiver.resolutionComplete()
        return resolution


class _CountingFactory(WrappingFactory):
    """Count the connections a factory is asked to serve."""

    built = 0

    def buildProtocol(self, addr):
        self.built += 1
        return super().buildProtocol(addr)


class _HangUp(Protocol):
    """A server that closes every connection as soon as a request arrives."""

    def dataReceived(self, data: bytes) -> None:
        self.transport.loseConnection()


class WatchTests(_ServerTestCase):
    async def no_watchers(self) -> None:
        """Wait until the server has let go of every watch (its connection)."""
        while len(self.hub):
            await deferLater(reactor, 0)

    def test_watch_resumes_after_a_dropped_connection(self):
        async def check():
            await self.storage.set("app/a", b"\xff\x00", "x/y")
            changes = self.client.watch("app/", since=0, values=True)
            self.assertEqual(
                await anext(changes), Event("put", "app/a", 1, "x/y", b"\xff\x00")
            )
            await self.storage.delete("app/a")
            self.assertEqual(await anext(changes), Event("delete", "app/a", 2))
            # The server ends every stream (as when it restarts); changes
            # made meanwhile come after the client reconnects by itself.
            self.hub.stopService()
            await self.storage.set("app/b", b"2")
            await self.storage.set("other", b"3")
            await self.storage.set("app/c", b"4")
            self.assertEqual(
                [
                    (e.key, e.revision)
                    for e in [await anext(changes), await anext(changes)]
                ],
                [("app/b", 3), ("app/c", 5)],
            )
            await changes.aclose()
            await self.no_watchers()

        return self.run_async(check())

    def test_watch_from_now_on(self):
        async def check():
            await self.storage.set("before", b"")
            changes = self.client.watch()
            waiting = Deferred.fromCoroutine(anext(changes))
            while not len(self.hub):
                await deferLater(reactor, 0)
            await self.storage.set("after", b"")
            self.assertEqual((await waiting).key, "after")
            await changes.aclose()
            await self.no_watchers()

        return self.run_async(check())

    def test_history_gone_is_a_typed_error(self):
        async def check():
            for n in range(15):
                await self.storage.set(f"k{n}", b"")
            changes = self.client.watch(since=2)
            with self.assertRaises(HistoryGone) as raised:
                await anext(changes)
            self.assertEqual(
                (raised.exception.oldest, raised.exception.revision), (5, 15)
            )

        return self.run_async(check())


class URLTests(TestCase):
    def test_server_urls_accepted(self):
        for url in [
            "http://localhost:8080",
            "https://kv.example.com/",
            "http://127.0.0.1:8080/prefix",
            "http://é.example",
        ]:
            self.assertEqual(check_url(url), url)

    def test_urls_that_cannot_name_a_server_refused(self):
        for url, complaint in [
            ("localhost:8080", "expected http://HOST[:PORT]"),
            ("ftp://localhost", "expected http://HOST[:PORT]"),
            ("http://", "expected http://HOST[:PORT]"),
            ("http://localhost:99999", "Port out of range"),
            ("http://[::1", "Invalid IPv6 URL"),
            ("http://[::1]:8080", "IPv6 literals"),
            ("http://exa mple", "not allowed"),
            ("http://" + "x" * 64 + ".example", "Label too long"),
            ("http://localhost/?a=1", "query or fragment"),
            ("http://user:secret@localhost:8080", "user names and passwords"),
            ("http://@localhost", "user names and passwords"),
        ]:
            with self.assertRaises(ValueError) as raised:
                Client(url, reactor)
            self.assertIn(complaint, str(raised.exception))
            self.assertIn(repr(url), str(raised.exception))


class CommandTests(_ServerTestCase):
    def ersid(self, *args: str, stdin: bytes | None = None) -> Daemon:
        command = Daemon(
            [sys.executable, "-c", "from ersid.client.cli import main; main()", *args],
            env={"ERSID_URL": self.url},
        )
        if stdin is not None:
            command.process.write(stdin)
        command.process.closeStdin()
        return command

    async def outcome(self, *args: str, stdin: bytes | None = None) -> tuple[int, str]:
        command = self.ersid(*args, stdin=stdin)
        return await command.ended, command.output

    def test_lab_round_trip(self):
        async def check():
            self.assertEqual(
                await self.outcome("set", "mykey", "myvalue"), (0, '"1"\n')
            )
            self.assertEqual(await self.outcome("get", "mykey"), (0, "myvalue"))

        return self.run_async(check())

    def test_binary_value_from_stdin(self):
        async def check():
            status, _ = await self.outcome(
                "set", "bin", "-", "--content-type", "x/y", stdin=b"\x00\xff\n"
            )
            self.assertEqual(status, 0)
            record = self.successResultOf(self.storage.get("bin"))
            self.assertEqual(
                (record.value, record.content_type), (b"\x00\xff\n", "x/y")
            )
            command = self.ersid("get", "bin")
            self.assertEqual(await command.ended, 0)
            self.assertEqual(command.output_bytes, b"\x00\xff\n")

        return self.run_async(check())

    def test_output_that_cannot_be_written(self):
        """
        A reader that has gone away ends the command quietly; an output that
        cannot take the value is one line on stderr. Never a traceback.
        """
        # Runs ersid with its stdout on a pipe nobody reads, or on a file.
        with_output = (
            "import os, subprocess, sys\n"
            "if sys.argv[1] == 'closed-pipe':\n"
            "    reading, output = os.pipe()\n"
            "    os.close(reading)\n"
            "else:\n"
            "    output = os.open(sys.argv[1], os.O_WRONLY)\n"
            "ersid = [sys.executable, '-c', 'from ersid.client.cli import main; main()']\n"
            "sys.exit(subprocess.call([*ersid, *sys.argv[2:]], stdout=output))\n"
        )

        async def ersid_writing_to(output: str, *args: str) -> tuple[int, str]:
            command = Daemon(
                [sys.executable, "-c", with_output, output, *args],
                env={"ERSID_URL": self.url},
            )
            command.process.closeStdin()
            return await command.ended, command.output

        async def check():
            self.successResultOf(self.storage.set("k", b"value"))
            self.assertEqual(await ersid_writing_to("closed-pipe", "get", "k"), (6, ""))
            self.assertEqual(await ersid_writing_to("closed-pipe", "list"), (6, ""))
            self.assertEqual(
                await ersid_writing_to("/dev/full", "get", "k"),
                (6, "ersid: standard input or output: No space left on device\n"),
            )

        return self.run_async(check())

    def test_exit_statuses(self):
        holder, port = free_port_holder()
        holder.close()

        async def check():
            await self.outcome("set", "k", "v")
            status, output = await self.outcome("get", "missing")
            self.assertEqual((status, output), (1, "ersid: no such key: 'missing'\n"))
            status, _ = await self.outcome("set", "k", "w", "--if-match", '"999"')
            self.assertEqual(status, 3)
            status, _ = await self.outcome("set", "_k", "w")
            self.assertEqual(status, 4)
            status, output = await self.outcome(
                "--url", f"http://127.0.0.1:{port}", "get", "k"
            )
            self.assertEqual(status, 5)
            self.assertEqual(output.count("\n"), 1)
            self.assertNotIn("Traceback", output)
            status, _ = await self.outcome("frobnicate")
            self.assertEqual(status, 2)
            status, output = await self.outcome(
                "--url", "http://[::1]:8080", "get", "k"
            )
            self.assertEqual(status, 2)
            self.assertIn("IPv6 literals", output)
            self.assertNotIn("Traceback", output)

        return self.run_async(check())

    def test_watch_prints_json_lines_and_history_gone_exits_7(self):
        async def check():
            await self.storage.set("app/a", b"text")
            await self.storage.set("app/b", b"\xff")
            command = self.ersid("watch", "app/", "--since", "0", "--values")
            await command.said(b'"app/b".*\n')
            command.process.signalProcess("KILL")
            await command.ended
            lines = [json.loads(line) for line in command.output.splitlines()]
            self.assertEqual(
                lines,
                [
                    {
                        "type": "put",
                        "key": "app/a",
                        "revision": 1,
                        "content_type": "application/octet-stream",
                        "value": "text",
                    },
                    {
                        "type": "put",
                        "key": "app/b",
                        "revision": 2,
                        "content_type": "application/octet-stream",
                        "value": {"base64": "/w=="},
                    },
                ],
            )
            for n in range(15):
                await self.storage.set(f"k{n}", b"")
            status, output = await self.outcome("watch", "--since", "1")
            self.assertEqual(status, 7)
            self.assertEqual(output.count("\n"), 1)
            self.assertIn("list the keys again", output)

        return self.run_async(check())

    def test_list_and_delete(self):
        async def check():
            for key in ["app/b", "app/a", "other"]:
                await self.outcome("set", key, "v")
            self.assertEqual(await self.outcome("list", "app/"), (0, "app/a\napp/b\n"))
            self.assertEqual(await self.outcome("delete", "app/a"), (0, ""))
            self.assertEqual(await self.outcome("list"), (0, "app/b\nother\n"))

        return self.run_async(check())

    def test_bench_shows_progress_on_a_terminal(self):
        async def check():
            command = Daemon(
                [
                    *(
                        sys.executable,
                        "-c",
                        "from ersid.client.bench import main; main()",
                    ),
                    *("--url", self.url, "-d", "1", "-c", "2", "--keys", "5"),
                ],
                terminal=True,
            )
            self.assertEqual(await command.ended, 0)
            self.assertRegex(command.output, r"\r\[#+ *\] +\d+% \d+ requests")
            self.assertIn("throughput:", command.output)

        return self.run_async(check())

    def test_bench_reports_json(self):
        async def check():
            command = Daemon(
                [
                    sys.executable,
                    "-c",
                    "from ersid.client.bench import main; main()",
                    "--url",
                    self.url,
                    "-n",
                    "300",
                    "-c",
                    "4",
                    "--keys",
                    "20",
                    "--mix",
                    "get=2,put=1",
                    "--json",
                ]
            )
            self.assertEqual(await command.ended, 0)
            report = json.loads(command.output)
            self.assertEqual(report["requests"], 300)
            self.assertEqual(report["errors"], 0)
            self.assertEqual(set(report["statuses"]), {"200", "204"})
            self.assertEqual(sum(report["statuses"].values()), 300)
            latency = report["latency_ms"]
            self.assertTrue(0 < latency["p50"] <= latency["p99"] <= latency["max"])
            self.assertEqual(len(self.successResultOf(self.storage.keys()).items), 20)

        return self.run_async(check())

    def test_bench_stops_when_preloading_fails(self):
        """
        Keys the server refuses to store (here, values over its limit) would
        turn every read into a 404: the benchmark stops and says so.
        """

        async def check():
            command = Daemon(
                [
                    *(
                        sys.executable,
                        "-c",
                        "from ersid.client.bench import main; main()",
                    ),
                    *("--url", self.url, "-n", "50", "--keys", "5"),
                    *("--value-size", "2000"),
                ]
            )
            self.assertEqual(await command.ended, 1)
            self.assertRegex(
                command.output,
                r"^ersid-bench: preloading the 5 keys it reads failed: "
                r"the server answered [1-5] times 413\n$",
            )

        return self.run_async(check())


class BenchHelperTests(TestCase):
    def test_parse_mix(self):
        self.assertEqual(parse_mix("get=90, put=10"), {"GET": 90, "PUT": 10})
        for bad in ["get", "post=1", "get=x", "get=0"]:
            self.assertRaises(argparse.ArgumentTypeError, parse_mix, bad)

    def test_bad_options_refused_with_usage_status(self):
        for argv, complaint in [
            (["-c", "0"], "--concurrency must be at least 1"),
            (["-d", "0"], "--duration must be more than 0"),
            (["--value-size", "-1"], "--value-size must not be negative"),
            (["--mix", "post=1"], "post"),
            (["-c", "100000000"], "open files, over this process's limit"),
        ]:
            stderr = io.StringIO()
            with self.assertRaises(SystemExit) as exited, redirect_stderr(stderr):
                bench_main(argv)
            self.assertEqual(exited.exception.code, 2)
            self.assertIn(complaint, stderr.getvalue())

    def test_open_file_limit_raised_for_the_connections(self):
        """
        A concurrency above the soft limit on open files raises it (up to
        the hard limit): connections must not wait for descriptors.
        """
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        connections = min(1000, hard - 64)
        resource.setrlimit(resource.RLIMIT_NOFILE, (connections // 4, hard))
        self.assertIsNone(bench.make_room_for(connections))
        raised, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.assertGreater(raised, connections)

    def test_percentile(self):
        values = [float(i) for i in range(1, 101)]
        self.assertEqual(percentile(values, 0.5), 50.0)
        self.assertEqual(percentile(values, 0.99), 99.0)
        self.assertEqual(percentile(values, 0.999), 100.0)
        self.assertEqual(percentile(values, 0.07), 7.0)
        self.assertEqual(percentile(values, 0.0), 1.0)
        self.assertEqual(percentile([7.0], 0.5), 7.0)
        self.assertEqual(percentile([], 0.5), 0.0)
