"""
The token file, C{--tokens}: JSON Lines, one object a token, with its
name, the SHA-256 of the token (never the token) and its permissions::

    {"name": "deploy", "sha256": "9f86d0...", "read": ["config/"], "write": ["app/"]}
    {"name": "root", "sha256": "2c26b4...", "admin": true}

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
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import attrs

from ersid.files import open_private, refuse_if_exposed, sync_directory

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
_FIELDS = {"name", "sha256", "read", "write", "admin"}
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

    def line(self) -> str:
        """The entry as a line of the file."""
        entry: dict[str, Any] = {"name": self.name, "sha256": self.sha256}
        if self.admin:
            entry["admin"] = True
        if self.read:
            entry["read"] = list(self.read)
        if self.write:
            entry["write"] = list(self.write)
        return json.dumps(entry, ensure_ascii=False) + "\n"


def new_token() -> str:
    """A new token: 256 random bits, URL-safe, with a prefix that secret scanners can spot."""
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
    try:
        refuse_if_exposed(path, "token file", TokenFileError)
        with open(path, "rb") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise TokenFileError(f"token file {path}: {e.strerror}") from None
    entries: list[TokenEntry] = []
    names: set[str] = set()
    digests: set[str] = set()
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith(b"#"):
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
        entries.append(entry)
    return entries


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
    if not isinstance(admin, bool):
        raise ValueError("'admin' must be true or false")
    return TokenEntry(
        name, digest, _prefixes(fields, "read"), _prefixes(fields, "write"), admin
    )


def _prefixes(fields: dict[str, Any], name: str) -> tuple[str, ...]:
    prefixes = fields.get(name, [])
    if not (isinstance(prefixes, list) and all(isinstance(p, str) for p in prefixes)):
        raise ValueError(f"{name!r} must be a list of key prefixes")
    return tuple(prefixes)


@contextmanager
def _locked(path: str) -> Iterator[list[TokenEntry]]:
    """
    The entries of C{path} (none if it is new, made mode 0600), with the
    file locked against another C{ersid token} changing it meanwhile.
    """
    try:
        if os.path.exists(path):
            # As found: an exposed file is refused, not quietly made private.
            refuse_if_exposed(path, "token file", TokenFileError)
            descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        else:
            descriptor = open_private(path, os.O_RDONLY, follow=True)
    except OSError as e:
        raise TokenFileError(f"token file {path}: {e.strerror}") from None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield read_token_file(path)
    finally:
        os.close(descriptor)


def add_token(
    path: str,
    name: str,
    read: tuple[str, ...] = (),
    write: tuple[str, ...] = (),
    admin: bool = False,
) -> str:
    """
    Make a token named C{name} with these permissions, append its entry to
    the token file C{path} (made mode 0600 if new); the token, which is
    kept nowhere.

    @raise TokenFileError: if C{name} has a token already, or the file
        cannot be used.
    """
    token = new_token()
    digest = digest_of(token.encode("ascii")).hex()
    entry = TokenEntry(name, digest, read, write, admin)
    try:
        _entry(entry.line().encode("utf-8"))
    except ValueError as e:
        raise TokenFileError(str(e)) from None
    with _locked(path) as entries:
        if any(found.name == name for found in entries):
            raise TokenFileError(
                f"{name!r} has a token already in {path}; remove it first"
            )
        descriptor = open_private(path, os.O_WRONLY | os.O_APPEND, follow=True)
        try:
            with open(descriptor, "a", encoding="utf-8", closefd=False) as f:
                if f.tell() and not _ends_in_newline(path):
                    f.write("\n")
                f.write(entry.line())
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
    return token


def _ends_in_newline(path: str) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def remove_token(path: str, name: str) -> bool:
    """
    Remove the entry named C{name} from the token file C{path}, keeping the
    other lines as they are; whether there was one.
    """
    with _locked(path) as entries:
        if not any(entry.name == name for entry in entries):
            return False
        with open(path, "rb") as f:
            lines = f.read().splitlines(keepends=True)
        kept = [line for line in lines if not _names(line, name)]
        target = os.path.realpath(path)  # a link stays a link
        temporary = target + ".new"
        descriptor = open_private(temporary, os.O_WRONLY | os.O_TRUNC)
        try:
            os.write(descriptor, b"".join(kept))
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temporary, target)
        sync_directory(os.path.dirname(target))
    return True


def _names(line: bytes, name: str) -> bool:
    if not line.strip() or line.lstrip().startswith(b"#"):
        return False
    return _entry(line).name == name
