"""
Listings of only the keys a token may read: under a prefix the token may
not read whole, the prefixes it may read within it
(L{ersid.auth.Grant.readable_under}) are listed one after another.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ersid.storage import IStorage, Listing, Record

__all__ = ["readable_keys", "readable_records"]


async def readable_keys(
    storage: IStorage,
    prefix: str,
    readable: tuple[str, ...] | None,
    after: str | None,
    limit: int,
) -> Listing[str]:
    """
    At most C{limit} keys under C{prefix} and the C{readable} prefixes
    (C{None}: all of them), after C{after}; the listing's revision is the
    oldest of its parts', from which a watch misses none of their changes.
    """
    if readable is None:
        listing: Listing[str] = await storage.keys(prefix, after, limit)
        return listing
    # Those with a key after the cursor: every key under the others is before it.
    parts = [
        part
        for part in readable
        if after is None or after < part or after.startswith(part)
    ]

    def keys(part: str, found: int) -> Awaitable[Listing[str]]:
        return storage.keys(part, after, limit - found)

    return await _joined(storage, parts, keys, limit)


async def readable_records(
    storage: IStorage, prefix: str, readable: tuple[str, ...] | None
) -> Listing[tuple[str, Record]]:
    """Every record under C{prefix} and the C{readable} prefixes, for a watch."""
    if readable is None:
        listing: Listing[tuple[str, Record]] = await storage.records(prefix)
        return listing
    return await _joined(storage, readable, lambda part, _: storage.records(part))


async def _joined(
    storage: IStorage,
    parts: Sequence[str],
    read: Callable[[str, int], Awaitable[Listing[Any]]],
    limit: int | None = None,
) -> Listing[Any]:
    """The listings of C{parts} one after another, up to C{limit} items."""
    items: list[Any] = []
    revisions = []
    for part in parts:
        found = await read(part, len(items))
        items += found.items
        revisions.append(found.revision)
        if limit is not None and len(items) >= limit:
            break
    if not revisions:
        revisions.append((await storage.stats())[1])
    return Listing(items, min(revisions))
