"""
L{ExpiryIndex}: keys handed out once the whole span of their bucket has
passed, a few bytes a key.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import TestCase

from ersid.expiry import ExpiryIndex


def _drain(index: ExpiryIndex, now: float) -> list[str]:
    keys = []
    while (key := index.next_due(now)) is not None:
        keys.append(key)
    return keys


class ExpiryIndexTests(TestCase):
    def test_keys_come_once_their_bucket_has_passed(self):
        index = ExpiryIndex(0.1)
        index.add("a", 100.05)
        index.add("b", 100.25)
        index.add("c/é/\U0001f511", 100.01)
        self.assertEqual(index.pending, 3)
        self.assertEqual(_drain(index, 100.05), [])
        self.assertEqual(sorted(_drain(index, 100.11)), ["a", "c/é/\U0001f511"])
        self.assertEqual(_drain(index, 100.21), [])
        self.assertEqual(_drain(index, 100.31), ["b"])
        self.assertEqual(index.pending, 0)

    def test_buckets_come_in_time_order_and_a_key_may_be_in_several(self):
        index = ExpiryIndex(1)
        for key, expires in [("late", 9.5), ("early", 2.5), ("late", 3.5)]:
            index.add(key, expires)
        self.assertEqual(_drain(index, 100), ["early", "late", "late"])

    @given(
        st.lists(
            st.tuples(
                st.text(st.characters(blacklist_categories=["Cs"]), min_size=1),
                st.floats(1e9, 2e9),
            ),
            max_size=50,
            unique_by=lambda entry: entry[0],
        ),
        st.floats(1e9, 2e9),
    )
    def test_every_key_due_is_handed_out_and_none_early(self, entries, now):
        """Whatever the times, no key comes before it expires, nor a bucket late."""
        index = ExpiryIndex(0.1)
        for key, expires in entries:
            index.add(key, expires)
        handed = set(_drain(index, now))
        self.assertLessEqual({k for k, e in entries if e <= now - 0.1}, handed)
        self.assertLessEqual(handed, {k for k, e in entries if e <= now})
        self.assertEqual(index.pending, len(entries) - len(handed))
