"""
Online backups as an operator takes them, the same for every backend: the
real daemon, the real C{ersid backup} and C{ersid restore} commands, curl,
and clients that read slowly or go away. A backend's test case mixes
L{BackupContractMixin} in and says how to load a store, restore a backup
and find what a stream could leave behind.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Iterator

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.python import log
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone

from ersid.auth import add_token
from ersid.snapshots.format import read_snapshot
from ersid.storage import Record

from ._helpers import Daemon, http

# The binary value of the key "bin", and the time to live of "ttl".
BINARY = b"\x00\xff\xfe\n"
TTL = 3600.0
# Keys of a kilobyte in the stores of the tests of flow: some 50 MB of
# snapshot, far more than every buffer between the writer and the client.
FLOW_KEYS = 50_000
FLOW_PAD = 1000
# What the daemon may grow by while a client does not read, at most.
MOST_GROWTH = 16 << 20


def numbered(keys: int, pad: int = 0) -> Iterator[tuple[str, Record]]:
    """
    The store every test loads, in key order: "bin" (binary, version 1),
    C{keys} keys C{key0000000}... with the values C{value-N} and C{pad}
    x's (text/plain, version N + 2), and "ttl" (expiring in L{TTL}
    seconds, version C{keys} + 2, the store's revision).
    """
    yield "bin", Record(BINARY, "application/octet-stream", 1)
    tail = b"x" * pad
    for i in range(keys):
        yield f"key{i:07d}", Record(b"value-%d%s" % (i, tail), "text/plain", i + 2)
    yield "ttl", Record(b"lease", "text/plain", keys + 2, time.time() + TTL)


def status_kb(pid: int, field: str) -> int:
    """A memory figure (VmRSS, VmHWM) of process C{pid}, in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} for process {pid}")


def parse(document: bytes, path: str) -> tuple[int, dict[str, Record]]:
    """A snapshot's revision and records, read as the daemon reads one."""
    with open(path, "wb") as f:
        f.write(document)
    records: dict[str, Record] = {}

    def pack(version: int, content_type: str, value: bytes, expires) -> Record:
        return Record(value, content_type, version, expires)

    def add_page(keys, packed, _) -> None:
        records.update(zip(keys, packed, strict=True))

    read = read_snapshot(path, pack, add_page)
    assert read is not None
    return read[0], records


class _Body(Protocol):
    """A response body, read only when told: see L{paused}."""

    def __init__(self) -> None:
        self.data = bytearray()
        # Fires with why it ended: ResponseDone if it was whole.
        self.done: Deferred[Exception] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure) -> None:
        self.done.callback(reason.value)


def paused(response) -> _Body:
    """The body of C{response}, which its client stops reading at once."""
    body = _Body()
    response.deliverBody(body)
    # After deliverBody, which resumes the transport whatever the body did.
    body.transport.pauseProducing()
    return body


