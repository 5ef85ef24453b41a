"""
Locks that free themselves, from the client library and C{ersid lock},
against a real Ersid on loopback whose reaper runs on the reactor. Times
to live are short, and real: the lock's keepalive and the server's expiry
are what is tested.
"""

from __future__ import annotations

import os
import signal
import sys
import time

from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from ersid.client import Client, KeyNotFound, LockLost, LockTimeout
from ersid.client.cli import EXIT_LOCK_TIMEOUT
from ersid.client.running import EXIT_CANNOT_RUN
from ersid.embedded.memory import DictStorage
from ersid.expiry import Reaper
from ersid.storage import Precondition
from ersid.watch import History, Hub
from ersid.web.app import Service
from ersid.web.errors import ApiError

from .._helpers import Daemon, serve


class _LockTestCase(TestCase):
    def setUp(self):
        self.hub = Hub(History(), reactor)
        self.storage = DictStorage(publish=self.hub.publish)
        reaper = Reaper(self.storage.reap, 0.05, reactor, monotonic=False)
        reaper.startService()
        self.addCleanup(reaper.stopService)

        async def start():
            self.url = await serve(self, Service(self.storage, hub=self.hub))
            self.client = self.another_client()

        return Deferred.fromCoroutine(start())

    def another_client(self) -> Client:
        client = Client(self.url, reactor)
        self.addCleanup(client.close)
        return client

    def run_async(self, coroutine) -> Deferred:
        return Deferred.fromCoroutine(coroutine)


class LockTests(_LockTestCase):
    def test_one_holder_at_a_time_and_the_next_when_freed(self):
        async def check():
            first = await self.client.lock("locks/a", ttl=5).acquire()
            other = self.another_client()
            with self.assertRaises(LockTimeout):
                await other.lock("locks/a", ttl=5, timeout=0.2).acquire()
            waiting = other.lock("locks/a", ttl=5, timeout=5).acquire()
            self.assertFalse(waiting.called)
            await first.release()
            second = await waiting
            self.assertGreater(second.token, first.token)
            self.assertEqual(
                (await self.client.get("locks/a")).etag, f'"{second.token}"'
            )
            await second.release()
            with self.assertRaises(KeyNotFound):
                await self.client.get("locks/a")

        return self.run_async(check())

    def test_held_past_its_ttl_while_its_holder_lives(self):
        async def check():
            async with self.client.lock("locks/b", ttl=1.0) as lock:
                await deferLater(reactor, 2.5)
                self.assertTrue(lock.held)
                value = await self.client.get("locks/b")
                self.assertGreater(value.expires, time.time())
            with self.assertRaises(KeyNotFound):
                await self.client.get("locks/b")

        return self.run_async(check())

    def test_a_dead_holders_lock_frees_itself_within_its_ttl(self):
        """
        A holder that stopped refreshing (it died) leaves the key to
        expire; a waiter is woken by the expiry, and takes the lock.
        """

        async def check():
            await self.storage.set(
                "locks/c", b"dead", ttl=0.5, precondition=Precondition.if_absent()
            )
            started = time.monotonic()
            lock = await self.client.lock("locks/c", ttl=5, timeout=5).acquire()
            waited = time.monotonic() - started
            self.assertGreater(waited, 0.4)
            self.assertLess(waited, 1.5)
            await lock.release()

        return self.run_async(check())

    def test_a_lock_taken_from_its_holder_is_lost(self):
        async def check():
            lock = await self.client.lock("locks/d", ttl=0.3).acquire()
            await self.storage.delete("locks/d")
            lost = await lock.lost
            self.assertIsInstance(lost, LockLost)
            self.assertFalse(lock.held)
            await lock.release()  # frees nothing: it is not this holder's

        return self.run_async(check())

    def test_refreshes_refused_on_the_way_end_in_a_lost_lock(self):
        """
        A refresh answered with something unexpected (a proxy's 429, say)
        is tried again; if none succeeds before the lock would expire, the
        lock is lost, said so, rather than silently left to expire.
        """

        async def check():
            lock = await self.client.lock("locks/j", ttl=0.3).acquire()
            refused = ApiError(429, "too_many_requests", "slow down")
            self.patch(self.storage, "refresh", lambda *a, **kw: fail(refused))
            lost = await lock.lost
            self.assertIn("expired", str(lost))
            self.assertFalse(lock.held)
            await lock.release()

        return self.run_async(check())


class LockCommandTests(_LockTestCase):
    def ersid_lock(self, *args: str) -> Daemon:
        command = Daemon(
            [
                sys.executable,
                "-c",
                "from ersid.client.cli import main; main()",
                "lock",
                *args,
            ],
            env={"ERSID_URL": self.url},
        )
        self.addCleanup(command.stop, "KILL")
        return command

    def test_runs_the_command_and_exits_with_its_status(self):
        async def check():
            command = self.ersid_lock(
                "locks/e",
                "--",
                sys.executable,
                "-c",
                "import os, sys; print(os.environ['ERSID_LOCK_TOKEN']); sys.exit(3)",
            )
            self.assertEqual(await command.ended, 3)
            self.assertEqual(command.output, "1\n")
            with self.assertRaises(KeyNotFound):
                await self.client.get("locks/e")  # released

        return self.run_async(check())

    def test_gives_up_at_its_timeout(self):
        async def check():
            lock = await self.client.lock("locks/f").acquire()
            command = self.ersid_lock("locks/f", "--timeout", "0.3", "--", "true")
            self.assertEqual(await command.ended, EXIT_LOCK_TIMEOUT)
            self.assertIn("still held by another", command.output)
            await lock.release()

        return self.run_async(check())

    def test_a_signal_while_waiting_ends_it_without_running_the_command(self):
        async def check():
            lock = await self.client.lock("locks/i").acquire()
            marker = os.path.abspath(self.mktemp())
            waiter = self.ersid_lock("locks/i", "--", "touch", marker)
            while not len(self.hub):  # it watches the lock
                await deferLater(reactor, 0.02)
            waiter.process.signalProcess("TERM")
            self.assertEqual(await waiter.ended, 128 + signal.SIGTERM)
            self.assertFalse(os.path.exists(marker))
            await lock.release()

        return self.run_async(check())

    def test_a_command_that_cannot_run(self):
        async def check():
            command = self.ersid_lock("locks/g", "--", "/no/such/command")
            self.assertEqual(await command.ended, EXIT_CANNOT_RUN)
            with self.assertRaises(KeyNotFound):
                await self.client.get("locks/g")

        return self.run_async(check())

    def test_killed_ersid_lock_frees_the_lock_within_its_ttl(self):
        async def check():
            marker = os.path.abspath(self.mktemp())
            holder = self.ersid_lock(
                "locks/h",
                "--ttl",
                "0.5",
                "--",
                sys.executable,
                "-c",
                # Its output closed, so that the killed holder's pipes close.
                "import os, time\n"
                "os.close(0), os.close(1), os.close(2)\n"
                f"open({marker!r}, 'w').write(str(os.getpid()))\n"
                "time.sleep(60)\n",
            )
            while not os.path.exists(marker) or not open(marker).read():
                await deferLater(reactor, 0.02)
            self.addCleanup(os.kill, int(open(marker).read()), signal.SIGKILL)
            await holder.stop("KILL")
            started = time.monotonic()
            lock = await self.client.lock("locks/h", ttl=5, timeout=5).acquire()
            self.assertLess(time.monotonic() - started, 1.0)
            await lock.release()

        return self.run_async(check())
