"""
L{PackedRecords}: records come back as they were stored, in key order,
whatever the writes and deletes, in less memory than a dict's.
"""

import itertools
import random
import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import TestCase

from ersid.embedded.packing import pack_record
from ersid.embedded.records import PackedRecords
from ersid.storage import DEFAULT_CONTENT_TYPE, Record


class PackedRecordsTests(TestCase):
    """
    Records packed into one bytes object each come back exactly as they
    were stored, whatever their content type and value.
    """

    RECORDS = {
        "default": Record(b"v" * 100, version=7),
        "text": Record(b"hello", "text/plain; charset=utf-8", 8),
        "unicode type": Record(b"\x00\xff", "x/\u00e9\U0001f511", 9),
        "empty type": Record(b"v", "", 10),
        "empty value": Record(b"", "text/plain", 11),
        "largest version": Record(b"v", version=2**64 - 1),
    }

    def test_round_trip(self):
        packed = PackedRecords(self.RECORDS)
        self.assertEqual(dict(packed), self.RECORDS)
        self.assertEqual(len(packed), len(self.RECORDS))
        self.assertEqual(packed.highest_version, 2**64 - 1)

    def test_mapping(self):
        packed = PackedRecords()
        self.assertIsNone(packed.get("k"))
        self.assertNotIn("k", packed)
        packed["k"] = Record(b"one", version=3)
        packed["k"] = Record(b"two", version=2)
        self.assertEqual(packed["k"], Record(b"two", version=2))
        self.assertEqual(packed.highest_version, 3)
        del packed["k"]
        self.assertEqual(list(packed), [])
        with self.assertRaises(KeyError):
            packed["k"]


# Few characters, so that keys repeat and prefix one another; a NUL, a lone
# surrogate (the Python API takes any str) and the empty key included.
_KEYS = st.text(alphabet="ab\x00\xff\ud800\U0001f511", max_size=2)


class PackedRecordsMemoryTests(TestCase):
    """
    A million keys of 100 bytes must fit in 260 MB, of which the daemon
    takes some 60 before any data: 200 bytes a key, whatever the order the
    keys come in. (A dict of key strings with a sorted index took 255.)
    """

    def bytes_per_key(self, numbers: list[int]) -> float:
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        before = tracemalloc.get_traced_memory()[0]
        packed = PackedRecords()
        for number in numbers:
            # Each key made here, as a request or a restart makes it.
            packed.put(f"bench/{number:06d}", b"v" * 100, DEFAULT_CONTENT_TYPE, 1)
        return (tracemalloc.get_traced_memory()[0] - before) / len(numbers)

    def test_keys_in_order(self):
        self.assertLess(self.bytes_per_key(list(range(20_000))), 200)

    def test_keys_in_random_order(self):
        numbers = list(range(20_000))
        random.Random(0).shuffle(numbers)
        self.assertLess(self.bytes_per_key(numbers), 200)


class PackedRecordsOrderTests(TestCase):
    """
    Any sequence of writes and deletes leaves the same records, in the
    same order, as a dict sorted afterwards. Blocks hold four keys here, so
    that they split and merge all the time.
    """

    def assertConsistent(self, packed: PackedRecords, model: dict[str, Record]):
        self.assertEqual(list(packed), sorted(model))
        self.assertEqual({key: packed[key] for key in packed}, model)
        self.assertEqual(len(packed), len(model))
        blocks = packed.layout()
        self.assertEqual([key for block in blocks for key in block], sorted(model))
        for block in blocks:
            self.assertTrue(1 <= len(block) <= 4)
        # Deletes merge blocks: a store never gets emptier than half full.
        for block, following in itertools.pairwise(blocks):
            self.assertGreater(len(block) + len(following), 2)

    @settings(max_examples=300, derandomize=True, database=None, deadline=None)
    @given(
        st.lists(st.tuples(st.booleans(), _KEYS), max_size=100),
        st.lists(_KEYS, max_size=3),
    )
    def test_agrees_with_a_sorted_dict(self, operations, starts):
        packed = PackedRecords(block_size=4)
        model: dict[str, Record] = {}
        for version, (is_write, key) in enumerate(operations, 1):
            # Read first: a record kept unpacked must not outlive a change.
            self.assertEqual(packed.get_record(key), model.get(key))
            if is_write:
                record = Record(b"%d" % version, version=version)
                packed[key] = record
                model[key] = record
            else:
                self.assertEqual(packed.pop_packed(key) is not None, key in model)
                model.pop(key, None)
                self.assertNotIn(key, packed)
            self.assertEqual(packed.get_record(key), model.get(key))
            self.assertConsistent(packed, model)
        for start in starts:
            self.assertEqual(
                [key for key, _ in packed.items_from(start)],
                sorted(key for key in model if key >= start),
            )

    def test_deletes_merge_blocks(self):
        model = {f"k{i:02d}": Record(b"v") for i in range(40)}
        packed = PackedRecords(model, block_size=4)
        for i in range(40):
            if i % 4:
                del packed[f"k{i:02d}"], model[f"k{i:02d}"]
        self.assertConsistent(packed, model)

    def test_keys_loaded_in_order_fill_whole_blocks(self):
        records = ((f"k{i:02d}", Record(b"v")) for i in range(10))
        packed = PackedRecords(records, block_size=4)
        self.assertEqual([len(block) for block in packed.layout()], [4, 4, 2])

    def put_pages(self, packed, model, pages):
        """Put each page of keys at once, as a restart loads a snapshot."""
        version = packed.highest_version
        for page in pages:
            records = [
                Record(b"%d" % i, version=version + i) for i in range(1, len(page) + 1)
            ]
            version += len(page)
            packing = [pack_record(r.version, r.content_type, r.value) for r in records]
            packed.put_packed(page, packing, version)
            model.update(zip(page, records, strict=True))
            self.assertConsistent(packed, model)
        self.assertEqual(packed.highest_version, version)

    @settings(max_examples=200, derandomize=True, database=None, deadline=None)
    @given(st.lists(st.lists(_KEYS, max_size=12), max_size=6), st.booleans())
    def test_pages_agree_with_a_sorted_dict(self, pages, ascending):
        """
        Pages of records land as if written one by one, whether their keys
        ascend past every key stored (put in whole blocks) or not.
        """
        if ascending:
            keys = sorted({key for page in pages for key in page})
            pages = [keys[i : i + 5] for i in range(0, len(keys), 5)]
        self.put_pages(PackedRecords(block_size=4), {}, pages)

    def test_pages_loaded_in_order_fill_whole_blocks(self):
        packed = PackedRecords(block_size=4)
        keys = [f"k{i:02d}" for i in range(23)]
        self.put_pages(packed, {}, [keys[i : i + 5] for i in range(0, 23, 5)])
        self.assertEqual([len(block) for block in packed.layout()], [4] * 5 + [3])
