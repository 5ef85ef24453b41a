"""
Helpers shared by the tests: raw HTTP over loopback, and waiting for a
child process to say something.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool
from zope.interface import implementer

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def http() -> HTTPClient:
    """A treq client that keeps no connection open after a request."""
    return http_with_pool(HTTPConnectionPool(reactor, persistent=False))


def http_with_pool(pool: HTTPConnectionPool) -> HTTPClient:
    """A treq client using C{pool}."""
    return HTTPClient(Agent(reactor, pool=pool))


def require(condition: bool, reason: str) -> None:
    """
    Fail the calling test with C{reason} unless C{condition}: a test whose
    requirement is missing fails rather than skips, so that no skip is ever
    counted as a pass (C{bin/dev test} installs every requirement).
    """
    if not condition:
        raise AssertionError(f"missing requirement: {reason}")


@implementer(IHalfCloseableProtocol)
class _Collector(Protocol):
    def __init__(self, payload: bytes, finished: Deferred[bytes]) -> None:
        self.payload = payload
        self.received = b""
        self.finished = finished

    def connectionMade(self) -> None:
        self.transport.write(self.payload)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure) -> None:
        self.finished.callback(self.received)

    def readConnectionLost(self) -> None:
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass


async def raw_exchange(port: int, *chunks: bytes, half_close: bool = False) -> bytes:
    """
    Send C{chunks} to a loopback port, one after another (then close the
    sending side if C{half_close}), and return everything received until
    the server closes the connection.
    """
    finished: Deferred[bytes] = Deferred()
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    protocol = await connectProtocol(endpoint, _Collector(chunks[0], finished))
    for chunk in chunks[1:]:
        protocol.transport.write(chunk)
    if half_close:
        protocol.transport.loseWriteConnection()
    return await finished


class _Child(ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.ended: Deferred[int] = Deferred()
        self._waiters: list[tuple[re.Pattern[bytes], Deferred[re.Match[bytes]]]] = []

    def outReceived(self, data: bytes) -> None:
        self.output += data
        for waiter in list(self._waiters):
            match = waiter[0].search(self.output)
            if match:
                self._waiters.remove(waiter)
                waiter[1].callback(match)

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        for _, waiting in self._waiters:
            waiting.errback(AssertionError(f"exited before saying it:\n{self.output}"))
        self._waiters = []
        status = reason.value
        # Like subprocess: the exit code, or minus the signal that ended it.
        self.ended.callback(
            status.exitCode if status.exitCode is not None else -status.signal
        )


class Daemon:
    """
    A child process (usually C{twistd}) run from the checkout, with helpers
    to wait for what it logs and to stop it.
    """

    def __init__(
        self,
        args: list[str],
        env: dict[str, str] | None = None,
        cwd: str = CHECKOUT,
        terminal: bool = False,
    ) -> None:
        self._child = _Child()
        environment = {**os.environ, "PYTHONPATH": CHECKOUT, **(env or {})}
        self.process = reactor.spawnProcess(
            self._child, args[0], args, env=environment, path=cwd, usePTY=terminal
        )
        self.ended = self._child.ended

    @classmethod
    def twistd(cls, *args: str, env: dict[str, str] | None = None) -> Daemon:
        run = "from twisted.scripts.twistd import run; run()"
        return cls([sys.executable, "-c", run, *args], env)

    @classmethod
    def ersid(cls, test, data_dir: str, *args: str, env=None) -> Daemon:
        """
        C{twistd -n ersid} with its own data directory, the REST API on a
        loopback port chosen by the OS and no manhole (later C{args} win),
        killed after C{test}.
        """
        daemon = cls.twistd(
            *("-n", "--pidfile=", "ersid", "-d", data_dir, "-m", "none"),
            *("-p", "tcp:0:interface=127.0.0.1", *args),
            env=env,
        )
        test.addCleanup(daemon.stop, "KILL")
        return daemon

    @property
    def output(self) -> str:
        return self.output_bytes.decode("utf-8", "replace")

    @property
    def output_bytes(self) -> bytes:
        """What it wrote to stdout and stderr, byte for byte."""
        return self._child.output

    def said(self, pattern: bytes) -> Deferred[re.Match[bytes]]:
        match = re.search(pattern, self._child.output)
        if match:
            return succeed(match)
        if self.ended.called:
            return fail(AssertionError(f"exited before saying it:\n{self.output}"))
        waiting: Deferred[re.Match[bytes]] = Deferred()
        self._child._waiters.append((re.compile(pattern), waiting))
        return waiting

    async def rest_url(self) -> str:
        match = await self.said(rb"REST API listening on .*host='([\d.]+)', port=(\d+)")
        return f"http://{match[1].decode()}:{match[2].decode()}"

    async def stop(self, signal: str = "TERM") -> int:
        try:
            self.process.signalProcess(signal)
        except ProcessExitedAlready:
            pass
        return await self.ended


async def serve(test, service) -> str:
    """
    Serve C{service} (an L{ersid.web.Service}) on a loopback port chosen by
    the OS for the duration of C{test}; return its base URL.
    """
    from twisted.internet.endpoints import serverFromString

    from ersid.listening import endpoint_description
    from ersid.web.site import makeSite

    # As the daemon listens: loopback, with its backlog.
    endpoint = serverFromString(reactor, endpoint_description("0"))
    port = await endpoint.listen(makeSite(service))
    test.addCleanup(port.stopListening)
    return f"http://127.0.0.1:{port.getHost().port}"


def captured_log(test) -> list[str]:
    """
    The text of every log event emitted from now until the end of C{test},
    growing as they come.
    """
    from twisted.logger import formatEvent, globalLogPublisher

    messages: list[str] = []

    def observe(event: dict) -> None:
        messages.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    test.addCleanup(globalLogPublisher.removeObserver, observe)
    return messages


def refusal(test, sent: bytes, status: int) -> dict:
    """
    The JSON error of the response in C{sent}, raw bytes from the server,
    after checking that it has C{status} and the connection is closing.
    """
    head, _, body = sent.partition(b"\r\n\r\n")
    test.assertTrue(head.startswith(b"HTTP/1.1 %d " % status), head)
    test.assertIn(b"Content-Type: application/json", head)
    return json.loads(body)


def small_tmpfs(test, directory: str) -> str:
    """
    A 64 KiB tmpfs mounted at C{directory}/small for the duration of
    C{test}, for a disk that fills up; the test fails without root.
    """
    require(
        os.geteuid() == 0 and bool(shutil.which("mount")),
        "needs root to mount a small tmpfs for the disk-full test",
    )
    small = os.path.join(directory, "small")
    os.makedirs(small)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", small], check=True
    )
    test.addCleanup(subprocess.run, ["umount", "-l", small], check=True)
    return small


def model_settings(examples: int):
    """
    Hypothesis settings of the model tests, which run backends from a
    thread: the same examples every run, no deadline, no saved examples.
    """
    from hypothesis import HealthCheck, settings

    return settings(
        max_examples=examples,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
