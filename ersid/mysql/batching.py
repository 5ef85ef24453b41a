"""
L{Batches}: requests that arrive while earlier batches are under way wait
and go together in the next one, so that one hand-off to a pool thread,
one round trip to the database and (for writes) one commit serve them all.
Under light load a batch is one request, sent at once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from twisted.internet.defer import Deferred, succeed

__all__ = ["Batches"]

_Item = TypeVar("_Item")
_Result = TypeVar("_Result")


class Batches(Generic[_Item, _Result]):
    """
    Items run by C{run}, a list at a time, at most C{in_flight} lists at
    once; each list of at most C{most} items and C{most_bytes} by C{size}
    (but at least one item). C{run} gives each item's result, or the
    exception that item fails with; if C{run} fails, every item does.
    """

    def __init__(
        self,
        run: Callable[[list[_Item]], Awaitable[Sequence[_Result | Exception]]],
        *,
        in_flight: int,
        most: int,
        most_bytes: int,
        size: Callable[[_Item], int],
    ) -> None:
        self._run = run
        self._in_flight = in_flight
        self._most = most
        self._most_bytes = most_bytes
        self._size = size
        self._running = 0
        self._waiting: list[tuple[_Item, Deferred[_Result]]] = []
        self._idle: list[Deferred[None]] = []

    def idle(self) -> Deferred[None]:
        """Fires once every item submitted so far has its result."""
        if not self._running and not self._waiting:
            return succeed(None)
        done: Deferred[None] = Deferred()
        self._idle.append(done)
        return done

    def submit(self, item: _Item) -> Deferred[_Result]:
        """C{item}'s result, once the batch it joins has run."""
        done: Deferred[_Result] = Deferred()
        self._waiting.append((item, done))
        if self._running < self._in_flight:
            self._next()
        return done

    def _next(self) -> None:
        size = 0
        count = len(self._waiting)
        for number, (item, _) in enumerate(self._waiting[: self._most], 1):
            size += self._size(item)
            if size > self._most_bytes and number > 1:
                count = number - 1
                break
        else:
            count = min(count, self._most)
        batch, self._waiting = self._waiting[:count], self._waiting[count:]
        self._running += 1
        Deferred.fromCoroutine(self._run_batch(batch))

    async def _run_batch(self, batch: list[tuple[_Item, Deferred[_Result]]]) -> None:
        results: Sequence[_Result | Exception]
        try:
            results = await self._run([item for item, _ in batch])
        except Exception as e:
            results = [e] * len(batch)
        self._running -= 1
        if self._waiting:
            self._next()
        for (_, done), result in zip(batch, results, strict=True):
            if isinstance(result, Exception):
                done.errback(result)
            else:
                done.callback(result)
        if not self._running and not self._waiting:
            idle, self._idle = self._idle, []
            for done in idle:
                done.callback(None)
