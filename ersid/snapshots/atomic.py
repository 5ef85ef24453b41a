"""
Files replaced atomically: written under a temporary name beside the final
one and renamed over it only once safely on disk, so that a crash at any
moment leaves the old file or the new one, never a torn one.
"""

from __future__ import annotations

import os
import tempfile

from ersid.files import sync_directory
from ersid.startup import StartupError

__all__ = ["AtomicFile", "remove_stale_temporaries"]


def _temporary_prefix(path: str) -> str:
    """Temporaries of C{path} are named after it: C{.NAME.tmp-XXXXXXXX}."""
    return f".{os.path.basename(path)}.tmp-"


class AtomicFile:
    """
    A file written under a temporary name (mode 0600) in its final
    directory and renamed over the final name by L{commit}. Blocking: call
    its methods from a thread, or from a process of their own.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.directory = os.path.dirname(os.path.abspath(path))
        fd, self.temporary = tempfile.mkstemp(
            dir=self.directory, prefix=_temporary_prefix(path)
        )
        self._file = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> int:
        """Write C{data} to the temporary file: the number of bytes written."""
        return self._file.write(data)

    def commit(self) -> None:
        """Sync the file, rename it over the final name, sync the directory."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.temporary, self.path)
        sync_directory(self.directory)

    def abort(self) -> None:
        """Give up: remove the temporary file, leave the final one as it was."""
        try:
            self._file.close()  # which flushes, and fails on a full disk
        except OSError:
            pass
        try:
            os.unlink(self.temporary)
        except FileNotFoundError:
            pass


def remove_stale_temporaries(path: str) -> None:
    """
    Remove the temporaries of C{path} that writes a crash interrupted left
    behind: only those named after it and owned by this user, so that a
    shared directory (C{/tmp}) keeps everyone else's files. Call it holding
    the lock on C{path}, so that none is still being written.

    @raise StartupError: if they cannot be removed.
    """
    directory = os.path.dirname(os.path.abspath(path))
    prefix = _temporary_prefix(path)
    try:
        for entry in os.scandir(directory):
            if entry.name.startswith(prefix) and entry.is_file(follow_symlinks=False):
                if entry.stat(follow_symlinks=False).st_uid == os.geteuid():
                    os.unlink(entry.path)
    except OSError as e:
        raise StartupError(str(e)) from None
