"""Files holding secrets must be private to the user running Ersid."""

from __future__ import annotations

import os
import stat

__all__ = ["refuse_if_exposed"]


def refuse_if_exposed(path: str, what: str, error: type[Exception]) -> None:
    """
    Raise C{error} naming C{what} at C{path} and the fix, if anyone but its
    owner may read or write it.
    """
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        raise error(
            f"{what} {path} is readable or writable by others (mode {mode:04o}); "
            f"run: chmod 600 {path}"
        )
