"""
C{ersid-journal}: the operator's tool for the dict backend's journal, for
when the daemon refuses to start over a damaged segment. C{check} says
whether segments are intact, C{list} lists their entries, C{repair} cuts a
segment at its first damage, keeping the original, and only while no
daemon runs on its data directory. It reads the format through
L{ersid.embedded.journal_format}.

Exit status: 0 intact (or repaired, or nothing to repair); 1 damage found;
2 usage error, or a file that cannot be used (missing, a directory, not
readable, not a journal, a daemon running on it). Errors are one line on
standard error, C{ersid-journal: <why>}.
"""

from __future__ import annotations

import argparse
import os
import shutil
import stat
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import NoReturn

import attrs

from ersid.embedded.journal_format import (
    SEGMENT_PREFIX,
    JournalEntry,
    SegmentDamage,
    read_segment,
    segment_start,
    segments,
)
from ersid.embedded.repair import cut_segment
from ersid.files import (
    DATA_DIR_LOCK,
    FileLock,
    lock_holder,
    open_private,
    sync_directory,
)
from ersid.startup import StartupError

__all__ = ["EXIT_DAMAGED", "EXIT_INTACT", "EXIT_UNUSABLE", "main"]

EXIT_INTACT, EXIT_DAMAGED, EXIT_UNUSABLE = 0, 1, 2

_PROG = "ersid-journal"
# The daemon's lock on its data directory, as ersid.files.claim_files names it.


class _Refusal(Exception):
    """The command cannot be carried out; the message says why, in one line."""


class _Vanished(_Refusal):
    """
    A segment was deleted before it could be read: by a running daemon, if
    it was listed from its data directory, once a snapshot covered it.
    """


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, not the usage and the error."""

    def error(self, message: str) -> NoReturn:
        print(f"{_PROG}: {message} (see: {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_UNUSABLE)


@attrs.frozen
class _Reading:
    """What reading one segment found: its entries' count and span, and damage."""

    path: str
    entries: int
    first: int | None
    last: int | None
    damage: SegmentDamage | None

    def span(self) -> str:
        plural = "entry" if self.entries == 1 else "entries"
        if self.first is None:
            return f"{self.entries} {plural}"
        return f"{self.entries} {plural} (revisions {self.first} to {self.last})"


def _read(
    path: str, each: Callable[[int, JournalEntry], None] | None = None
) -> _Reading:
    """
    Read the segment at C{path} up to its first damage, handing each entry
    to C{each}.

    @raise _Refusal: if it cannot be read, or is no journal at all.
    """
    count, first, last, damage = 0, None, None, None
    try:
        for offset, entry in read_segment(path):
            if each is not None:
                each(offset, entry)
            count += 1
            first = entry.revision if first is None else first
            last = entry.revision
    except SegmentDamage as found:
        damage = found
    except FileNotFoundError:
        raise _Vanished(f"{path}: no such file or directory") from None
    except OSError as e:
        raise _Refusal(f"cannot read {path}: {e.strerror}") from None
    named = os.path.basename(path).startswith(SEGMENT_PREFIX)
    if damage is not None and damage.offset == 0 and not named:
        # Any file reads as a journal damaged at its first byte: one not
        # named as a segment (nor a copy of one) is some other file.
        raise _Refusal(
            f"{path} is not an Ersid journal (it starts with {damage.problem}); "
            "journals are the journal.<revision> files of a data directory"
        )
    return _Reading(path, count, first, last, damage)


def _stat(path: str) -> os.stat_result:
    try:
        return os.stat(path)
    except FileNotFoundError:
        raise _Refusal(f"{path}: no such file or directory") from None
    except OSError as e:
        raise _Refusal(f"cannot read {path}: {e.strerror}") from None


def _segment_file(path: str) -> None:
    """
    @raise _Refusal: unless C{path} is a regular file, saying what else it is.
    """
    mode = _stat(path).st_mode
    if stat.S_ISDIR(mode):
        raise _Refusal(
            f"{path} is a directory: name one of its journal.<revision> files "
            f"(ersid-journal check {path} says which are damaged)"
        )
    if not stat.S_ISREG(mode):
        raise _Refusal(f"{path} is not a regular file")


def _segments_at(path: str) -> list[str]:
    """
    The segments C{path} names: itself if it is a file, else the data
    directory's, oldest first.

    @raise _Refusal: if it is neither, or a directory without a journal.
    """
    if not stat.S_ISDIR(_stat(path).st_mode):
        _segment_file(path)
        return [path]
    try:
        found = segments(path)
    except OSError as e:
        raise _Refusal(f"cannot list {path}: {e.strerror}") from None
    if not found:
        raise _Refusal(
            f"{path} holds no journal (no journal.<revision> files): is it "
            "the daemon's --data-dir?"
        )
    return found


def _daemon_on(directory: str) -> str | None:
    """
    The process ID of a daemon holding the data directory C{directory}, or
    C{None}: only tested, so that C{check} may run beside a daemon.
    """
    try:
        return lock_holder(os.path.join(directory, DATA_DIR_LOCK))
    except OSError as e:
        raise _Refusal(f"cannot tell whether a daemon uses {directory}: {e}") from None


