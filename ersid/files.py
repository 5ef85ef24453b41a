"""
Ersid's own files: where they live by default, the rule that every file
Ersid writes is private to the user running it (mode 0600, whatever the
umask), and the locks that keep two daemons off the same files.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat

import attrs
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from ersid.startup import StartupError

__all__ = [
    "DATA_DIR_LOCK",
    "ClaimedFiles",
    "FileLock",
    "LockedServices",
    "claim_files",
    "create_private",
    "default_data_dir",
    "lock_holder",
    "open_private",
    "refuse_if_exposed",
    "sync_directory",
]

_log = Logger()

# The lock file in the data directory that keeps a second daemon off it.
DATA_DIR_LOCK = "ersid.lock"


def default_data_dir() -> str:
    """
    Where Ersid keeps its files unless told otherwise: C{$ERSID_DATA_DIR},
    else C{$XDG_DATA_HOME/ersid}, else C{~/.local/share/ersid}.
    """
    if os.environ.get("ERSID_DATA_DIR"):
        return os.environ["ERSID_DATA_DIR"]
    xdg = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return os.path.join(xdg, "ersid")


def _prepare_data_dir(path: str) -> None:
    """
    Create the data directory C{path} (and its parents) mode 0700, or make
    an existing one of ours private again, saying so: it holds every value.

    @raise StartupError: if it cannot be created, or others may read it and
        it is not ours to change.
    """
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        status = os.stat(path)
        mode = stat.S_IMODE(status.st_mode)
        if mode & 0o077:
            if status.st_uid != os.geteuid():
                raise StartupError(
                    f"data directory {path} may be read by others (mode "
                    f"{mode:04o}) and is not ours to change; run: chmod 700 {path}"
                )
            os.chmod(path, mode & 0o700)
            _log.warn(
                "Data directory {path} could be read by others (mode {mode:04o}); "
                "made it private (mode {new:04o})",
                path=path,
                mode=mode,
                new=mode & 0o700,
            )
    except OSError as e:
        raise StartupError(str(e)) from None


def open_private(path: str, flags: int, follow: bool = False) -> int:
    """
    Open C{path} with C{flags}, creating it mode 0600 if it is new, and make
    it mode 0600 if it is not: the file descriptor. A symbolic link is
    refused (C{ELOOP}) unless C{follow}: one planted in a shared directory
    would have Ersid write where someone else chose.
    """
    flags |= os.O_CREAT | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    descriptor = os.open(path, flags, 0o600)
    try:
        os.fchmod(descriptor, 0o600)
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


def create_private(path: str) -> None:
    """
    Create C{path} mode 0600 unless it exists; make it mode 0600 if it does
    (through a symbolic link: the path is the user's choice).
    """
    os.close(open_private(path, os.O_WRONLY | os.O_APPEND, follow=True))


def sync_directory(path: str) -> None:
    """Make the entries of the directory C{path} durable (a new file's name)."""
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def refuse_if_exposed(
    path: str,
    what: str,
    error: type[Exception],
    status: os.stat_result | None = None,
) -> None:
    """
    Raise C{error} naming C{what} at C{path} and the fix, if anyone but its
    owner may read or write it (as C{status} says, if given).
    """
    if status is None:
        status = os.stat(path)
    mode = stat.S_IMODE(status.st_mode)
    if mode & 0o077:
        raise error(
            f"{what} {path} is readable or writable by others (mode {mode:04o}); "
            f"run: chmod 600 {path}"
        )


class FileLock:
    """
    An exclusive lock on the file C{path}, which says what it guards:
    C{flock}, which the kernel releases when the process dies however it
    dies, so that a killed daemon leaves no stale lock. The file holds the
    process ID of the holder, for the message of whoever is refused.

    @raise StartupError: if another process holds it, naming that process.
    """

    _descriptor: int | None = None

    def __init__(self, path: str, what: str) -> None:
        self.path = path
        try:
            self._descriptor = open_private(path, os.O_RDWR)
        except OSError as e:
            raise StartupError(f"cannot lock {what}: {e}") from None
        try:
            fcntl.flock(self._descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(self._descriptor, 32, 0).decode("ascii", "replace")
            self.release()
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise StartupError(f"cannot lock {what}: {e.strerror}") from None
            who = f"process {holder.strip()}" if holder.strip() else "another process"
            raise StartupError(
                f"{what} is in use by {who} (it holds {path}); two daemons on the "
                "same files would lose each other's writes"
            ) from None
        self.record_holder()

    def record_holder(self) -> None:
        """Write this process's ID into the file (again, after twistd forks)."""
        if self._descriptor is not None:
            os.ftruncate(self._descriptor, 0)
            os.pwrite(self._descriptor, b"%d\n" % os.getpid(), 0)

    def release(self) -> None:
        """Give the lock up."""
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None

    # A daemon that fails to start drops its locks with it.
    __del__ = release


def lock_holder(path: str) -> str | None:
    """
    The process ID, as the lock file C{path} says, of the process holding
    that L{FileLock}, or C{None} if none does (or the file does not exist).
    It only tests the lock, writing nothing: a tool may ask beside a daemon.

    @raise OSError: if the file cannot be opened or locked for another reason.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise
        holder = os.pread(descriptor, 32, 0).decode("ascii", "replace").strip()
        return holder or "unknown"
    finally:
        os.close(descriptor)  # which gives up the lock, had it been taken
    return None


class LockedServices(MultiService):
    """
    Services that run holding L{FileLock}s, given up once all of them have
    stopped. (If the process dies instead, the kernel gives them up.)
    """

    def __init__(self, locks: list[FileLock]) -> None:
        super().__init__()
        self._locks = locks

    def startService(self) -> None:
        # twistd may have forked into the background since the locks were
        # taken: the holder is this process now.
        for lock in self._locks:
            lock.record_holder()
        super().startService()

    def stopService(self) -> Deferred[None]:
        def release(result: object) -> object:
            for lock in self._locks:
                lock.release()
            return result

        return super().stopService().addBoth(release)


@attrs.frozen
class ClaimedFiles:
    """
    The files a daemon has claimed: the snapshot's path, links resolved,
    and the locks that keep other daemons off the data directory and it.
    """

    dump_file: str
    locks: list[FileLock]


def claim_files(data_dir: str, dump_file: str) -> ClaimedFiles:
    """
    Make the data directory private, find the snapshot, and lock both for
    this daemon alone.

    A snapshot that is a symbolic link is written where the link points
    (the link stays); a link into a directory that does not exist stops the
    start, as its volume may not be mounted. Directories are created inside
    the data directory only: the snapshot's directory elsewhere must exist.

    @raise StartupError: if any of them cannot be had.
    """
    _prepare_data_dir(data_dir)
    if not dump_file or os.path.isdir(dump_file):
        raise StartupError(f"--dump-file {dump_file!r} must name a file")
    linked = os.path.islink(dump_file)
    if linked and os.lstat(dump_file).st_uid not in (0, os.geteuid()):
        raise StartupError(
            f"--dump-file {dump_file} is a link another user made "
            f"(uid {os.lstat(dump_file).st_uid}); Ersid follows only its own"
        )
    given, dump_file = dump_file, os.path.realpath(dump_file)
    directory = os.path.dirname(dump_file)
    if linked and not os.path.isdir(directory):
        raise StartupError(
            f"--dump-file {given} is a link to {dump_file}, whose directory does "
            "not exist (a volume not mounted?); Ersid will not start without its "
            "snapshot"
        )
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise StartupError(f"the directory of --dump-file, {directory}, is a file")
    if not os.path.isdir(directory):
        inside = os.path.commonpath([os.path.realpath(data_dir), directory])
        if inside != os.path.realpath(data_dir):
            raise StartupError(
                f"the directory of --dump-file {dump_file} does not exist; "
                f"create it first: mkdir -p {directory}"
            )
        try:
            os.makedirs(directory, mode=0o700)
        except OSError as e:
            raise StartupError(str(e)) from None
    locks = [
        FileLock(os.path.join(data_dir, DATA_DIR_LOCK), f"data directory {data_dir}"),
        FileLock(dump_file + ".lock", f"snapshot {dump_file}"),
    ]
    _check_snapshot_file(dump_file)
    return ClaimedFiles(dump_file, locks)


def _check_snapshot_file(path: str) -> None:
    """
    Refuse a snapshot another user owns or may have written: its values
    would be loaded as the store's. Make one that others may only read
    private, saying so.
    """
    try:
        status = os.lstat(path)
    except FileNotFoundError:
        return
    mode = stat.S_IMODE(status.st_mode)
    if status.st_uid != os.geteuid():
        raise StartupError(
            f"snapshot {path} belongs to another user (uid {status.st_uid}); "
            "Ersid loads only its own"
        )
    if mode & 0o022:
        raise StartupError(
            f"snapshot {path} may have been written by others (mode {mode:04o}); "
            f"check it, then: chmod 600 {path}"
        )
    if mode & 0o077:
        os.chmod(path, 0o600)
        _log.warn(
            "Snapshot {path} could be read by others (mode {mode:04o}); made it "
            "private",
            path=path,
            mode=mode,
        )
