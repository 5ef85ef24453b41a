"""
A grant's decisions against their definition, for prefixes and keys that
Hypothesis makes of characters chosen to confuse: the longest matching
prefix decides a write, any prefix allows a read, and the prefixes a
listing is split into cover exactly the readable keys.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import TestCase

from ersid.auth import ANYONE, Grant, NotPermitted

from .._helpers import model_settings

# Few characters, so that prefixes and keys often share beginnings; "/"
# and "%2F" that a path might confuse, a letter with a combining look-alike.
_TEXT = st.lists(
    st.sampled_from(["a", "b", "/", "%", "2", "F", "\u00e9", "e\u0301"]), max_size=5
).map("".join)
_RULES = st.lists(st.tuples(_TEXT, st.booleans()), max_size=5)


def _grant(rules: list[tuple[str, bool]]) -> Grant:
    return Grant(
        "t",
        read=[prefix for prefix, writes in rules if not writes],
        write=[prefix for prefix, writes in rules if writes],
    )


def _may_write(rules: list[tuple[str, bool]], key: str) -> bool:
    """
    The definition: of the prefixes of C{key}, the longest decides; write
    wins a tie.
    """
    matching = [
        (len(prefix), writes) for prefix, writes in rules if key.startswith(prefix)
    ]
    return bool(matching) and max(matching)[1]


class GrantTests(TestCase):
    @model_settings(500)
    @given(_RULES, _TEXT)
    def test_decisions(self, rules, key):
        grant = _grant(rules)
        may_read = any(key.startswith(prefix) for prefix, _ in rules)
        self.assertEqual(grant.may_read(key), may_read)
        self.assertEqual(grant.may_write(key), _may_write(rules, key))
        for write, allowed in ((False, may_read), (True, _may_write(rules, key))):
            if allowed:
                grant.require(key, write)
            else:
                self.assertRaises(NotPermitted, grant.require, key, write)

    @model_settings(500)
    @given(_RULES, _TEXT, st.lists(_TEXT, max_size=8))
    def test_readable_under_covers_exactly_the_readable_keys(
        self, rules, prefix, tails
    ):
        grant = _grant(rules)
        readable = grant.readable_under(prefix)
        keys = [prefix + tail for tail in tails] + [
            rule + tail for rule, _ in rules for tail in tails
        ]
        for key in keys:
            if not key.startswith(prefix):
                continue
            covered = readable is None or any(key.startswith(p) for p in readable)
            self.assertEqual(covered, grant.may_read(key), key)
        if readable is not None:
            self.assertEqual(list(readable), sorted(readable))
            for first in readable:
                self.assertTrue(first.startswith(prefix))
                self.assertEqual([p for p in readable if p.startswith(first)], [first])

    def test_longest_prefix_decides(self):
        grant = Grant("t", read=["config/"], write=["", "config/mine/"])
        self.assertTrue(grant.may_write("app/x"))
        self.assertFalse(grant.may_write("config/x"))
        self.assertTrue(grant.may_write("config/mine/x"))
        self.assertTrue(grant.may_read("config/x"))

    def test_admin_and_anyone(self):
        for grant in (Grant("root", admin=True), ANYONE):
            self.assertTrue(grant.may_write("any"))
            self.assertIsNone(grant.readable_under("x/"))

    def test_metrics_need_the_permission_or_admin(self):
        Grant("prom", metrics=True).require_metrics()
        Grant("root", admin=True).require_metrics()
        ANYONE.require_metrics()
        self.assertRaises(NotPermitted, Grant("t", write=[""]).require_metrics)
        self.assertFalse(Grant("prom", metrics=True).may_read("any"))

    def test_nothing_readable_under_a_prefix(self):
        grant = Grant("t", read=["app/"])
        self.assertRaises(NotPermitted, grant.require_some, "config/")
        self.assertEqual(grant.require_some(""), ("app/",))
        self.assertIsNone(grant.require_some("app/x"))

    def test_revoking_ends_the_watches(self):
        ended = []

        class Watch:
            def revoke(self, reason):
                ended.append(reason)

        grant = Grant("t", read=[""])
        watches = [Watch(), Watch()]
        for watch in watches:
            grant.follow(watch)
        grant.revoke("gone")
        self.assertTrue(grant.revoked)
        self.assertEqual(ended, ["gone", "gone"])