def _neighbours(path: str) -> tuple[list[str], int | None]:
    """
    The segments of the directory of C{path}, oldest first, and where
    C{path} is among them (C{None} if it is none of them, a copy say).
    """
    try:
        found = segments(os.path.dirname(os.path.abspath(path)))
        at = [i for i, segment in enumerate(found) if os.path.samefile(segment, path)]
    except OSError:
        return [], None
    return found, at[0] if at else None


def _newest(path: str) -> bool:
    """Whether the segment at C{path} is the newest of its directory."""
    found, at = _neighbours(path)
    return at is not None and at == len(found) - 1


def _damage_line(reading: _Reading) -> str:
    damage = reading.damage
    assert damage is not None
    line = (
        f"{reading.path}: damaged at offset {damage.offset}: {damage.problem}, "
        f"{damage.remaining} bytes after it; {reading.span()} before it"
    )
    if damage.torn and _newest(reading.path):
        line += (
            " (a torn last entry, left by a daemon that stopped while writing "
            "it: the daemon cuts it off itself when it starts)"
        )
    return line


def _check(
    paths: list[str], listed: bool, each: Callable[[int, JournalEntry], None] | None
) -> int:
    """
    Report on each segment (C{listed} from a data directory, where a
    running daemon may delete old ones); the exit status.
    """
    directories = {os.path.dirname(os.path.abspath(path)) for path in paths}
    for directory in sorted(directories):
        holder = _daemon_on(directory)
        if holder is not None:
            print(
                f"note: a daemon (process {holder}) is running on {directory}: "
                "its newest segment may grow as this reads it (an incomplete "
                "last entry may be one being written)"
            )
    damaged = []
    for path in paths:
        if each is not None and len(paths) > 1:
            print(f"# {path}")
        try:
            reading = _read(path, each)
        except _Vanished:
            if not listed:
                raise
            print(f"{path}: deleted as it was read (a snapshot covers it)")
            continue
        if reading.damage is None:
            print(f"{path}: {reading.span()}, intact")
        else:
            print(_damage_line(reading))
            damaged.append(path)
    for path in damaged:
        print(
            f"to keep the entries before the damage: ersid-journal repair {path} "
            "--backup (with --dry-run first to see what it would cut)"
        )
    return EXIT_DAMAGED if damaged else EXIT_INTACT


def _describe(offset: int, entry: JournalEntry) -> None:
    """Print one entry on one line; keys are quoted, control characters escaped."""
    record = entry.record
    if record is None:
        kind, detail = ("expire" if entry.expired else "delete"), ""
    else:
        kind = "set"
        detail = f"  {len(record.value)} bytes {record.content_type!r}"
        if record.expires is not None:
            when = datetime.fromtimestamp(record.expires, UTC)
            detail += f" expires {when.isoformat(timespec='seconds')}"
    print(
        f"{offset:>12}  revision {entry.revision:>10}  {kind:6}  {entry.key!r}{detail}"
    )


def _backup(path: str, backup: str) -> None:
    """
    Copy the segment at C{path} to the new file C{backup}, mode 0600, owned
    as the segment is (when root repairs the daemon's), durably.

    @raise _Refusal: if C{backup} exists or cannot be written.
    """
    try:
        descriptor = open_private(backup, os.O_WRONLY | os.O_EXCL)
    except FileExistsError:
        raise _Refusal(
            f"the backup {backup} exists already: move it away, or name "
            "another with --backup-to"
        ) from None
    except OSError as e:
        raise _Refusal(f"cannot create the backup {backup}: {e.strerror}") from None
    try:
        with os.fdopen(descriptor, "wb") as copy, open(path, "rb") as original:
            shutil.copyfileobj(original, copy)
            copy.flush()
            if os.geteuid() == 0:
                owner = os.fstat(original.fileno())
                os.fchown(copy.fileno(), owner.st_uid, owner.st_gid)
            os.fsync(copy.fileno())
        sync_directory(os.path.dirname(os.path.abspath(backup)))
    except OSError as e:
        try:
            os.unlink(backup)
        except OSError:
            pass
        raise _Refusal(f"cannot write the backup {backup}: {e.strerror}") from None


def _cut(path: str, offset: int) -> None:
    """L{cut_segment}, its failure a refusal."""
    try:
        cut_segment(path, offset)
    except OSError as e:
        raise _Refusal(f"cannot cut {path}: {e.strerror}") from None


def _refuse_if_running(path: str) -> str:
    """
    The data directory of the segment at C{path}.

    @raise _Refusal: if a daemon runs on it.
    """
    directory = os.path.dirname(os.path.abspath(path))
    holder = _daemon_on(directory)
    if holder is not None:
        raise _Refusal(
            f"a daemon (process {holder}) is running on {directory}: stop it "
            f"before repairing {path} (it reads the journal only when it starts)"
        )
    return directory


