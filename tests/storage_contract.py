"""
The contract every L{IStorage} backend must honour, as a mixin: a backend's
test case mixes it in and provides C{make_storage}.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, gatherResults
from zope.interface.verify import verifyObject

from ersid.storage import (
    DEFAULT_CONTENT_TYPE,
    IStorage,
    Precondition,
    PreconditionFailed,
    Record,
)


class StorageContractMixin:
    """
    Tests of the storage contract. Subclasses mix in a trial C{TestCase} and
    define C{make_storage()}, returning a fresh, empty backend or a Deferred
    of one.
    """

    def make_storage(self) -> IStorage | Deferred[IStorage]:
        raise NotImplementedError

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
