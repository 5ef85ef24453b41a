"""
Why the daemon cannot start, said in one line: every part raises
L{StartupError}, and L{one_line_exit} turns it into the exit status 1 that
C{twistd} users expect, instead of a traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import ParamSpec, TypeVar

__all__ = ["StartupError", "one_line_exit"]

_P = ParamSpec("_P")
_T = TypeVar("_T")


class StartupError(Exception):
    """The daemon cannot start as configured; the message says why and what to do."""


def one_line_exit(starting: Callable[_P, _T]) -> Callable[_P, _T]:
    """
    Decorate a step of the daemon's start so that a L{StartupError} ends the
    process with C{ersid: <why>} on standard error and exit status 1.
    """

    @wraps(starting)
    def start(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return starting(*args, **kwargs)
        except StartupError as e:
            raise SystemExit(f"ersid: {e}") from None

    return start
