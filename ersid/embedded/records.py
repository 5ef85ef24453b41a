"""
L{PackedRecords}: the dict backend's records, in key order, held in about
170 bytes a key where a dict of key and value objects needs 250.

Every Python object costs some 50 bytes before its data, and a dict slot 20
to 30 more, so a dict of one key object and one value object per key spends
more on overhead than on 100-byte values. Here keys live many to a block:
one bytes object of entries C{0xFF key 0xFE index}, the key in UTF-8 (which
never uses bytes C{0xFE} and C{0xFF}) and the index one byte, beside the
list of the keys' records, each packed into one bytes object (see
L{ersid.embedded.packing}). A lookup bisects the blocks' first keys, then searches the
block's bytes for C{0xFF key 0xFE}, both in C.
"""

from __future__ import annotations

import operator
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from itertools import chain, repeat

from ersid.embedded.packing import pack_record, unpack_record
from ersid.storage import Record

__all__ = ["BLOCK_SIZE", "PackedRecords"]

# Keys in a block, at most (below 0xFE: an index is one byte). Every lookup
# searches a whole block and every new key rewrites one, but each block
# costs some 250 bytes.
BLOCK_SIZE = 32
_KEY_TERMINATORS = [b"\xfe%c" % index for index in range(BLOCK_SIZE)]


# The most records kept unpacked, and the largest packed size of one.
_UNPACKED_MOST = 1024
_UNPACKED_BYTES = 4096


def _encode(key: str) -> bytes:
    # surrogatepass: any str can be a key here; what may be stored is for
    # the layers above to say.
    return key.encode("utf-8", "surrogatepass")


def _decode(encoded: bytes) -> str:
    return encoded.decode("utf-8", "surrogatepass")


def _joined(keys: list[bytes]) -> bytes:
    """The entries of a block holding C{keys}."""
    parts = zip(repeat(b"\xff"), keys, _KEY_TERMINATORS, strict=False)
    return b"".join(chain.from_iterable(parts))


class _Block:
    """Keys in order, as entries (see the module's docstring), and their records."""

    __slots__ = ("entries", "records")

    def __init__(self, keys: list[bytes], records: list[bytes]) -> None:
        self.entries = _joined(keys)
        self.records = records

    def index_of(self, encoded: bytes) -> int:
        """The index of an encoded key, or -1 if the block does not hold it."""
        needle = b"\xff%s\xfe" % encoded
        offset = self.entries.find(needle)
        return -1 if offset < 0 else self.entries[offset + len(needle)]

    def key_list(self) -> list[bytes]:
        """The block's keys, encoded, in order."""
        return [entry[:-2] for entry in self.entries.split(b"\xff")[1:]]

    def append(self, encoded: bytes, packed: bytes) -> None:
        """Add a key greater than the block's others."""
        self.entries += b"\xff%s%s" % (encoded, _KEY_TERMINATORS[len(self.records)])
        self.records.append(packed)


