"""
Ersid's own files: where they live by default, and the rule that files
holding data or secrets are private to the user running Ersid.
"""

from __future__ import annotations

import os
import stat

from ersid.startup import StartupError

__all__ = ["default_data_dir", "make_private_directory", "refuse_if_exposed"]


def default_data_dir() -> str:
    """
    Where Ersid keeps its files unless told otherwise: C{$ERSID_DATA_DIR},
    else C{$XDG_DATA_HOME/ersid}, else C{~/.local/share/ersid}.
    """
    if os.environ.get("ERSID_DATA_DIR"):
        return os.environ["ERSID_DATA_DIR"]
    xdg = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return os.path.join(xdg, "ersid")


def make_private_directory(path: str) -> None:
    """
    Create C{path} (and its parents) mode 0700 unless it exists.

    @raise StartupError: if it cannot be created.
    """
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as e:
        raise StartupError(str(e)) from None


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
