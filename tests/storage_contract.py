"""
The contract every L{IStorage} backend must honour, as a mixin: a backend's
test case mixes it in and provides C{make_storage}.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from ersid.storage import (
    DEFAULT_CONTENT_TYPE,
    MAX_TTL,
    IStorage,
    Precondition,
    PreconditionFailed,
    Record,
)


class StorageContractMixin:
    """
    Tests of the storage contract. Subclasses mix in a trial C{TestCase} and
    define C{make_storage()}, returning a fresh, empty backend or a Deferred
    of one, whose expiry goes by C{self.clock}.
    """

    # A Unix time in 2027, where the store's clock starts.
    START = 1_800_000_000.0

    def make_storage(self) -> IStorage | Deferred[IStorage]:
        raise NotImplementedError

    @property
    def clock(self) -> Clock:
        clock = self.__dict__.get("_clock")
        if clock is None:
            clock = self.__dict__["_clock"] = Clock()
            clock.advance(self.START)
        return clock

    async def storage(self) -> IStorage:
        made = self.make_storage()
        return await made if isinstance(made, Deferred) else made

    def run_async(self, coroutine) -> Deferred:
        return Deferred.fromCoroutine(coroutine)

    def test_provides_interface(self):
        async def check():
            self.assertTrue(verifyObject(IStorage, await self.storage()))

        return self.run_async(check())

    def test_get_missing(self):
        async def check():
            storage = await self.storage()
            self.assertIsNone(await storage.get("nope"))

        return self.run_async(check())

    def test_set_then_get_is_byte_exact(self):
        value = bytes(range(256)) + b"\x00 tail \x00"

        async def check():
            storage = await self.storage()
            result = await storage.set("bin", value, "application/x-raw")
            record = await storage.get("bin")
            self.assertEqual(record, Record(value, "application/x-raw", result.version))

        return self.run_async(check())

    def test_default_content_type(self):
        async def check():
            storage = await self.storage()
            await storage.set("k", b"v")
            self.assertEqual(
                (await storage.get("k")).content_type, DEFAULT_CONTENT_TYPE
            )

        return self.run_async(check())

    def test_created_then_replaced(self):
        async def check():
            storage = await self.storage()
            first = await storage.set("k", b"1")
            second = await storage.set("k", b"2")
            self.assertTrue(first.created)
            self.assertFalse(second.created)
            self.assertEqual((await storage.get("k")).value, b"2")

        return self.run_async(check())

    def test_reads_follow_writes(self):
        """What a read returns is what was last written, read or not since."""

        async def check():
            storage = await self.storage()
            for value in [b"1", b"2", None, b"3"]:
                if value is None:
                    await storage.delete("k")
                else:
                    await storage.set("k", value, "text/plain")
                record = await storage.get("k")
                self.assertEqual(None if record is None else record.value, value)

        return self.run_async(check())

    def test_versions_increase_across_the_store(self):
        async def check():
            storage = await self.storage()
            versions = [
                (await storage.set(key, b"x")).version for key in ["a", "b", "a", "c"]
            ]
            self.assertEqual(versions, sorted(set(versions)))
            _, revision = await storage.stats()
            self.assertEqual(revision, versions[-1])

        return self.run_async(check())

    def test_delete_advances_revision(self):
        async def check():
            storage = await self.storage()
            written = await storage.set("k", b"x")
            self.assertTrue(await storage.delete("k"))
            _, revision = await storage.stats()
            self.assertGreater(revision, written.version)
            self.assertIsNone(await storage.get("k"))

        return self.run_async(check())

    def test_delete_missing(self):
        async def check():
            storage = await self.storage()
            self.assertFalse(await storage.delete("nope"))

        return self.run_async(check())

    def test_create_only(self):
        async def check():
            storage = await self.storage()
            await storage.set("k", b"1", precondition=Precondition.if_absent())
            with self.assertRaises(PreconditionFailed) as raised:
                await storage.set("k", b"2", precondition=Precondition.if_absent())
            self.assertEqual(raised.exception.current.value, b"1")
            self.assertEqual((await storage.get("k")).value, b"1")

        return self.run_async(check())

    def test_compare_and_set(self):
        async def check():
            storage = await self.storage()
            first = await storage.set("k", b"1")
            second = await storage.set(
                "k", b"2", precondition=Precondition.if_version([first.version])
            )
            with self.assertRaises(PreconditionFailed):
                await storage.set(
                    "k", b"3", precondition=Precondition.if_version([first.version])
                )
            record = await storage.get("k")
            self.assertEqual((record.value, record.version), (b"2", second.version))

        return self.run_async(check())

    def test_unless_version(self):
        """HTTP's If-None-Match with ETags: any state but those versions."""

        async def check():
            storage = await self.storage()
            absent = Precondition(not_versions=[1, 2])
            first = await storage.set("k", b"1", precondition=absent)
            with self.assertRaises(PreconditionFailed) as raised:
                await storage.set(
                    "k", b"2", precondition=Precondition(not_versions=[first.version])
                )
            self.assertEqual(raised.exception.current.version, first.version)
            with self.assertRaises(PreconditionFailed):
                await storage.delete(
                    "k", precondition=Precondition(not_versions=[first.version])
                )
            other = Precondition(not_versions=[first.version + 100])
            second = await storage.set("k", b"3", precondition=other)
            self.assertEqual((await storage.get("k")).version, second.version)

        return self.run_async(check())

    def test_compare_and_set_on_missing_key_fails(self):
        async def check():
            storage = await self.storage()
            with self.assertRaises(PreconditionFailed):
                await storage.set("k", b"1", precondition=Precondition.if_version([1]))
            with self.assertRaises(PreconditionFailed):
                await storage.set("k", b"1", precondition=Precondition(exists=True))
            self.assertIsNone(await storage.get("k"))

        return self.run_async(check())

    def test_conditional_delete(self):
        async def check():
            storage = await self.storage()
            written = await storage.set("k", b"1")
            with self.assertRaises(PreconditionFailed):
                await storage.delete(
                    "k", precondition=Precondition.if_version([written.version + 1])
                )
            self.assertIsNotNone(await storage.get("k"))
            self.assertTrue(
                await storage.delete(
                    "k", precondition=Precondition.if_version([written.version])
                )
            )
            self.assertIsNone(await storage.get("k"))

        return self.run_async(check())

    def test_keys_by_prefix_in_order(self):
        async def check():
            storage = await self.storage()
            for key in ["b/2", "a/1", "b/1", "b/10", "c", "b"]:
                await storage.set(key, b"x")
            self.assertEqual((await storage.keys("b/")).items, ["b/1", "b/10", "b/2"])
            self.assertEqual(
                (await storage.keys()).items, ["a/1", "b", "b/1", "b/10", "b/2", "c"]
            )

        return self.run_async(check())

    def test_listings_say_the_revision_they_reflect(self):
        storage = self.make_storage()

        async def check():
            self.assertEqual((await storage.keys()).revision, 0)
            await storage.set("a/1", b"x", "text/plain")
            await storage.set("b", b"y")
            await storage.set("a/2", b"z")
            await storage.delete("b")
            listing = await storage.keys("a/")
            self.assertEqual((listing.items, listing.revision), (["a/1", "a/2"], 4))
            records = await storage.records("a/")
            self.assertEqual(records.revision, 4)
            self.assertEqual(
                [(key, r.value, r.content_type, r.version) for key, r in records.items],
                [
                    ("a/1", b"x", "text/plain", 1),
                    ("a/2", b"z", DEFAULT_CONTENT_TYPE, 3),
                ],
            )

        return self.run_async(check())

    def test_keys_paginate(self):
        async def check():
            storage = await self.storage()
            for i in range(7):
                await storage.set(f"p/{i}", b"x")
            await storage.set("q", b"x")
            first = (await storage.keys("p/", limit=3)).items
            second = (await storage.keys("p/", after=first[-1], limit=3)).items
            third = (await storage.keys("p/", after=second[-1], limit=3)).items
            self.assertEqual(first + second + third, [f"p/{i}" for i in range(7)])
            self.assertEqual((await storage.keys("p/", after="p/6")).items, [])
            self.assertEqual((await storage.keys("", after="p/5")).items, ["p/6", "q"])

        return self.run_async(check())

    def test_keys_are_case_and_space_exact(self):
        async def check():
            storage = await self.storage()
            await storage.set("Key", b"upper")
            await storage.set("key", b"lower")
            await storage.set("key ", b"space")
            self.assertEqual((await storage.get("Key")).value, b"upper")
            self.assertEqual((await storage.get("key")).value, b"lower")
            self.assertEqual((await storage.get("key ")).value, b"space")
            self.assertEqual((await storage.stats())[0], 3)

        return self.run_async(check())

    def test_unicode_keys(self):
        async def check():
            storage = await self.storage()
            await storage.set("clé/ключ/🔑", b"v")
            self.assertEqual((await storage.get("clé/ключ/🔑")).value, b"v")
            self.assertEqual((await storage.keys("clé/")).items, ["clé/ключ/🔑"])

        return self.run_async(check())

    def test_stats_count_keys(self):
        async def check():
            storage = await self.storage()
            await gatherResults([storage.set(f"k{i}", b"x") for i in range(5)])
            await storage.delete("k0")
            count, _ = await storage.stats()
            self.assertEqual(count, 4)

        return self.run_async(check())

    async def _scan_all(self, storage: IStorage, limit: int) -> dict[str, Record]:
        found: dict[str, Record] = {}
        page = await storage.scan(None, limit)
        while True:
            for key, record in page.items:
                self.assertNotIn(key, found)
                found[key] = record
            if page.cursor is None:
                return found
            page = await storage.scan(page.cursor, limit)

    def test_scan_sees_everything(self):
        async def check():
            storage = await self.storage()
            expected = {}
            for i in range(25):
                key = f"s/{i:02d}"
                written = await storage.set(key, b"%d" % i, "text/plain")
                expected[key] = Record(b"%d" % i, "text/plain", written.version)
            self.assertEqual(await self._scan_all(storage, 4), expected)

        return self.run_async(check())

    def test_scan_of_empty_store(self):
        async def check():
            storage = await self.storage()
            self.assertEqual(await self._scan_all(storage, 10), {})

        return self.run_async(check())

    def test_scan_during_writes_sees_what_existed_at_start(self):
        async def check():
            storage = await self.storage()
            for i in range(10):
                await storage.set(f"s/{i}", b"old")
            page = await storage.scan(None, 3)
            seen = dict(page.items)
            await storage.set("s/9", b"new")
            await storage.set("s/new", b"x")
            while page.cursor is not None:
                page = await storage.scan(page.cursor, 3)
                seen.update(page.items)
            self.assertEqual(set(seen) - {"s/new"}, {f"s/{i}" for i in range(10)})

        return self.run_async(check())


