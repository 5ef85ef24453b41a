"""
The daemon's log as an operator reads it: one line per event, and no
traceback for what clients of the manhole and of the API do every day
(logging out, a wrong key, a command, a killed client, garbage, a client
gone in the middle of a request or response). A real daemon, the real
OpenSSH client, real sockets.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess

from twisted.conch.recvline import RecvLine
from twisted.conch.ssh.channel import SSHChannel
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.trial.unittest import TestCase

from .._helpers import Daemon, http, raw_exchange, require

# What twistd's text log starts every event's first line with.
_EVENT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \[[^\]]+\] ")


def _keygen(path: str) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", path],
        check=True,
        stdin=subprocess.DEVNULL,
    )


def _lines(test: TestCase, output: str) -> list[str]:
    """The log's lines, having checked that each is one event of its own."""
    lines = output.splitlines()
    for line in lines:
        test.assertRegex(line, _EVENT, f"a line that is no event of its own:\n{output}")
    test.assertNotIn("Traceback", output)
    return lines


def _reset_after_reading(port: int, request: bytes) -> bytes:
    """
    Send C{request} with a small receive buffer, read the start of the
    response, and reset the connection (RST), as a client that crashes.
    Blocking: run it in a thread.
    """
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", port))
        s.sendall(request)
        start = s.recv(64)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return start


class _DaemonLogTestCase(TestCase):
    timeout = 60
    maxDiff = None

    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.http = http()

    def run_async(self, coroutine) -> Deferred:
        return Deferred.fromCoroutine(coroutine)

    async def stopped_log(self, daemon: Daemon) -> list[str]:
        """Stop C{daemon} as systemd does; its whole log, one event a line."""
        self.assertEqual(await daemon.stop("TERM"), -signal.SIGTERM)
        return _lines(self, daemon.output)


class ManholeLogTests(_DaemonLogTestCase):
    def setUp(self):
        super().setUp()
        require(
            bool(shutil.which("ssh") and shutil.which("ssh-keygen")),
            "needs the OpenSSH client: apt-get install openssh-client",
        )
        self.key = os.path.join(self.directory, "operator")
        _keygen(self.key)
        self.stranger = os.path.join(self.directory, "stranger")
        _keygen(self.stranger)
        authorized = os.path.join(self.directory, "authorized_keys")
        shutil.copy(self.key + ".pub", authorized)
        self.daemon = Daemon.ersid(
            self,
            os.path.join(self.directory, "data"),
            *("-m", "tcp:0:interface=127.0.0.1"),
            *("--manhole-authorized-keys", authorized),
        )

    async def ssh_port(self) -> int:
        match = await self.daemon.said(rb"SSH manhole listening on .*port=(\d+)")
        return int(match[1])

    def ssh(self, port: int, key: str, *options: str, command=()) -> Daemon:
        client = Daemon(
            [
                shutil.which("ssh"),
                *("-p", str(port), "-i", key),
                *("-o", "StrictHostKeyChecking=no"),
                *("-o", "UserKnownHostsFile=/dev/null"),
                *("-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"),
                *("-o", "LogLevel=ERROR"),
                *options,
                "operator@127.0.0.1",
                *command,
            ]
        )
        self.addCleanup(client.stop, "KILL")
        return client

    def test_each_manhole_event_is_one_line(self):
        async def check():
            port = await self.ssh_port()
            logged = self.daemon.said

            # Logging in, pressing a key the prompt has no use for (F1),
            # logging out.
            client = self.ssh(port, self.key, "-tt")
            await client.said(rb">>> ")
            client.process.write(b"\x1bOP\x00")
            client.process.write(b"\x04")
            self.assertEqual(await client.ended, 0)
            await logged(rb"Manhole session from 127.0.0.1 ended\n")

            # A key it does not know.
            client = self.ssh(port, self.stranger)
            self.assertEqual(await client.ended, 255)
            await logged(rb"Manhole login refused for operator from 127\.0\.0\.1")
            await logged(rb"Manhole connection from 127.0.0.1 closed before logging in")

            # A client killed in the middle of its session.
            client = self.ssh(port, self.key, "-tt")
            await client.said(rb">>> ")
            await client.stop("KILL")
            await logged(
                rb"Manhole session from 127.0.0.1 ended: the connection closed"
            )

            # What the manhole does not serve: a command, a subsystem, a
            # forwarded port.
            for options, command, said in [
                ([], ["true"], rb"asked to run 'true': refused"),
                (["-s"], ["sftp"], rb"asked the subsystem 'sftp': refused"),
                (["-W", "127.0.0.1:9"], [], rb"channel open failed\): unknown channel"),
            ]:
                client = self.ssh(port, self.key, *options, command=command)
                self.assertEqual(await client.ended, 255)
                await logged(said)

            # Garbage: HTTP, then bytes after an SSH banner.
            for garbage in [
                b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                b"SSH-2.0-OpenSSH_9.6\r\n" + b"\xff" * 64,
            ]:
                await raw_exchange(port, garbage, half_close=True)
            # Both logged before the stop: the client may be done first.
            await logged(
                rb"unknown channel(?s:.*)closed before logging in"
                rb"(?s:.*)closed before logging in"
            )

            lines = await self.stopped_log(self.daemon)
            # Between the start and the stop, what they did and nothing else
            # (but snapshots): Conch's account of each step stays out.
            start = next(
                i for i, line in enumerate(lines) if "SSH manhole listening" in line
            )
            stop = next(i for i, line in enumerate(lines) if "SIGTERM" in line)
            self.assertEqual(
                [
                    line.split("] ", 1)[1]
                    for line in lines[start + 1 : stop]
                    if "[ersid.snapshots" not in line
                ],
                [
                    "Manhole login by operator from 127.0.0.1 (publickey)",
                    "Manhole session from 127.0.0.1 ended",
                    "Manhole login refused for operator from 127.0.0.1 (publickey)",
                    "Manhole connection from 127.0.0.1 closed before logging in",
                    "Manhole login by operator from 127.0.0.1 (publickey)",
                    "Manhole session from 127.0.0.1 ended: the connection closed",
                    *[
                        line
                        for what in ["to run 'true'", "the subsystem 'sftp'", None]
                        for line in [
                            "Manhole login by operator from 127.0.0.1 (publickey)",
                            f"Manhole session from 127.0.0.1 asked {what}: refused "
                            "(the manhole offers a Python prompt only: ssh without "
                            "a command)"
                            if what
                            else "Manhole refused a client's request (channel open "
                            "failed): unknown channel",
                            "Manhole session from 127.0.0.1 ended: the connection "
                            "closed",
                        ]
                    ],
                    "Manhole connection from 127.0.0.1 closed before logging in",
                    "Manhole connection from 127.0.0.1 closed before logging in",
                ],
            )

        return self.run_async(check())

    def test_quieted_conch_classes_log_through_a_class_attribute(self):
        """
        ersid.manhole.server quiets the session channel and the prompt
        through the _log of their subclasses, as it does the transport's.
        """
        for cls in (SSHChannel, RecvLine):
            found = inspect.getattr_static(cls, "_log", None)
            self.assertIsInstance(found, Logger, cls.__name__)


