"""
Watching the store: every acknowledged change is published to the L{Hub},
kept for a while in its L{History}, and handed to the watchers whose prefix
it matches (C{GET /_watch}, see L{ersid.web.watch}).

| module | what it holds |
| --- | --- |
| C{history} | L{Change}, and L{History}: the window of recent changes |
| C{hub} | L{Hub}: publishing, fan-out by prefix, progress, limits |

The dict backend publishes its changes once the journal has them; a MySQL
node publishes what it reads from the database's change log
(L{ersid.mysql.changes}), whichever node made them.
"""

from ersid.watch.history import (
    DEFAULT_HISTORY_BYTES,
    DEFAULT_HISTORY_CHANGES,
    Change,
    History,
    HistoryGone,
)
from ersid.watch.hub import (
    DEFAULT_LAG_BYTES,
    DEFAULT_MAX_WATCHERS,
    DEFAULT_PROGRESS_INTERVAL,
    Hub,
    IWatcher,
    TooManyWatchers,
    WatchedStore,
)

__all__ = [
    "DEFAULT_HISTORY_BYTES",
    "DEFAULT_HISTORY_CHANGES",
    "DEFAULT_LAG_BYTES",
    "DEFAULT_MAX_WATCHERS",
    "DEFAULT_PROGRESS_INTERVAL",
    "Change",
    "History",
    "HistoryGone",
    "Hub",
    "IWatcher",
    "TooManyWatchers",
    "WatchedStore",
]
