"""
The daemon's log as JSON lines, for log shippers: C{twistd --logger
ersid.logs.json_lines ersid ...} writes one JSON object per event and per
line, to standard output (systemd's journal, under C{--nodaemon}) or, when
C{$ERSID_LOG_FILE} names one, to that file (appended, mode 0600).

Each object is Twisted's own (C{jsonFileLogObserver}: C{log_time},
C{log_namespace}, C{log_format} and the event's fields), with the message
as text in C{text} and the level's name in C{level}, which shippers need
without knowing Twisted's formats.
"""

from __future__ import annotations

import os
import sys
from typing import IO, Any

from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    formatEvent,
    jsonFileLogObserver,
)
from zope.interface import implementer

from ersid.files import open_private

__all__ = ["LOG_FILE_VARIABLE", "JSONLinesObserver", "json_lines"]

LOG_FILE_VARIABLE = "ERSID_LOG_FILE"


@implementer(ILogObserver)
class JSONLinesObserver:
    """
    Write each event as one line of JSON to a file, with its message
    formatted in C{text} and its level's name in C{level}.
    """

    def __init__(self, out: IO[Any]) -> None:
        # No record separator: JSON lines, not RFC 7464's sequences.
        self._observer: FileLogObserver = jsonFileLogObserver(out, recordSeparator="")

    def __call__(self, event: dict[str, Any]) -> None:
        level = event.get("log_level")
        self._observer(
            {
                **event,
                "text": formatEvent(event),
                "level": getattr(level, "name", None),
            }
        )


def json_lines() -> JSONLinesObserver:
    """
    The observer twistd's C{--logger ersid.logs.json_lines} makes: to the
    file C{$ERSID_LOG_FILE} if it is set, else to standard output.
    """
    path = os.environ.get(LOG_FILE_VARIABLE)
    if not path:
        return JSONLinesObserver(sys.stdout)
    try:
        descriptor = open_private(path, os.O_WRONLY | os.O_APPEND, follow=True)
    except OSError as e:
        raise SystemExit(
            f"ersid: cannot open the log file {path} (${LOG_FILE_VARIABLE}): "
            f"{e.strerror}"
        ) from None
    return JSONLinesObserver(open(descriptor, "a", encoding="utf-8"))
