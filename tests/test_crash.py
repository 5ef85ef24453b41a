"""
The crash test: writers record every write the daemon acknowledged, the
daemon is killed with SIGKILL at a random moment under load, restarted, and
every acknowledged write must be there. Snapshots run every second, so kills
also land during snapshots and journal compactions.

ERSID_CRASH_ROUNDS sets the number of rounds (default 20).
"""

from __future__ import annotations

import os
import random

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from ._helpers import Daemon, http_with_pool

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
