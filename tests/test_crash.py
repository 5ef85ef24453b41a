"""
The crash tests: writers record every write the daemon acknowledged, the
daemon is killed with SIGKILL at a random moment under load, restarted, and
every acknowledged write must be there; and no key past its expiry. Snapshots run every second, so kills
also land during snapshots and journal compactions.

ERSID_CRASH_ROUNDS sets the number of rounds (default 20).
"""

from __future__ import annotations

import itertools
import os
import random
import time

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from ersid.client import Client, KeyNotFound, ServerUnavailable

from ._helpers import Daemon, http, http_with_pool

ROUNDS = int(os.environ.get("ERSID_CRASH_ROUNDS", "20"))
WRITERS = 8


class _Ledger:
    """What the daemon acknowledged, and what was in flight when it died."""

    def __init__(self) -> None:
        self.acknowledged: dict[str, bytes] = {}
        self.counters: dict[str, int] = {}
        self.count = 0


class CrashTests(TestCase):
    timeout = 600

    def run_rounds(self, fsync: str, rounds: int) -> Deferred[None]:
        data_dir = os.path.abspath(self.mktemp())
        chooser = random.Random(f"{fsync}-{rounds}")
        ledger = _Ledger()

        def start() -> Daemon:
            return Daemon.ersid(self, data_dir, "--fsync", fsync, "-i", "1")

        async def writer(client, url: str, number: int, reached: Deferred) -> None:
            counter_key = f"counter/{number}"
            while True:
                key = f"w/{number}/{ledger.count}-{chooser.random():.12f}"
                value = key.encode()
                try:
                    response = await client.put(f"{url}/{key}", data=value)
                    await response.content()
                    next_count = ledger.counters.get(counter_key, 0) + 1
                    counted = await client.put(
                        f"{url}/{counter_key}", data=b"%d" % next_count
                    )
                    await counted.content()
                except Exception:
                    return  # the daemon is gone
                if response.code == 201:
                    ledger.acknowledged[key] = value
                    ledger.count += 1
                    if ledger.count >= reached.kill_at and not reached.called:
                        reached.callback(None)
                if counted.code == 204 or counted.code == 201:
                    ledger.counters[counter_key] = next_count

        async def verify(client, url: str, values_of: list[str]) -> None:
            """
            Every acknowledged key is listed, the values of C{values_of} are
            right, and the counters are where they were left.
            """
            listed: set[str] = set()
            after = None
            while True:
                params = {"limit": "1000", **({"after": after} if after else {})}
                page = await (await client.get(f"{url}/_keys", params=params)).json()
                listed.update(page["keys"])
                after = page["next"]
                if after is None:
                    break
            self.assertEqual(set(ledger.acknowledged) - listed, set(), "lost writes")

            async def check(key: str) -> None:
                response = await client.get(f"{url}/{key}")
                self.assertEqual(await response.content(), ledger.acknowledged[key])

            for start_at in range(0, len(values_of), 200):
                batch = values_of[start_at : start_at + 200]
                await gatherResults([Deferred.fromCoroutine(check(k)) for k in batch])
            for key, acknowledged in ledger.counters.items():
                response = await client.get(f"{url}/{key}")
                found = int(await response.content())
                # The write in flight at the kill may or may not have landed.
                self.assertIn(found, (acknowledged, acknowledged + 1), key)
                ledger.counters[key] = found

        async def run() -> None:
            fresh: list[str] = []
            for round_number in range(rounds + 1):
                daemon = start()
                url = await daemon.rest_url()
                pool = HTTPConnectionPool(reactor, persistent=True)
                client = http_with_pool(pool)
                last_round = round_number == rounds
                await verify(
                    client, url, list(ledger.acknowledged) if last_round else fresh
                )
                if last_round:
                    await pool.closeCachedConnections()
                    await daemon.stop()
                    break
                verified = set(ledger.acknowledged)
                reached: Deferred[None] = Deferred()
                reached.kill_at = ledger.count + chooser.randrange(40, 400)
                writers = [
                    Deferred.fromCoroutine(writer(client, url, n, reached))
                    for n in range(WRITERS)
                ]
                await reached
                await daemon.stop("KILL")
                await gatherResults(writers)
                fresh = [key for key in ledger.acknowledged if key not in verified]
                await pool.closeCachedConnections()
            self.assertGreater(len(ledger.acknowledged), rounds * 40)

        return Deferred.fromCoroutine(run())

    def test_fsync_always_loses_no_acknowledged_write(self):
        return self.run_rounds("always", ROUNDS)

    def test_fsync_everysec_survives_process_kills(self):
        """
        A killed process (not a lost machine) keeps what everysec wrote to
        the OS, so nothing acknowledged is lost here either.
        """
        return self.run_rounds("everysec", max(3, ROUNDS // 4))


class _Expiring:
    """
    A key with a time to live, as its writers know it: it must be there
    until C{lower} (the latest acknowledged write or refresh, sent then,
    plus its TTL), and gone from C{upper} (the latest attempt, answered or
    cut off then, plus its TTL).
    """

    def __init__(self, value: bytes) -> None:
        self.value = value
        self.lower = 0.0
        self.upper = 0.0


def _end_wait(failure, reached: Deferred):
    if not reached.called:
        reached.errback(failure)
    return failure


class ExpiryCrashTests(TestCase):
    """
    SIGKILL while keys are written with short TTLs, refreshed and expiring:
    after each restart no expired key is readable and no live key was lost;
    at the end every expiry is seen, and survives one more restart.
    """

    timeout = 120

    def test_expiry_survives_kills(self):
        data_dir = os.path.abspath(self.mktemp())
        chooser = random.Random("expiry")
        expiring: dict[str, _Expiring] = {}
        lasting: set[str] = set()
        # Lasting keys whose write was sent: made, or perhaps made if cut off.
        uncertain: set[str] = set()

        async def writer(client: Client, number: int, reached: Deferred) -> None:
            for count in itertools.count():
                key = f"t/{number}/{count}"
                ttl = chooser.choice([0.3, 0.6, 1.2])
                entry = expiring.setdefault(key, _Expiring(key.encode()))
                refresh = chooser.choice(
                    [k for k in expiring if k.startswith(f"t/{number}/")]
                )
                # A write replaces a key's expiry, earlier or later (keys
                # are written again after a restart): an acknowledged one
                # sets both bounds; one cut off by the kill may or may not
                # have been made, and widens them.
                sent = time.time()
                pending = (entry, ttl)
                try:
                    await client.set(key, entry.value, ttl=ttl)
                    entry.lower, entry.upper = sent + ttl, time.time() + ttl
                    pending = None
                    uncertain.add(f"l/{number}/{count}")
                    await client.set(f"l/{number}/{count}", b"x")
                    lasting.add(f"l/{number}/{count}")
                    sent = time.time()
                    again = expiring[refresh]
                    pending = (again, 1.2)
                    try:
                        await client.refresh(refresh, 1.2)
                    except KeyNotFound:
                        self.assertGreaterEqual(time.time(), again.lower, refresh)
                    else:
                        again.lower, again.upper = sent + 1.2, time.time() + 1.2
                except ServerUnavailable:
                    if pending is not None:
                        which, seconds = pending
                        which.lower = min(which.lower, sent + seconds)
                        which.upper = max(which.upper, time.time() + seconds)
                    return
                if count >= reached.kill_at and not reached.called:
                    reached.callback(None)

        async def verify(client: Client) -> None:
            for key in lasting:
                self.assertEqual((await client.get(key)).data, b"x")
            for key, entry in expiring.items():
                before = time.time()
                try:
                    value = await client.get(key)
                except KeyNotFound:
                    after = time.time()
                    self.assertGreaterEqual(after, entry.lower, f"{key} lost")
                    continue
                self.assertLess(before, entry.upper, f"{key} read after its expiry")
                self.assertEqual(value.data, entry.value)

        async def run() -> None:
            for _ in range(5):
                daemon = Daemon.ersid(self, data_dir, "-i", "1")
                client = Client(await daemon.rest_url(), reactor)
                await verify(client)
                reached: Deferred[None] = Deferred()
                reached.kill_at = chooser.randrange(20, 120)
                writers = [
                    Deferred.fromCoroutine(writer(client, n, reached)) for n in range(4)
                ]
                for each in writers:  # a writer's failed check ends the wait
                    each.addErrback(_end_wait, reached)
                await reached
                await daemon.stop("KILL")
                await gatherResults(writers)
                await client.close()
            daemon = Daemon.ersid(self, data_dir)
            client = Client(await daemon.rest_url(), reactor)
            await verify(client)
            # Keys written now expire, visibly, and for good: a kill after
            # their expiries brings none of them back.
            health = await (await http().get(f"{client.url}/_health")).json()
            held = {f"t/last/{i}" for i in range(20)}
            for key in held:
                await client.set(key, b"x", ttl=0.5)
            changes = client.watch("t/", since=health["revision"])
            async for event in changes:
                if event.type == "expire":
                    held.discard(event.key)
                    if not held:
                        break
            await changes.aclose()
            await daemon.stop("KILL")
            daemon = Daemon.ersid(self, data_dir)
            url = await daemon.rest_url()
            # Every lasting key, and those whose write a kill cut off may
            # have been made; no key with a TTL (the health's count would
            # include expired keys the first reaping has yet to remove).
            lister = Client(url, reactor)
            listed = set(await lister.list())
            await lister.close()
            self.assertLessEqual(lasting, listed)
            self.assertLessEqual(listed, lasting | uncertain)
            await daemon.stop()

        return Deferred.fromCoroutine(run())
