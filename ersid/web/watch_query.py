"""
What a watch request asks (L{WatchQuery}, from its query and
C{Last-Event-ID}), and whether the hub can serve it: the checks and errors
that the stream and the long poll share.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator

import attrs
from twisted.web.iweb import IRequest

from ersid.watch.history import Batch, Change, HistoryGone
from ersid.watch.hub import Hub, IWatcher, TooManyWatchers
from ersid.web.errors import ApiError
from ersid.web.parsing import query_text

__all__ = [
    "MAX_WAIT",
    "Readable",
    "WatchQuery",
    "admit",
    "check_since",
    "gone",
    "parse_watch",
]

# The longest long poll, under the 60 s after which proxies give up.
MAX_WAIT = 55.0

_WHOLE_NUMBER = re.compile(r"[0-9]{1,19}")
_SECONDS = re.compile(r"[0-9]{1,6}(\.[0-9]{1,6})?")


@attrs.frozen
class WatchQuery:
    """A watch request: its prefix, where it starts, and what it wants."""

    prefix: str
    since: int | None
    resuming: bool
    values: bool
    initial: bool
    wait: float | None


@attrs.frozen
class Readable:
    """
    Which changes a watcher may tell its client of: those to keys its
    token may read (C{visible}); all, if C{visible} is C{None}.
    """

    visible: Callable[[str], bool] | None = None

    def batch(self, batch: Batch) -> Batch | None:
        """C{batch}, or a batch of its readable changes; C{None} if none is."""
        visible = self.visible
        if visible is None:
            return batch
        changes = [change for change in batch.changes if visible(change.key)]
        if not changes:
            return None
        return batch if len(changes) == len(batch.changes) else Batch(changes)

    def changes(self, changes: Iterable[Change]) -> Iterator[Change]:
        """The readable ones of C{changes}."""
        visible = self.visible
        if visible is None:
            return iter(changes)
        return (change for change in changes if visible(change.key))


def parse_watch(request: IRequest) -> WatchQuery:
    """
    @raise ApiError: 400, for a query that is not one.
    """
    prefix = query_text(request, "prefix") or ""
    since = _revision(query_text(request, "since"), "since")
    last_id = request.getHeader(b"last-event-id")
    resuming = last_id is not None
    if resuming:
        # A browser reconnects to the same URL: what it saw last wins.
        since = _revision(last_id.decode("latin-1"), "Last-Event-ID")
    values, initial = _flag(request, "values"), _flag(request, "initial")
    wait_text = query_text(request, "wait")
    wait = None
    if wait_text is not None:
        if not _SECONDS.fullmatch(wait_text):
            raise ApiError(400, "bad_query", "wait must be a number of seconds")
        wait = min(float(wait_text), MAX_WAIT)
    if initial and (wait is not None or (since is not None and not resuming)):
        raise ApiError(
            400, "bad_query", "initial is for a stream without since or wait"
        )
    return WatchQuery(prefix, since, resuming, values, initial, wait)


def _revision(text: str | None, name: str) -> int | None:
    if text is None:
        return None
    if not _WHOLE_NUMBER.fullmatch(text):
        raise ApiError(400, "bad_query", f"{name} must be a revision, a whole number")
    return int(text)


def _flag(request: IRequest, name: str) -> bool:
    text = query_text(request, name)
    if text in (None, "0", "false"):
        return False
    if text in ("", "1", "true"):
        return True
    raise ApiError(400, "bad_query", f"{name} must be 1 or 0")


def check_since(hub: Hub, since: int) -> None:
    """
    @raise HistoryGone: unless the changes after C{since} can be had: some
        are no longer kept, or C{since} is past the store's revision (the
        changes up to it were lost in a crash, and their revisions are
        taken again by other writes).
    """
    history = hub.history
    history.check(since)
    if hub.exact and since > history.revision:
        raise HistoryGone(since, history.floor, history.revision)


def gone(error: HistoryGone) -> ApiError:
    """The 410 of C{error}, naming the oldest revision and the current one."""
    return ApiError(
        410,
        "history_gone",
        str(error),
        details={"oldest": error.oldest, "revision": error.revision},
    )


def admit(hub: Hub, watcher: IWatcher, since: int) -> None:
    """Check that a watch from C{since} can be served, and add C{watcher}."""
    if not hub.ready:
        raise ApiError(
            503,
            "unavailable",
            "the change log has not been read yet",
            headers={b"Retry-After": b"1"},
        )
    try:
        check_since(hub, since)
        hub.add(watcher)
    except HistoryGone as e:
        raise gone(e) from None
    except TooManyWatchers as e:
        raise ApiError(
            503, "too_many_watchers", str(e), {b"Retry-After": b"5"}
        ) from None