class BackupContractMixin:
    """
    Subclasses mix in a trial C{TestCase} and define:

      - C{start_daemon(keys, pad, *args)}: a daemon over the store of
        L{numbered}C{(keys, pad)} at revision C{keys + 2}, loaded the
        fastest way, started with C{args}; a L{Daemon}.
      - C{restore(path)}: C{ersid restore} of the backup at C{path} into a
        new, empty store, and a daemon started on it.
      - C{leftovers(daemon)}: what streams of C{daemon} hold (child
        processes, temporary files, transactions), for checking that a
        stream stopped midway holds nothing.
    """

    timeout = 300

    async def start_daemon(self, keys: int, pad: int = 0, *args: str) -> Daemon:
        raise NotImplementedError

    async def restore(self, path: str) -> Daemon:
        raise NotImplementedError

    async def leftovers(self, daemon: Daemon) -> list[str]:
        raise NotImplementedError

    def run_async(self, coroutine) -> Deferred:
        return Deferred.fromCoroutine(coroutine)

    def ersid(self, *args: str, env: dict[str, str] | None = None) -> Daemon:
        """The C{ersid} command, run with umask 0 (the files it makes are 0600 still)."""
        code = "import os; os.umask(0); from ersid.client.cli import main; main()"
        command = Daemon([sys.executable, "-c", code, *args], env=env)
        self.addCleanup(command.stop, "KILL")
        return command

    async def backup(self, url: str, path: str, *args: str) -> tuple[int, str]:
        command = self.ersid("--url", url, *args, "backup", path)
        return await command.ended, command.output

    async def curl(self, url: str, path: str) -> None:
        command = Daemon(["curl", "-sS", "--fail", "-o", path, url])
        self.assertEqual(await command.ended, 0, command.output)

    async def wait_for(self, condition, what: str, seconds: float = 30) -> None:
        """Poll C{condition} until it holds; fail saying C{what} after C{seconds}."""
        deadline = time.monotonic() + seconds
        while not await condition():
            if time.monotonic() > deadline:
                self.fail(f"still not so after {seconds} s: {what}")
            await deferLater(reactor, 0.05)

    async def settled_rss(self, pid: int) -> int:
        """
        The daemon's resident memory once it has stopped changing for half
        a second: a daemon that did not stop reading from the writer would
        be buffering the snapshot all along.
        """
        readings = [status_kb(pid, "VmRSS")]

        async def steady() -> bool:
            readings.append(status_kb(pid, "VmRSS"))
            last = readings[-10:]
            return len(readings) > 10 and max(last) - min(last) < 256

        await self.wait_for(steady, "the daemon's memory settles")
        return readings[-1] << 10

    def test_round_trip_of_a_million_keys(self):
        """
        A million keys, a binary value and one with a time to live, backed
        up by C{ersid backup} from a running daemon, restored by C{ersid
        restore} into a new store, and served by a daemon started on it,
        which gives back the very same snapshot.
        """

        async def check():
            keys = 1_000_000
            daemon = await self.start_daemon(keys)
            url = await daemon.rest_url()
            path = os.path.abspath(self.mktemp())
            pid = daemon.process.pid
            rss, peak = status_kb(pid, "VmRSS"), status_kb(pid, "VmHWM")
            started = time.monotonic()
            status, output = await self.backup(url, path)
            seconds = time.monotonic() - started
            self.assertEqual(status, 0, output)
            self.assertEqual(
                output,
                f"{path}: {keys + 2} keys at revision {keys + 2}, "
                f"{os.path.getsize(path)} bytes\n",
            )
            self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
            grown = status_kb(pid, "VmHWM") - peak
            log.msg(
                f"backup of {keys + 2} keys ({os.path.getsize(path)} bytes) by "
                f"{type(self).__name__}: {seconds:.1f} s; daemon's RSS {rss >> 10} "
                f"MiB, its peak grown by {grown} KiB"
            )
            self.assertLess(grown << 10, MOST_GROWTH)
            # Its expiry, to the microsecond, as the daemon had it.
            response = await http().get(f"{url}/ttl")
            expires = response.headers.getRawHeaders("ersid-expires")
            await response.content()
            await daemon.stop()

            started = time.monotonic()
            restored = await self.restore(path)
            log.msg(
                f"restore and start by {type(self).__name__}: "
                f"{time.monotonic() - started:.1f} s"
            )
            url = await restored.rest_url()
            response = await http().get(f"{url}/bin")
            self.assertEqual(await response.content(), BINARY)
            self.assertEqual(
                response.headers.getRawHeaders("content-type"),
                ["application/octet-stream"],
            )
            response = await http().get(f"{url}/ttl")
            self.assertEqual(await response.content(), b"lease")
            self.assertEqual(response.headers.getRawHeaders("ersid-expires"), expires)
            response = await http().get(f"{url}/key0999999")
            self.assertEqual(await response.content(), b"value-999999")
            self.assertEqual(response.headers.getRawHeaders("etag"), ['"1000001"'])
            again = path + ".again"
            await self.curl(f"{url}/_snapshot", again)
            with open(path, "rb") as first, open(again, "rb") as second:
                self.assertTrue(first.read() == second.read(), "the snapshots differ")

        return self.run_async(check())

    def test_consistent_while_writes_go_on(self):
        """
        The snapshot holds the store at the revision its header names:
        every write acknowledged before the request, none made after it,
        though they are made while it is being sent.
        """

        async def check():
            daemon = await self.start_daemon(FLOW_KEYS, FLOW_PAD)
            url = await daemon.rest_url()
            before = await http().put(f"{url}/before", data=b"acknowledged")
            (etag,) = before.headers.getRawHeaders("etag")
            response = await http().get(f"{url}/_snapshot", unbuffered=True)
            self.assertEqual(response.code, 200)
            (revision,) = response.headers.getRawHeaders("ersid-revision")
            self.assertEqual(f'"{revision}"', etag)
            body = paused(response)
            last = f"key{FLOW_KEYS - 1:07d}"
            for method, key in [("PUT", last), ("PUT", "zzz"), ("DELETE", "before")]:
                done = await http().request(method, f"{url}/{key}", data=b"later")
                self.assertIn(done.code, (201, 204))
                await done.content()
            body.transport.resumeProducing()
            self.assertIsInstance(await body.done, ResponseDone)
            held, records = parse(bytes(body.data), self.mktemp())
            self.assertEqual(held, int(revision))
            self.assertEqual(records["before"].value, b"acknowledged")
            self.assertEqual(
                records[last].value, b"value-%d" % (FLOW_KEYS - 1) + b"x" * FLOW_PAD
            )
            self.assertNotIn("zzz", records)
            self.assertEqual(len(records), FLOW_KEYS + 3)
            self.assertEqual(max(r.version for r in records.values()), int(revision))

        return self.run_async(check())

    def test_a_client_that_does_not_read_does_not_grow_the_daemon(self):
        """
        While its client reads nothing, the stream waits, holding a few
        buffers' worth: then it goes on, whole.
        """

        async def check():
            daemon = await self.start_daemon(FLOW_KEYS, FLOW_PAD)
            url = await daemon.rest_url()
            pid = daemon.process.pid
            rss = status_kb(pid, "VmRSS") << 10
            response = await http().get(f"{url}/_snapshot", unbuffered=True)
            body = paused(response)
            grown = await self.settled_rss(pid) - rss
            log.msg(
                f"a client not reading grew {type(self).__name__} by {grown >> 10} KiB"
            )
            self.assertLess(grown, MOST_GROWTH)
            self.assertNotEqual(await self.leftovers(daemon), [], "it ended already")
            body.transport.resumeProducing()
            self.assertIsInstance(await body.done, ResponseDone)
            _, records = parse(bytes(body.data), self.mktemp())
            self.assertEqual(len(records), FLOW_KEYS + 2)

        return self.run_async(check())

    def test_a_client_gone_midway_leaves_nothing_behind(self):
        """
        A client that hangs up halfway leaves no process, file or
        transaction behind, and the daemon serves on.
        """

        async def check():
            daemon = await self.start_daemon(FLOW_KEYS, FLOW_PAD)
            url = await daemon.rest_url()
            before = await self.leftovers(daemon)
            response = await http().get(f"{url}/_snapshot", unbuffered=True)
            body = paused(response)
            # Once backed up as far as it goes: the daemon waits for the
            # client, which then hangs up.
            await self.settled_rss(daemon.process.pid)
            self.assertNotEqual(await self.leftovers(daemon), before)
            body.transport.stopProducing()
            await body.done

            async def nothing_left() -> bool:
                return await self.leftovers(daemon) == before

            await self.wait_for(nothing_left, "the stream's leftovers are gone")
            response = await http().get(f"{url}/_health")
            self.assertEqual(response.code, 200)
            await response.content()
            self.assertNotIn("Traceback", daemon.output)

        return self.run_async(check())

    def test_at_most_two_at_once(self):
        """A third backup while two are being taken gets 503, and a time to retry."""

        async def check():
            daemon = await self.start_daemon(FLOW_KEYS, FLOW_PAD)
            url = await daemon.rest_url()
            first, second = [
                paused(await http().get(f"{url}/_snapshot", unbuffered=True))
                for _ in range(2)
            ]
            third = await http().get(f"{url}/_snapshot")
            self.assertEqual(third.code, 503)
            self.assertEqual(third.headers.getRawHeaders("retry-after"), ["10"])
            self.assertEqual(json.loads(await third.content())["error"], "busy")
            first.transport.stopProducing()
            await first.done
            second.transport.resumeProducing()
            self.assertIsInstance(await second.done, ResponseDone)
            again = await http().get(f"{url}/_snapshot")
            self.assertEqual(again.code, 200)
            _, records = parse(await again.content(), self.mktemp())
            self.assertEqual(len(records), FLOW_KEYS + 2)

        return self.run_async(check())

    def test_only_admin_tokens_take_backups(self):
        """401 without a token, 403 with one that is not an admin's."""

        async def check():
            tokens = os.path.abspath(self.mktemp())
            admin = add_token(tokens, "root", admin=True)
            reader = add_token(tokens, "reader", read=("",), write=("",))
            daemon = await self.start_daemon(10, 0, "--tokens", tokens)
            url = await daemon.rest_url()
            path = os.path.join(os.path.abspath(self.mktemp()), "backup.json")
            os.makedirs(os.path.dirname(path))
            for token, status, code, said in [
                (None, 401, 10, "needs a token"),
                (reader, 403, 10, "token 'reader' may not take backups"),
            ]:
                headers = {} if token is None else {"Authorization": f"Bearer {token}"}
                response = await http().get(f"{url}/_snapshot", headers=headers)
                self.assertEqual(response.code, status)
                error = json.loads(await response.content())
                self.assertEqual(
                    error["error"], {401: "unauthorized", 403: "forbidden"}[status]
                )
                env = {} if token is None else {"ERSID_TOKEN": token}
                command = self.ersid("--url", url, "backup", path, env=env)
                self.assertEqual(await command.ended, code)
                self.assertIn(said, command.output)
                self.assertEqual(os.listdir(os.path.dirname(path)), [])
            env = {"ERSID_TOKEN": admin}
            command = self.ersid("--url", url, "backup", path, env=env)
            self.assertEqual(await command.ended, 0, command.output)

        return self.run_async(check())

    def test_only_get(self):
        """A HEAD, which would take a backup for nothing, and a POST get 405 in JSON."""

        async def check():
            daemon = await self.start_daemon(10)
            url = await daemon.rest_url()
            before = await self.leftovers(daemon)
            for method in ("HEAD", "POST", "PUT", "DELETE", "OPTIONS", "TRACE"):
                response = await http().request(method, f"{url}/_snapshot")
                self.assertEqual(response.code, 405, method)
                # As every GET endpoint's, the others' Allow names HEAD too.
                allowed = ["GET"] if method == "HEAD" else ["GET, HEAD"]
                self.assertEqual(response.headers.getRawHeaders("allow"), allowed)
                self.assertEqual(
                    response.headers.getRawHeaders("content-type"), ["application/json"]
                )
                content = await response.content()
                if method != "HEAD":
                    self.assertEqual(json.loads(content)["error"], "method_not_allowed")
            self.assertEqual(await self.leftovers(daemon), before)

        return self.run_async(check())

    def test_a_backup_cut_short_leaves_the_old_file(self):
        """
        A daemon killed while C{ersid backup} saves its snapshot: the
        command says so and exits 5, and the file it was to replace is
        left as it was, with no temporary beside it.
        """

        async def check():
            daemon = await self.start_daemon(FLOW_KEYS, FLOW_PAD)
            url = await daemon.rest_url()
            directory = os.path.abspath(self.mktemp())
            os.makedirs(directory)
            path = os.path.join(directory, "backup.json")
            with open(path, "wb") as old:
                old.write(b"the old backup")
            command = self.ersid("--url", url, "backup", path)

            async def receiving() -> bool:
                return any(
                    entry.name != "backup.json" and entry.stat().st_size > 0
                    for entry in os.scandir(directory)
                )

            await self.wait_for(receiving, "the backup is being received")
            await daemon.stop("KILL")
            self.assertEqual(await command.ended, 5)
            self.assertRegex(
                command.output, re.compile(r"^ersid: the backup was cut short: .*\n\Z")
            )
            self.assertEqual(os.listdir(directory), ["backup.json"])
            with open(path, "rb") as kept:
                self.assertEqual(kept.read(), b"the old backup")

        return self.run_async(check())
