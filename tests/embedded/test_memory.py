"""
L{DictStorage}: the storage contract, and what a store rebuilt at a restart
goes on from.
"""

from twisted.trial.unittest import TestCase

from ersid.embedded.memory import DictStorage
from ersid.embedded.records import PackedRecords
from ersid.storage import Record, StorageUnavailable

from ..storage_contract import ExpiryContractMixin, StorageContractMixin


class DictStorageContractTests(ExpiryContractMixin, StorageContractMixin, TestCase):
    def make_storage(self):
        return DictStorage(clock=self.clock)


class DictStorageTests(TestCase):
    def test_restored_records_keep_their_revision(self):
        """
        A store rebuilt from a snapshot goes on from the snapshot's revision,
        so versions (and ETags) never repeat across a restart.
        """
        storage = DictStorage([("k", Record(b"v", "text/plain", 41))], revision=42)
        written = self.successResultOf(storage.set("other", b"x"))
        self.assertEqual(written.version, 43)
        self.assertEqual(self.successResultOf(storage.keys()).items, ["k", "other"])

    def test_closed_store_refuses_writes_but_reads(self):
        storage = DictStorage([("k", Record(b"v"))])
        storage.close()
        self.failureResultOf(storage.set("k", b"new"), StorageUnavailable)
        self.failureResultOf(storage.delete("k"), StorageUnavailable)
        self.assertEqual(self.successResultOf(storage.get("k")).value, b"v")

    def test_storage_takes_packed_records_as_they_are(self):
        """
        The records a restart loads are not copied, and the store goes on
        from the highest version among them.
        """
        packed = PackedRecords([("old", Record(b"v", version=41))])
        storage = DictStorage(packed, revision=5)
        self.successResultOf(storage.set("new", b"x"))
        self.assertEqual(packed["new"], Record(b"x", version=42))

    def test_content_type_too_long_is_refused(self):
        storage = DictStorage()
        self.failureResultOf(storage.set("k", b"v", "x" * 70_000), ValueError)
        self.assertEqual(self.successResultOf(storage.stats()), (0, 0))
