"""
Locks that free themselves: a key created only if absent (C{If-None-Match:
*}) with a time to live, refreshed while held (C{PATCH} with C{If-Match}
and C{Ersid-TTL}), deleted when released (C{If-Match} again). A holder that
dies stops refreshing, and the key expires: the lock is free within its
time to live. A waiter watches the key for its removal (a delete or an
expiry) rather than polling.
"""

from __future__ import annotations

import os
import socket
import time
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.task import deferLater

from ersid.client.errors import (
    ConditionFailed,
    HistoryGone,
    KeyNotFound,
    LockLost,
    LockTimeout,
)

if TYPE_CHECKING:
    from ersid.client import Client

__all__ = ["DEFAULT_LOCK_TTL", "Lock", "LockRequest"]

DEFAULT_LOCK_TTL = 10.0
# Refreshes a time to live; and how soon one that failed is tried again.
_REFRESHES_PER_TTL = 3
_RETRY = 0.5
# How long after a held lock's expiry a waiter tries again, at the latest.
_AFTER_EXPIRY = 0.05


def _holder() -> bytes:
    return f"{socket.gethostname()} pid {os.getpid()}".encode()


class Lock:
    """
    A lock held: its C{key}, and C{token}, the store's revision at which it
    was taken, which grows with every new holder (hand it to what the lock
    guards, to fence off a former holder that was paused past its time to
    live). It refreshes itself until L{release}d; C{lost} fires, with a
    L{LockLost}, if it is lost before.
    """

    def __init__(
        self, client: Client, key: str, ttl: float, etag: str, clock: Any
    ) -> None:
        self.client = client
        self.key = key
        self.ttl = ttl
        self.token = int(etag.strip('"'))
        self.lost: Deferred[LockLost] = Deferred()
        self._etag = etag
        self._clock = clock
        self._expires = clock.seconds() + ttl
        self._released = False
        self._keeping = Deferred.fromCoroutine(self._keep())

    @property
    def held(self) -> bool:
        return not self._released and not self.lost.called

    async def _keep(self) -> None:
        delay = self.ttl / _REFRESHES_PER_TTL
        try:
            while True:
                await deferLater(self._clock, delay)
                sent = self._clock.seconds()
                try:
                    self._etag = await self.client.refresh(
                        self.key, self.ttl, if_match=self._etag
                    )
                except (KeyNotFound, ConditionFailed):
                    raise
                except Exception as e:
                    # Unreachable, or refused by a proxy on the way: again,
                    # until the lock would have expired.
                    if self._clock.seconds() >= self._expires:
                        raise LockLost(f"lock {self.key!r} expired: {e}") from None
                    delay = min(_RETRY, max(self._expires - self._clock.seconds(), 0))
                    continue
                self._expires = sent + self.ttl
                delay = self.ttl / _REFRESHES_PER_TTL
        except CancelledError:
            pass
        except (KeyNotFound, ConditionFailed):
            self.lost.callback(LockLost(f"lock {self.key!r} was taken from its holder"))
        except LockLost as e:
            self.lost.callback(e)

    def release(self) -> Deferred[None]:
        """Stop refreshing, and free the lock if it is still this holder's."""
        return Deferred.fromCoroutine(self._release())

    async def _release(self) -> None:
        if self._released:
            return
        self._released = True
        self._keeping.cancel()
        if not self.lost.called:
            try:
                await self.client.delete(self.key, if_match=self._etag)
            except (KeyNotFound, ConditionFailed):
                pass  # expired, or taken: not this holder's to free


class LockRequest:
    """
    What L{Client.lock} returns: C{async with} it to hold the lock for a
    block, or call L{acquire} for a Deferred of the L{Lock}, to release.
    """

    def __init__(
        self, client: Client, key: str, ttl: float, timeout: float | None, clock: Any
    ) -> None:
        self._arguments = (client, key, ttl, timeout, clock)
        self._lock: Lock | None = None

    def acquire(self) -> Deferred[Lock]:
        """
        The lock, once taken.

        @raise LockTimeout: if it is still held by another at the timeout.
        """
        return Deferred.fromCoroutine(_acquire(*self._arguments))

    async def __aenter__(self) -> Lock:
        self._lock = await self.acquire()
        return self._lock

    async def __aexit__(self, *exc_info: Any) -> None:
        assert self._lock is not None
        await self._lock.release()


async def _acquire(
    client: Client,
    key: str,
    ttl: float = DEFAULT_LOCK_TTL,
    timeout: float | None = None,
    clock: Any = None,
) -> Lock:
    deadline = None if timeout is None else clock.seconds() + timeout
    while True:
        taken, etag = await client.create(key, _holder(), ttl)
        if taken:
            return Lock(client, key, ttl, etag, clock)
        wait = None if deadline is None else deadline - clock.seconds()
        if wait is not None and wait <= 0:
            raise LockTimeout(f"lock {key!r} is still held by another")
        # Woken by the key's removal; or, should that event be late, at its
        # expiry, when a create succeeds whether it was removed yet or not.
        try:
            held = await client.get(key)
        except KeyNotFound:
            continue
        if held.expires is not None:
            expiry = max(held.expires - time.time(), 0) + _AFTER_EXPIRY
            wait = expiry if wait is None else min(wait, expiry)
        freed = Deferred.fromCoroutine(_freed(client, key, int(held.etag.strip('"'))))
        if wait is not None:
            freed.addTimeout(wait, clock)
        try:
            await freed
        except TimeoutError:
            pass  # the deadline is checked above, after one more attempt


async def _freed(client: Client, key: str, version: int) -> None:
    """Return once C{key}, held at C{version}, is deleted or expires."""
    changes = client.watch(key, since=version)
    try:
        async for event in changes:
            if event.key == key and event.type != "put":
                return
    except HistoryGone:
        return  # try again: the next attempt tells
    finally:
        await changes.aclose()