class ExpiryContractMixin:
    """
    Keys with a time to live, on every backend: exact to the microsecond
    by the store's clock (C{self.clock}), and removed by C{reap}.
    """

    async def reap(self, storage) -> bool:
        more = storage.reap()
        return await more if isinstance(more, Deferred) else more

    async def reap_all(self, storage) -> None:
        while await self.reap(storage):
            pass

    def test_a_key_is_gone_from_the_instant_it_expires(self):
        async def check():
            storage = await self.storage()
            written = await storage.set("lock", b"me", "text/plain", ttl=10)
            self.assertEqual(written.expires, self.START + 10)
            await storage.set("lock/other", b"x")
            self.clock.advance(9.999999)
            record = await storage.get("lock")
            self.assertEqual(record, Record(b"me", "text/plain", 1, self.START + 10))
            self.assertEqual((await storage.keys("lock")).items, ["lock", "lock/other"])
            self.clock.advance(0.000001)
            self.assertIsNone(await storage.get("lock"))
            self.assertEqual((await storage.keys("lock")).items, ["lock/other"])
            records = await storage.records("lock")
            self.assertEqual([key for key, _ in records.items], ["lock/other"])

        return self.run_async(check())

    def test_a_write_without_ttl_makes_the_key_lasting(self):
        async def check():
            storage = await self.storage()
            await storage.set("k", b"1", ttl=5)
            await storage.set("k", b"2")
            self.clock.advance(3600)
            await self.reap_all(storage)
            self.assertEqual(await storage.get("k"), Record(b"2", version=2))

        return self.run_async(check())

    def test_a_write_to_an_expired_key_expires_it_first(self):
        """
        The expiry takes its own revision, before the write's, which
        creates the key anew: conditions see the expired key as absent.
        """

        async def check():
            storage = await self.storage()
            await storage.set(
                "lock", b"a", ttl=1, precondition=Precondition.if_absent()
            )
            with self.assertRaises(PreconditionFailed):
                await storage.set("lock", b"b", precondition=Precondition.if_absent())
            self.clock.advance(1)
            with self.assertRaises(PreconditionFailed):
                await storage.set(
                    "lock", b"b", precondition=Precondition.if_version([1])
                )
            written = await storage.set(
                "lock", b"b", ttl=1, precondition=Precondition.if_absent()
            )
            self.assertEqual((written.version, written.created), (3, True))
            self.assertEqual(await storage.stats(), (1, 3))

        return self.run_async(check())

    def test_a_delete_of_an_expired_key_finds_none(self):
        async def check():
            storage = await self.storage()
            await storage.set("k", b"v", ttl=1)
            self.clock.advance(2)
            self.assertFalse(await storage.delete("k"))
            with self.assertRaises(PreconditionFailed):
                await storage.delete("k", Precondition.if_version([1]))

        return self.run_async(check())

    def test_refresh_keeps_the_value_and_takes_a_revision(self):
        async def check():
            storage = await self.storage()
            await storage.set("lock", b"me", "text/plain", ttl=10)
            self.clock.advance(8)
            refreshed = await storage.refresh("lock", 10, Precondition.if_version([1]))
            self.assertEqual(refreshed.version, 2)
            self.assertFalse(refreshed.created)
            self.assertEqual(refreshed.expires, self.START + 18)
            with self.assertRaises(PreconditionFailed):
                await storage.refresh("lock", 10, Precondition.if_version([1]))
            self.clock.advance(9)
            record = await storage.get("lock")
            self.assertEqual(record, Record(b"me", "text/plain", 2, self.START + 18))
            self.clock.advance(1)
            self.assertIsNone(await storage.get("lock"))
            self.assertIsNone(await storage.refresh("lock", 10))
            self.assertIsNone(await storage.refresh("never", 10))
            with self.assertRaises(PreconditionFailed):
                await storage.refresh("lock", 10, Precondition.if_version([2]))

        return self.run_async(check())

    def test_refresh_can_give_a_lasting_key_a_ttl(self):
        async def check():
            storage = await self.storage()
            await storage.set("k", b"v")
            await storage.refresh("k", 1)
            self.clock.advance(1)
            self.assertIsNone(await storage.get("k"))

        return self.run_async(check())

    def test_bad_ttls_are_refused_and_change_nothing(self):
        async def check():
            storage = await self.storage()
            for ttl in [0, -1, MAX_TTL * 2]:
                with self.assertRaises(ValueError):
                    await storage.set("k", b"v", ttl=ttl)
                with self.assertRaises(ValueError):
                    await storage.refresh("k", ttl)
            self.assertEqual(await storage.stats(), (0, 0))

        return self.run_async(check())

    def test_reaping_removes_expired_keys_each_with_a_revision(self):
        async def check():
            storage = await self.storage()
            for i in range(5):
                await storage.set(f"short/{i}", b"x", ttl=1 + i)
            await storage.set("long", b"x", ttl=100)
            await storage.set("lasting", b"x")
            self.assertEqual(await storage.stats(), (7, 7))
            # Within a reaper's interval (0.2 s by default) of their expiry.
            self.clock.advance(3.2)
            await self.reap_all(storage)
            self.assertEqual(await storage.stats(), (4, 10))
            self.clock.advance(10)
            await self.reap_all(storage)
            self.assertEqual(await storage.stats(), (2, 12))
            self.assertEqual((await storage.keys()).items, ["lasting", "long"])
            # Nothing more is due: reaping again changes nothing.
            self.assertFalse(await self.reap(storage))
            self.assertEqual(await storage.stats(), (2, 12))

        return self.run_async(check())

    def test_scans_carry_the_expiry(self):
        """Snapshots and backups keep a key's time to live."""

        async def check():
            storage = await self.storage()
            await storage.set("k", b"v", ttl=2.5)
            page = await storage.scan()
            self.assertEqual(
                page.items, [("k", Record(b"v", version=1, expires=self.START + 2.5))]
            )

        return self.run_async(check())
