"""
The token file, C{--tokens}: JSON Lines, one object a token, with its
name, the SHA-256 of the token (never the token) and its permissions::

    {"name": "deploy", "sha256": "9f86d0...", "read": ["config/"], "write": ["app/"]}
    {"name": "root", "sha256": "2c26b4...", "admin": true}
    {"name": "prometheus", "sha256": "fcde2b...", "metrics": true}

Blank lines and lines starting with C{#} are skipped. The file must be
mode 0600: who can read it could not log in with it, but who can write it
could add a token. C{ersid token add} writes it (L{add_token}); nobody
needs to write hashes by hand.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import secrets
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import attrs

from ersid.files import refuse_if_exposed, sync_directory

__all__ = [
    "TokenEntry",
    "TokenFileError",
    "add_token",
    "digest_of",
    "new_token",
    "read_token_file",
    "remove_token",
]

_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
_FIELDS = {"name", "sha256", "read", "write", "admin", "metrics"}
# The longest name: names appear in logs and errors.
_MOST_NAME = 64


class TokenFileError(Exception):
    """The token file cannot be used; the message says where and why."""


@attrs.frozen
class TokenEntry:
    """One token of the file: its name, SHA-256 (hex) and permissions."""

    name: str
    sha256: str
    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    admin: bool = False
    metrics: bool = False

    def line(self) -> str:
        """The entry as a line of the file."""
        entry: dict[str, Any] = {"name": self.name, "sha256": self.sha256}
        if self.admin:
            entry["admin"] = True
        if self.metrics:
            entry["metrics"] = True
        if self.read:
            entry["read"] = list(self.read)
        if self.write:
            entry["write"] = list(self.write)
        return json.dumps(entry, ensure_ascii=False) + "\n"


def new_token() -> str:
    """
    A new token: 256 random bits, URL-safe, with a prefix that secret
    scanners can spot.
    """
    return "ersid_" + secrets.token_urlsafe(32)


def digest_of(token: bytes) -> bytes:
    """The SHA-256 of C{token}, as the file keeps it (in hex)."""
    return hashlib.sha256(token).digest()


def read_token_file(path: str) -> list[TokenEntry]:
    """
    The entries of the token file at C{path}.

    @raise TokenFileError: if it cannot be read, others may read or write
        it, or a line is not an entry; naming the line.
    """
    return [entry for _, entry in _read(path) if entry is not None]


def _read(path: str, any_owner: bool = False) -> list[tuple[bytes, TokenEntry | None]]:
    """
    Every line of the token file at C{path} (ends included), each with its
    entry, or C{None} for a comment or a blank line; a file of another
    user than this one or root only if C{any_owner}.
    """
    try:
        # Not blocking: a named pipe must not stop the daemon.
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            _refuse_if_others_may_change(path, os.fstat(descriptor), any_owner)
            with open(descriptor, "rb", closefd=False) as f:
                lines = f.read().splitlines(keepends=True)
        finally:
            os.close(descriptor)
    except OSError as e:
        raise TokenFileError(f"token file {path}: {e.strerror}") from None
    read: list[tuple[bytes, TokenEntry | None]] = []
    names: set[str] = set()
    digests: set[str] = set()
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith(b"#"):
            read.append((line, None))
            continue
        try:
            entry = _entry(line)
        except (ValueError, TypeError) as e:
            raise TokenFileError(f"token file {path}, line {number}: {e}") from None
        if entry.name in names:
            raise TokenFileError(
                f"token file {path}, line {number}: a second token named {entry.name!r}"
            )
        if entry.sha256 in digests:
            raise TokenFileError(
                f"token file {path}, line {number}: the token of {entry.name!r} "
                "is another's too"
            )
        names.add(entry.name)
        digests.add(entry.sha256)
        read.append((line, entry))
    return read


def _refuse_if_others_may_change(
    path: str, status: os.stat_result, any_owner: bool
) -> None:
    """
    Whoever may write the file may add a token: it must be a file that
    only its owner may change, and its owner this user or root.
    """
    if not stat.S_ISREG(status.st_mode):
        raise TokenFileError(f"token file {path} is not a file")
    refuse_if_exposed(path, "token file", TokenFileError, status)
    owner = status.st_uid
    if not any_owner and owner not in (0, os.geteuid()):
        raise TokenFileError(
            f"token file {path} belongs to another user (uid {owner}), who "
            "could add tokens; it must be this user's or root's"
        )


def _entry(line: bytes) -> TokenEntry:
    fields = json.loads(line)
    if not isinstance(fields, dict):
        raise ValueError("expected a JSON object")
    unknown = set(fields) - _FIELDS
    if unknown:
        raise ValueError(f"unknown fields {sorted(unknown)}")
    name = fields.get("name")
    if not (isinstance(name, str) and name.isprintable() and name.strip() == name):
        raise ValueError("'name' must be printable text without surrounding spaces")
    if not 0 < len(name) <= _MOST_NAME:
        raise ValueError(f"'name' must be 1 to {_MOST_NAME} characters")
    digest = fields.get("sha256")
    if not (isinstance(digest, str) and _HEX_DIGEST.fullmatch(digest)):
        raise ValueError("'sha256' must be 64 lower-case hex digits")
    admin = fields.get("admin", False)
    metrics = fields.get("metrics", False)
    if not isinstance(admin, bool) or not isinstance(metrics, bool):
        raise ValueError("'admin' and 'metrics' must be true or false")
    return TokenEntry(
        name,
        digest,
        _prefixes(fields, "read"),
        _prefixes(fields, "write"),
        admin,
        metrics,
    )


def _prefixes(fields: dict[str, Any], name: str) -> tuple[str, ...]:
    prefixes = fields.get(name, [])
    if not (isinstance(prefixes, list) and all(isinstance(p, str) for p in prefixes)):
        raise ValueError(f"{name!r} must be a list of key prefixes")
    return tuple(prefixes)


@contextmanager
def _changing(
    path: str, create: bool
) -> Iterator[list[tuple[bytes, TokenEntry | None]]]:
    """
    The lines of the token file at C{path} (none if it is new and
    C{create}), for a change, which L{_replace} makes; meanwhile the
    file's directory is locked against another C{ersid token}.
    """
    target = os.path.realpath(path)  # a link stays a link
    directory = os.path.dirname(target)
    try:
        lock = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise TokenFileError(f"token file {path}: {e.strerror}") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if create and not os.path.exists(target):
            yield []
        else:
            # Root may change the file of the user the daemon runs as.
            yield _read(path, any_owner=os.geteuid() == 0)
    finally:
        os.close(lock)


def _replace(path: str, lines: list[bytes]) -> None:
    """
    Make C{lines} the token file C{path}, whole or not at all: written to
    a new file (mode 0600) beside it, flushed, renamed over it.
    """
    target = os.path.realpath(path)
    directory = os.path.dirname(target)
    try:
        descriptor, temporary = tempfile.mkstemp(
            prefix=os.path.basename(target) + ".", dir=directory
        )
        try:
            if os.path.exists(target):
                # Root changing the daemon user's file leaves it the user's.
                status = os.stat(target)
                with suppress(PermissionError):
                    os.fchown(descriptor, status.st_uid, status.st_gid)
            with open(descriptor, "wb") as f:
                f.write(b"".join(lines))
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, target)
        except BaseException:
            with suppress(OSError):
                os.unlink(temporary)
            raise
        sync_directory(directory)
    except OSError as e:
        raise TokenFileError(f"token file {path}: {e.strerror}") from None


def add_token(
    path: str,
    name: str,
    read: tuple[str, ...] = (),
    write: tuple[str, ...] = (),
    admin: bool = False,
    metrics: bool = False,
) -> str:
    """
    Make a token named C{name} with these permissions, add its entry to
    the token file C{path} (made mode 0600 if new); the token, which is
    kept nowhere.

    @raise TokenFileError: if C{name} has a token already, or the file
        cannot be used.
    """
    token = new_token()
    digest = digest_of(token.encode("ascii")).hex()
    entry = TokenEntry(name, digest, read, write, admin, metrics)
    line = entry.line().encode("utf-8")
    try:
        _entry(line)
    except ValueError as e:
        raise TokenFileError(str(e)) from None
    with _changing(path, create=True) as lines:
        if any(entry is not None and entry.name == name for _, entry in lines):
            raise TokenFileError(
                f"{name!r} has a token already in {path}; remove it first"
            )
        kept = [text for text, _ in lines]
        if kept and not kept[-1].endswith(b"\n"):
            kept[-1] += b"\n"
        _replace(path, [*kept, line])
    return token


def remove_token(path: str, name: str) -> bool:
    """
    Remove the entry named C{name} from the token file C{path}, keeping the
    other lines as they are; whether there was one.
    """
    with _changing(path, create=False) as lines:
        kept = [text for text, entry in lines if entry is None or entry.name != name]
        if len(kept) == len(lines):
            return False
        _replace(path, kept)
    return True
