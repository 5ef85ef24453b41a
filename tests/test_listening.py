"""
The connection budget: clients never take the file descriptors the daemon
keeps for its own files; at the limit new connections wait and idle or
slow ones make room.
"""

from __future__ import annotations

import json
import os
import resource
import sys

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from ersid.listening import ConnectionBudget

from ._helpers import Daemon, captured_log, http


class _Port:
    reading = True

    def stopReading(self) -> None:
        self.reading = False

    def startReading(self) -> None:
        self.reading = True


class _Connection:
    def __init__(self, idle: bool) -> None:
        self.idle = idle
        self.closed = False

    def shed(self) -> bool:
        self.closed = self.closed or self.idle
        return self.idle


class ConnectionBudgetTests(TestCase):
    def setUp(self):
        self.clock = Clock()
        self.budget = ConnectionBudget(3, self.clock)
        self.port = _Port()
        self.budget.add_port(self.port)
        self.logged = captured_log(self)

    def test_accepting_stops_at_the_limit_and_resumes_below_it(self):
        busy = [_Connection(idle=False) for _ in range(3)]
        for connection in busy[:2]:
            self.budget.opened(connection)
        self.assertTrue(self.port.reading)
        self.budget.opened(busy[2])
        self.assertFalse(self.port.reading)
        self.assertTrue(any("3 connections open" in m for m in self.logged))
        self.budget.closed(busy[0])
        self.assertTrue(self.port.reading)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_connections_not_in_use_make_room_every_second(self):
        busy = [_Connection(idle=False), _Connection(idle=False)]
        for connection in busy:
            self.budget.opened(connection)
        later = _Connection(idle=False)
        self.budget.opened(later)
        self.assertFalse(any(c.closed for c in [*busy, later]))
        later.idle = True
        self.clock.advance(1)
        self.assertTrue(later.closed)
        self.assertFalse(any(c.closed for c in busy))

    def test_uncounted_connections_count_but_are_never_shed(self):
        for _ in range(3):
            self.budget.opened(None)
        self.assertFalse(self.port.reading)
        self.clock.advance(5)
        self.budget.closed(None)
        self.assertTrue(self.port.reading)

    def test_limit_leaves_a_reserve_below_the_open_file_limit(self):
        budget = ConnectionBudget.of_this_process(self.clock)
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.assertEqual(budget.limit, soft - 64)


class DescriptorExhaustionTests(TestCase):
    """
    A daemon allowed 120 open files, flooded by 100 connections sending
    their headers a byte at a time (slowloris): new clients still get in,
    writes and snapshots still work, nothing runs out of descriptors.
    """

    timeout = 120

    def test_a_flood_of_slow_connections_leaves_room_for_the_rest(self):
        data_dir = os.path.abspath(self.mktemp())
        command = (
            "import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (120, 120)); "
            "from twisted.scripts.twistd import run; run()"
        )
        daemon = Daemon(
            [
                sys.executable,
                "-c",
                command,
                *("-n", "--pidfile=", "ersid", "-d", data_dir, "-m", "none"),
                *("-p", "tcp:0:interface=127.0.0.1", "-i", "1", "--fsync", "always"),
            ]
        )
        self.addCleanup(daemon.stop, "KILL")
        client = http()

        async def check():
            url = await daemon.rest_url()
            port = int(url.rsplit(":", 1)[1])
            endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=60)
            flood = []
            for _ in range(100):
                connecting = connectProtocol(endpoint, Protocol())
                connecting.addCallback(
                    lambda p: p.transport.write(b"GET /k HTTP/1.1\r\nHo") or p
                )
                flood.append(connecting)
            await daemon.said(rb"connections open, the most the limit of open files")
            response = await client.put(f"{url}/written", data=b"during the flood")
            self.assertEqual(response.code, 201)
            await response.content()
            await daemon.said(rb"Dumping 1 keys")
            health = json.loads(await (await client.get(f"{url}/_health")).content())
            self.assertEqual(health["status"], "ok", health)
            for connecting in flood:
                (await connecting).transport.abortConnection()
            self.assertNotIn("Too many open files", daemon.output)
            self.assertNotIn("Traceback", daemon.output)

        return Deferred.fromCoroutine(check())