class PackedRecords(MutableMapping[str, Record]):
    """
    Records by key, packed, in key order: iteration and L{items_from} go
    from the least key up.

    @ivar bytes: the bytes of the packed records held, for C{/_metrics}.
    @ivar highest_version: the highest version stored through this mapping
        (a L{DictStorage} given it writes past it), which the store's
        revision must not fall below.
    @param block_size: keys in a block, at most L{BLOCK_SIZE}; the tests
        use small blocks, so that they split and merge all the time.
    """

    def __init__(
        self,
        records: Mapping[str, Record] | Iterable[tuple[str, Record]] = (),
        block_size: int = BLOCK_SIZE,
    ) -> None:
        assert 2 <= block_size <= BLOCK_SIZE
        self._block_size = block_size
        self._firsts: list[str] = []
        self._blocks: list[_Block] = []
        self._count = 0
        self.bytes = 0
        self._greatest: str | None = None
        # Records read lately, unpacked (small ones, a bounded number): the
        # keys read most are read without unpacking again.
        self._unpacked: dict[str, Record] = {}
        self.highest_version = 0
        self.update(records)

    def get_record(self, key: str) -> Record | None:
        """The key's record, or C{None}."""
        record = self._unpacked.get(key)
        if record is None:
            packed = self.get_packed(key)
            if packed is None:
                return None
            record = unpack_record(packed)
            if len(packed) <= _UNPACKED_BYTES:
                if len(self._unpacked) >= _UNPACKED_MOST:
                    self._unpacked.clear()
                self._unpacked[key] = record
        return record

    def get_packed(self, key: str) -> bytes | None:
        """The key's record as L{pack_record} packed it, or C{None}."""
        # The hottest code in Ersid: _Block.index_of inlined.
        i = bisect_right(self._firsts, key) - 1
        if i < 0:
            return None
        block = self._blocks[i]
        needle = b"\xff%s\xfe" % key.encode("utf-8", "surrogatepass")
        offset = block.entries.find(needle)
        if offset < 0:
            return None
        return block.records[block.entries[offset + len(needle)]]

    def swap(self, key: str, packed: bytes) -> bytes | None:
        """
        Store a packed record under C{key}; return the one it replaces, or
        C{None} if the key is new.
        """
        self._unpacked.pop(key, None)
        self.bytes += len(packed)
        greatest = self._greatest
        if greatest is None or key > greatest:
            self._append(key, packed)
            return None
        encoded = _encode(key)
        i = bisect_right(self._firsts, key) - 1
        if i < 0:
            i = 0
            self._firsts[0] = key
        else:
            block = self._blocks[i]
            index = block.index_of(encoded)
            if index >= 0:
                previous = block.records[index]
                block.records[index] = packed
                self.bytes -= len(previous)
                return previous
        self._insert(i, encoded, packed)
        return None

    def _append(self, key: str, packed: bytes) -> None:
        """Add a key greater than any other: a restart loads keys in order."""
        self._count += 1
        self._greatest = key
        if self._blocks and len(self._blocks[-1].records) < self._block_size:
            self._blocks[-1].append(_encode(key), packed)
        else:
            self._firsts.append(key)
            self._blocks.append(_Block([_encode(key)], [packed]))

    def _all_after_greatest(self, keys: list[str]) -> bool:
        """Do C{keys} ascend, from beyond the greatest key stored?"""
        greatest = self._greatest
        return (greatest is None or keys[0] > greatest) and all(
            map(operator.lt, keys, keys[1:])
        )

    def _append_blocks(self, keys: list[str], packed: list[bytes]) -> None:
        """L{_append} for many keys: fill the last block, then add whole ones."""
        for key in keys if self._unpacked else ():
            self._unpacked.pop(key, None)
        self._count += len(keys)
        self.bytes += sum(map(len, packed))
        self._greatest = keys[-1]
        encoded = [_encode(key) for key in keys]
        start = 0
        if self._blocks:
            last = self._blocks[-1]
            start = self._block_size - len(last.records)
            last.entries = _joined(last.key_list() + encoded[:start])
            last.records += packed[:start]
        for i in range(start, len(keys), self._block_size):
            end = i + self._block_size
            self._firsts.append(keys[i])
            self._blocks.append(_Block(encoded[i:end], packed[i:end]))

    def _insert(self, i: int, encoded: bytes, packed: bytes) -> None:
        """Add a new key to block C{i}, splitting the block if it is full."""
        self._count += 1
        block = self._blocks[i]
        keys = block.key_list()
        index = bisect_left(keys, encoded)
        keys.insert(index, encoded)
        block.records.insert(index, packed)
        if len(keys) <= self._block_size:
            block.entries = _joined(keys)
            return
        half = len(keys) // 2
        block.entries = _joined(keys[:half])
        self._blocks.insert(i + 1, _Block(keys[half:], block.records[half:]))
        self._firsts.insert(i + 1, _decode(keys[half]))
        del block.records[half:]

    def pop_packed(self, key: str) -> bytes | None:
        """Remove C{key}; return its packed record, or C{None} if it had none."""
        self._unpacked.pop(key, None)
        i = bisect_right(self._firsts, key) - 1
        if i < 0:
            return None
        block = self._blocks[i]
        index = block.index_of(_encode(key))
        if index < 0:
            return None
        self._count -= 1
        previous = block.records.pop(index)
        self.bytes -= len(previous)
        keys = block.key_list()
        del keys[index]
        if not keys:
            del self._blocks[i], self._firsts[i]
        else:
            block.entries = _joined(keys)
            self._firsts[i] = _decode(keys[0])
            self._merge_if_small(i)
        if key == self._greatest:
            self._greatest = self._last_key()
        return previous

    def _merge_if_small(self, i: int) -> None:
        """Join block C{i} with a neighbour if the two fit in half a block."""
        for first in (i, i - 1):
            if first < 0 or first + 1 == len(self._blocks):
                continue
            block, following = self._blocks[first], self._blocks[first + 1]
            if len(block.records) + len(following.records) <= self._block_size // 2:
                block.entries = _joined(block.key_list() + following.key_list())
                block.records += following.records
                del self._blocks[first + 1], self._firsts[first + 1]
                return

    def _last_key(self) -> str | None:
        if not self._blocks:
            return None
        return _decode(self._blocks[-1].key_list()[-1])

    def items_from(self, start: str = "") -> Iterator[tuple[str, bytes]]:
        """
        Keys from C{start} on, in order, with their packed records. The
        mapping must not change until the iteration ends.
        """
        encoded_start = _encode(start)
        first = max(bisect_right(self._firsts, start) - 1, 0)
        for i in range(first, len(self._blocks)):
            block = self._blocks[i]
            for encoded, packed in zip(block.key_list(), block.records, strict=True):
                if encoded >= encoded_start:
                    yield _decode(encoded), packed

    def layout(self) -> list[list[str]]:
        """
        The keys of each block, in order: how the mapping lies in memory.

        @raise AssertionError: if its index of blocks disagrees with them.
        """
        blocks = [[_decode(key) for key in block.key_list()] for block in self._blocks]
        assert self._firsts == [keys[0] for keys in blocks]
        for block, keys in zip(self._blocks, blocks, strict=True):
            assert 1 <= len(keys) == len(block.records) <= self._block_size
        assert self._count == sum(map(len, blocks))
        assert self.bytes == sum(len(r) for b in self._blocks for r in b.records)
        assert self._greatest == (blocks[-1][-1] if blocks else None)
        return blocks

    def put(
        self,
        key: str,
        value: bytes,
        content_type: str,
        version: int,
        expires: float | None = None,
    ) -> None:
        """
        Store a record given as its parts.

        @raise ValueError: if the content type cannot be packed.
        @raise struct.error: if the version is not a 64-bit unsigned number.
        """
        self.swap(key, pack_record(version, content_type, value, expires))
        if version > self.highest_version:
            self.highest_version = version

    def put_packed(
        self, keys: list[str], packed: list[bytes], highest_version: int
    ) -> None:
        """
        Store records packed by L{pack_record} under C{keys}, the highest of
        their versions C{highest_version}. Keys that ascend past every key
        stored, as a restart loads a snapshot, go in whole blocks at once.
        """
        if keys and self._all_after_greatest(keys):
            self._append_blocks(keys, packed)
        else:
            for key, record in zip(keys, packed, strict=True):
                self.swap(key, record)
        self.highest_version = max(self.highest_version, highest_version)

    def __getitem__(self, key: str) -> Record:
        packed = self.get_packed(key)
        if packed is None:
            raise KeyError(key)
        return unpack_record(packed)

    def __setitem__(self, key: str, record: Record) -> None:
        self.put(key, record.value, record.content_type, record.version, record.expires)

    def __delitem__(self, key: str) -> None:
        if self.pop_packed(key) is None:
            raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get_packed(key) is not None

    def __iter__(self) -> Iterator[str]:
        return (key for key, _ in self.items_from())

    def __len__(self) -> int:
        return self._count