def _hold(directory: str) -> FileLock | None:
    """
    The daemon's lock on C{directory}, held so that none starts during a
    repair; C{None} if no daemon ever ran there.

    @raise _Refusal: if a daemon holds it.
    """
    if not os.path.exists(os.path.join(directory, DATA_DIR_LOCK)):
        return None
    try:
        return FileLock(
            os.path.join(directory, DATA_DIR_LOCK), f"data directory {directory}"
        )
    except StartupError as e:
        raise _Refusal(str(e)) from None


def _lost_revisions(path: str, reading: _Reading) -> str:
    """What a cut loses beyond the segment: the revisions up to the next one's."""
    found, at = _neighbours(path)
    if at is None or at == len(found) - 1:
        return ""
    kept = reading.last if reading.last is not None else segment_start(path)
    return (
        f"; the revisions after {kept} up to {segment_start(found[at + 1])} "
        "are lost (a newer segment follows)"
    )


def _repair(arguments: argparse.Namespace) -> int:
    path = arguments.path
    _segment_file(path)
    directory = _refuse_if_running(path)
    if arguments.no_backup:
        backup = None
    else:
        backup = arguments.backup_to or f"{path}.bak"
    lock = None if arguments.dry_run else _hold(directory)
    try:
        reading = _read(path)
        damage = reading.damage
        if damage is None:
            print(f"{path}: {reading.span()}, intact: nothing to cut")
            return EXIT_INTACT
        cut = (
            f"{path} at offset {damage.offset} ({damage.problem}): keeping "
            f"{reading.span()}, dropping {damage.remaining} bytes"
            f"{_lost_revisions(path, reading)}"
        )
        if arguments.dry_run:
            kept = f"; the original would be kept as {backup}" if backup else ""
            print(f"would cut {cut}{kept}; nothing was changed")
            return EXIT_INTACT
        if backup is not None:
            _backup(path, backup)
        _cut(path, damage.offset)
        kept = f"; the original is {backup}" if backup else "; no backup kept"
        print(f"cut {cut}{kept}")
        return EXIT_INTACT
    finally:
        if lock is not None:
            lock.release()


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=_PROG,
        description="Check, list and repair the journal of Ersid's dict backend "
        "(the journal.<revision> files of the daemon's data directory).",
        epilog="Exit status: 0 intact or done, 1 damage found, 2 usage error or a "
        "file that cannot be used (missing, a directory, not a journal, a daemon "
        "running on it).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    where = "a journal file, or a data directory for all its segments"
    check = commands.add_parser(
        "check",
        help="say whether segments are intact, and where they are damaged",
        description="Say, for each segment, how many entries it holds and whether "
        "it is intact or where it is damaged. Changes nothing; may run beside a "
        "daemon.",
    )
    check.add_argument("path", metavar="FILE|DATA_DIR", help=where)
    listing = commands.add_parser(
        "list",
        help="list the entries, one a line, up to the first damage",
        description="List each entry: offset, revision, operation, key, and a "
        "set's size, content type and expiry; then whether the segment is intact. "
        "Changes nothing.",
    )
    listing.add_argument("path", metavar="FILE|DATA_DIR", help=where)
    repair = commands.add_parser(
        "repair",
        help="cut a segment at its first damage, keeping the entries before it",
        description="Cut a damaged segment at its first damage, so that the "
        "daemon starts with the entries before it (those after it are lost). "
        "Refused while a daemon runs on the segment's data directory.",
    )
    repair.add_argument("path", metavar="FILE", help="the damaged journal file")
    keep = repair.add_mutually_exclusive_group()
    keep.add_argument(
        "--backup",
        action="store_true",
        help="keep the original as FILE.bak (mode 0600)",
    )
    keep.add_argument(
        "--backup-to",
        metavar="PATH",
        help="keep the original as PATH (a new file, mode 0600)",
    )
    keep.add_argument(
        "--no-backup", action="store_true", help="keep no copy of the original"
    )
    repair.add_argument(
        "--dry-run",
        action="store_true",
        help="say what would be cut, and change nothing",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run C{ersid-journal} with C{argv} (else the command line); exit with its status."""
    parser = _parser()
    arguments = parser.parse_args(argv)
    if arguments.command == "repair":
        chosen = arguments.backup or arguments.backup_to or arguments.no_backup
        if not (chosen or arguments.dry_run):
            print(
                f"{_PROG}: repair changes the file: say --backup (keeps it as "
                "FILE.bak), --backup-to PATH, or --no-backup (see: ersid-journal "
                "repair --help)",
                file=sys.stderr,
            )
            raise SystemExit(EXIT_UNUSABLE)
    try:
        if arguments.command == "repair":
            status = _repair(arguments)
        else:
            each = _describe if arguments.command == "list" else None
            paths = _segments_at(arguments.path)
            status = _check(paths, paths != [arguments.path], each)
    except _Refusal as e:
        print(f"{_PROG}: {e}", file=sys.stderr)
        raise SystemExit(EXIT_UNUSABLE) from None
    except BrokenPipeError:
        # Whoever read the output has gone (as "| head" does): stop quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(EXIT_UNUSABLE) from None
    raise SystemExit(status)


if __name__ == "__main__":
    main()
