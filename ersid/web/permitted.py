"""
Listings of only the keys a token may read: under a prefix the token may
not read whole, the prefixes it may read within it
(L{ersid.auth.Grant.readable_under}) are listed one after another.
"""

from __future__ import annotations

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
    keys: list[str] = []
    revisions: list[int] = []
    for part in readable:
        if after is not None and after > part and not after.startswith(part):
            continue  # every key under it comes before the cursor
        found = await storage.keys(part, after, limit - len(keys))
        keys += found.items
        revisions.append(found.revision)
        if len(keys) >= limit:
            break
    return Listing(keys, min(revisions) if revisions else await _revision(storage))


async def readable_records(
    storage: IStorage, prefix: str, readable: tuple[str, ...] | None
) -> Listing[tuple[str, Record]]:
    """Every record under C{prefix} and the C{readable} prefixes, for a watch."""
    if readable is None:
        listing: Listing[tuple[str, Record]] = await storage.records(prefix)
        return listing
    records: list[tuple[str, Record]] = []
    revisions: list[int] = []
    for part in readable:
        found = await storage.records(part)
        records += found.items
        revisions.append(found.revision)
    return Listing(records, min(revisions))


async def _revision(storage: IStorage) -> Any:
    _, revision = await storage.stats()
    return revision
