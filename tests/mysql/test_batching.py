"""
The MySQL backend's batched writes: writes that arrive together are one
transaction, yet each is decided as if it ran alone, in arrival order. A
random set of writes sent at once must do exactly what the dict backend
does with them one after the other: the same outcomes, revisions,
refusals, expiries and final store.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import Clock
from twisted.internet.threads import blockingCallFromThread, deferToThread
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from ersid.embedded.memory import DictStorage
from ersid.mysql.storage import MySQLStorage
from ersid.storage import Precondition, PreconditionFailed, WriteResult

from .._helpers import model_settings
from .._mariadb import shared_server

_KEYS = st.sampled_from(["a", "b", "c", "d"])
_CONDITIONS = st.one_of(
    st.none(),
    st.just(Precondition.if_absent()),
    st.just(Precondition(exists=True)),
    st.builds(Precondition.if_version, st.lists(st.integers(1, 12), max_size=2)),
    st.builds(lambda v: Precondition(not_versions=[v]), st.integers(1, 12)),
)
_TTLS = st.one_of(st.none(), st.sampled_from([0.5, 3.0]))
_WRITES = st.one_of(
    st.tuples(st.just("set"), _KEYS, st.binary(max_size=3), _CONDITIONS, _TTLS),
    st.tuples(st.just("delete"), _KEYS, _CONDITIONS),
    st.tuples(st.just("refresh"), _KEYS, st.sampled_from([0.5, 3.0]), _CONDITIONS),
)
_START = 1_700_000_000.0


def _call(storage: Any, write: tuple) -> Deferred:
    kind, key, *rest = write
    if kind == "set":
        value, condition, ttl = rest
        return storage.set(key, value, precondition=condition, ttl=ttl)
    if kind == "delete":
        return storage.delete(key, precondition=rest[0])
    ttl, condition = rest
    return storage.refresh(key, ttl, precondition=condition)


def _outcome(result: Any) -> Any:
    """An outcome the two backends can be compared by."""
    if isinstance(result, Failure):
        result = result.value
    if isinstance(result, WriteResult):
        expires = None if result.expires is None else round(result.expires, 6)
        return ("written", result.version, result.created, expires)
    if isinstance(result, PreconditionFailed):
        current = result.current
        return ("refused", None if current is None else current.version)
    return result


class BatchedWritesTests(TestCase):
    def test_writes_sent_together_do_what_they_do_one_by_one(self):
        @model_settings(40)
        @given(
            st.lists(_WRITES, max_size=8), st.lists(_WRITES, min_size=1, max_size=25)
        )
        def agrees(before: list[tuple], together: list[tuple]) -> None:
            settings = shared_server().fresh_database()
            blockingCallFromThread(
                reactor,
                lambda: Deferred.fromCoroutine(
                    self.compare(settings, before, together)
                ),
            )

        return deferToThread(agrees)

    async def compare(self, settings: Any, before: list, together: list) -> None:
        clock = Clock()
        clock.advance(_START)
        mysql = MySQLStorage(settings, min_connections=1, clock=clock)
        commits = []
        mysql.committed = lambda: commits.append(None)
        model = DictStorage(clock=clock)
        try:
            for write in before:
                for storage in (mysql, model):
                    await _call(storage, write).addErrback(lambda f: f.value)
            clock.advance(1)  # the writes with half a second to live expire
            commits.clear()
            sent = [_call(mysql, write) for write in together]
            got = await DeferredList(sent, consumeErrors=True)
            expected = []
            for write in together:
                expected.append(
                    _outcome(await _call(model, write).addErrback(lambda f: f.value))
                )
            self.assertEqual([_outcome(result) for _, result in got], expected)
            # The first write went alone; all the others, together.
            self.assertLessEqual(len(commits), 2)
            self.assertEqual(await mysql.stats(), await model.stats())
            mine = (await mysql.records()).items
            theirs = (await model.records()).items
            self.assertEqual(
                [
                    (k, r.value, r.version, r.expires and round(r.expires, 6))
                    for k, r in mine
                ],
                [
                    (k, r.value, r.version, r.expires and round(r.expires, 6))
                    for k, r in theirs
                ],
            )
            log = await mysql.change_log(0, 1000)
            self.assertEqual(
                [c.revision for c in log.changes], list(range(1, log.revision + 1))
            )
        finally:
            mysql.disconnect()
