from twisted.trial.unittest import TestCase

from ersid.memory import DictStorage
from ersid.storage import Record, StorageUnavailable

from .storage_contract import StorageContractMixin


class DictStorageContractTests(StorageContractMixin, TestCase):
    def make_storage(self):
        return DictStorage()


class DictStorageTests(TestCase):
    def test_restored_records_keep_their_revision(self):
        """
        A store rebuilt from a snapshot goes on from the snapshot's revision,
        so versions (and ETags) never repeat across a restart.
        """
        storage = DictStorage([("k", Record(b"v", "text/plain", 41))], revision=42)
        written = self.successResultOf(storage.set("other", b"x"))
        self.assertEqual(written.version, 43)
        self.assertEqual(self.successResultOf(storage.keys()), ["k", "other"])

    def test_closed_store_refuses_writes_but_reads(self):
        storage = DictStorage([("k", Record(b"v"))])
        storage.close()
        self.failureResultOf(storage.set("k", b"new"), StorageUnavailable)
        self.failureResultOf(storage.delete("k"), StorageUnavailable)
        self.assertEqual(self.successResultOf(storage.get("k")).value, b"v")
