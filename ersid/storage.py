"""
The storage contract: every backend provides L{IStorage}, whose methods all
return Deferreds, and speaks in L{Record}s and L{Precondition}s.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Generic, TypeVar

import attrs
from twisted.application.service import IService
from zope.interface import Attribute, Interface

__all__ = [
    "DEFAULT_CONTENT_TYPE",
    "MAX_TTL",
    "IImmediateReads",
    "IStorage",
    "Listing",
    "OpenedStorage",
    "Page",
    "Precondition",
    "PreconditionFailed",
    "Record",
    "StorageUnavailable",
    "WriteResult",
]

DEFAULT_CONTENT_TYPE = "application/octet-stream"
# The longest time to live a write may give, in seconds: ten years.
MAX_TTL = 10 * 365.25 * 86400

_Item = TypeVar("_Item")


@attrs.frozen
class Record:
    """
    A stored value with its content type and the store revision that last
    wrote it (etcd's modifiedIndex); the version is what an ETag is made of.
    C{expires}, if not C{None}, is the Unix time, by the store's clock, from
    which the record is gone.
    """

    value: bytes
    # Interned: a million records share a handful of content types.
    content_type: str = attrs.field(default=DEFAULT_CONTENT_TYPE, converter=sys.intern)
    version: int = 0
    expires: float | None = None

    def live(self, now: float) -> bool:
        """Is the record still there at Unix time C{now}?"""
        return self.expires is None or now < self.expires


@attrs.frozen
class WriteResult:
    """
    The outcome of a successful write: the new version, whether the key
    was created rather than replaced, and when it expires (C{None}: never).
    """

    version: int
    created: bool
    expires: float | None = None


@attrs.frozen
class Page:
    """
    One page of a full scan of the store, in no promised order; C{cursor} is
    opaque and C{None} on the last page.
    """

    items: list[tuple[str, Record]]
    cursor: object | None


@attrs.frozen
class Listing(Generic[_Item]):
    """
    Keys, or records, as they were at C{revision}: every change up to it is
    reflected, none after it; a watch from C{revision} brings the rest.
    """

    items: list[_Item]
    revision: int


@attrs.frozen
class Precondition:
    """
    A condition on the current state of a key that a write or delete
    requires, checked atomically with it (a compare-and-set).

    @ivar exists: C{True} if the key must exist, C{False} if it must not,
        C{None} if either will do.
    @ivar versions: if not C{None}, the key's current version must be one of
        these (HTTP's C{If-Match} with ETags).
    @ivar not_versions: if not C{None}, the key's current version, if it
        has one, must be none of these (HTTP's C{If-None-Match} with ETags).
    """

    exists: bool | None = None
    versions: frozenset[int] | None = attrs.field(
        default=None,
        converter=attrs.converters.optional(frozenset),
    )
    not_versions: frozenset[int] | None = attrs.field(
        default=None,
        converter=attrs.converters.optional(frozenset),
    )

    @classmethod
    def if_absent(cls) -> Precondition:
        return cls(exists=False)

    @classmethod
    def if_version(cls, versions: Iterable[int]) -> Precondition:
        return cls(exists=True, versions=frozenset(versions))

    def holds(self, current: Record | None) -> bool:
        """
        Does this condition accept C{current}, the key's record or C{None}?
        """
        if self.exists is not None and self.exists != (current is not None):
            return False
        if self.versions is not None:
            if current is None or current.version not in self.versions:
                return False
        if self.not_versions is not None and current is not None:
            return current.version not in self.not_versions
        return True


class PreconditionFailed(Exception):
    """
    A conditional write or delete did not apply because its L{Precondition}
    does not hold for the key's current state.
    """

    def __init__(self, key: str, current: Record | None) -> None:
        super().__init__(key)
        self.key = key
        self.current = current


class StorageUnavailable(Exception):
    """
    The backend cannot serve requests right now (database down, journal
    disk full); the operation did not take effect and may be retried.
    """


class IStorage(Interface):
    """
    A key-value store whose every operation returns a Deferred.

    Keys are non-empty text; values are bytes. Every successful change
    (set, refresh, delete, expiry) takes the next store-wide revision, a
    strictly increasing integer, and a set record's version is that
    revision.

    A record written with a time to live is gone from the instant it
    expires, by the store's clock: no read, listing or condition sees it,
    though the store removes it (with its own revision, an expiry) a moment
    later; a write to a key whose record has expired first removes it so.
    """

    name = Attribute("Short name of the backend, shown by /_health.")

    def get(key: str):
        """
        @return: Deferred firing with the L{Record} of C{key}, or C{None}.
        """

    def set(
        key: str,
        value: bytes,
        content_type: str = DEFAULT_CONTENT_TYPE,
        precondition: Precondition | None = None,
        ttl: float | None = None,
    ):
        """
        Store C{value} under C{key}, for C{ttl} seconds if given (at most
        L{MAX_TTL}), else for good.

        @return: Deferred firing with a L{WriteResult}, or failing with
            L{PreconditionFailed} and then changing nothing.
        """

    def refresh(key: str, ttl: float, precondition: Precondition | None = None):
        """
        Make C{key} expire C{ttl} seconds from now, keeping its value: a
        write of the same value, which takes a revision and a new version.

        @return: Deferred firing with a L{WriteResult}, or C{None} if there
            is no such key; or failing with L{PreconditionFailed}.
        """

    def delete(key: str, precondition: Precondition | None = None):
        """
        Remove C{key}.

        @return: Deferred firing with C{True} if the key existed and is now
            gone, C{False} if there was no such key; or failing with
            L{PreconditionFailed} and then changing nothing.
        """

    def keys(prefix: str = "", after: str | None = None, limit: int = 100):
        """
        @return: Deferred firing with a L{Listing} of at most C{limit} keys
            that start with C{prefix} and sort after C{after}, in ascending
            code point order.
        """

    def records(prefix: str = ""):
        """
        Every record whose key starts with C{prefix}, read at once, for a
        watch's initial state.

        @return: Deferred firing with a L{Listing} of C{(key, Record)}, in
            key order.
        """

    def reap():
        """
        Remove records that have expired, each with its own revision, for a
        moment (a few milliseconds, or one database transaction): what a
        L{ersid.expiry.Reaper} calls while more are due.

        @return: whether more are due, or a Deferred firing with it.
        """

    def stats():
        """
        @return: Deferred firing with C{(key_count, revision)}; the count
            may include expired keys not yet removed.
        """

    def scan(cursor: object | None = None, limit: int = 1000):
        """
        Read the whole store in pages, for snapshots. Start with C{None} and
        pass each L{Page}'s cursor back until it is C{None}. Changes made
        during a scan may or may not be seen; everything up to the revision
        current when the scan began is. Records that have expired but are
        not yet removed are included, with their expiry: a scan is the
        store at a revision, for snapshots and backups.

        @return: Deferred firing with a L{Page}.
        """

    def close():
        """
        Release the backend's resources.

        @return: Deferred firing when done.
        """


class IImmediateReads(Interface):
    """
    A backend that holds its data in memory and can answer a read at once,
    so that the REST service need not wrap every read in a Deferred.
    """

    def get_now(key: str):
        """
        @return: the L{Record} of C{key}, or C{None}: what L{IStorage.get}
            would fire with.
        """


@attrs.frozen
class OpenedStorage:
    """
    What opening a backend gives the daemon: the storage, ready to serve;
    the services that keep it (a journal, snapshots), to run as long as
    the daemon; the facts about them that C{/_health} shows; what they
    count for C{/_metrics} (C{prometheus_client} collectors); and its
    online backups, for C{/_snapshot} (an L{ersid.snapshots.IBackups}).
    """

    storage: IStorage
    services: Sequence[IService] = ()
    health: Callable[[], dict[str, Any]] = dict
    collectors: Sequence[Any] = ()
    backups: Any = None
