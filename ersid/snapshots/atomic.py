"""
Files replaced atomically: written under a temporary name beside the final
one and renamed over it only once safely on disk, so that a crash at any
moment leaves the old file or the new one, never a torn one.
"""

from __future__ import annotations

import os
import tempfile

from ersid.files import make_private_directory
from ersid.startup import StartupError

__all__ = ["AtomicFile", "prepare_directory"]

_TEMP_PREFIX = ".ersid-snapshot-"


class AtomicFile:
    """
    A file written under a temporary name in its final directory and renamed
    over the final name by L{commit}. Blocking: call its methods from a
    thread, or from a process of their own.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.directory = os.path.dirname(os.path.abspath(path))
        fd, self.temporary = tempfile.mkstemp(dir=self.directory, prefix=_TEMP_PREFIX)
        self._file = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> int:
        return self._file.write(data)

    def commit(self) -> None:
        """Sync the file, rename it over the final name, sync the directory."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.temporary, self.path)
        directory = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def abort(self) -> None:
        """Give up: remove the temporary file, leave the final one as it was."""
        self._file.close()
        try:
            os.unlink(self.temporary)
        except FileNotFoundError:
            pass


def prepare_directory(path: str) -> None:
    """
    Make the directory of C{path}, mode 0700, if it does not exist; remove
    the temporary files in it left by writes that a crash interrupted.

    @raise StartupError: if it cannot.
    """
    directory = os.path.dirname(os.path.abspath(path))
    make_private_directory(directory)
    try:
        for name in os.listdir(directory):
            if name.startswith(_TEMP_PREFIX):
                os.unlink(os.path.join(directory, name))
    except OSError as e:
        raise StartupError(str(e)) from None