class HTTPDisconnectLogTests(_DaemonLogTestCase):
    def test_clients_gone_mid_request_or_response_log_nothing(self):
        async def check():
            daemon = Daemon.ersid(self, os.path.join(self.directory, "data"))
            url = await daemon.rest_url()
            port = int(url.rsplit(":", 1)[1])
            big = os.urandom(1024 * 1024)
            self.assertEqual((await self.http.put(f"{url}/big", data=big)).code, 201)
            for i in range(200):
                await self.http.put(f"{url}/many/{i:03}", data=big[: 64 * 1024])
            before = len(daemon.output.splitlines())

            # Gone in the middle of a head, and of a body.
            await raw_exchange(port, b"GET /big HTTP/1.1\r\nHo", half_close=True)
            await raw_exchange(
                port,
                b"PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\nabc",
                half_close=True,
            )
            # Reset in the middle of a response: a value's, a listing's
            # (twisted.web's), and a watch stream's.
            for target in [b"/big", b"/_keys?prefix=many/&values=true"]:
                start = await deferToThread(
                    _reset_after_reading,
                    port,
                    b"GET %s HTTP/1.1\r\nHost: a\r\n\r\n" % target,
                )
                self.assertTrue(start.startswith(b"HTTP/1.1 200 OK"), start)
            start = await deferToThread(
                _reset_after_reading,
                port,
                b"GET /_watch?prefix=many/ HTTP/1.1\r\nHost: a\r\n\r\n",
            )
            self.assertTrue(start.startswith(b"HTTP/1.1 200 OK"), start)
            # The watch ends once the daemon has seen its client go.
            while True:
                health = await (await self.http.get(f"{url}/_health")).content()
                if json.loads(health)["watch"]["watchers"] == 0:
                    break

            lines = await self.stopped_log(daemon)
            between = [line for line in lines[before:] if "Dumping" not in line]
            self.assertEqual(
                [
                    line
                    for line in between
                    if re.search(r"#(warn|error|critical)\]", line)
                ],
                [],
            )
            self.assertFalse([line for line in between if "ersid.web" in line], between)

        return self.run_async(check())
