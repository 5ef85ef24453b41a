"""
Who may enter the manhole, and how the manhole proves who it is: the host
key, generated once and private to the user running Ersid; operators'
public keys from an OpenSSH C{authorized_keys} file; and optionally a file
of C{user:hash} lines (bcrypt or crypt(3) hashes). There is no built-in
password.
"""

from __future__ import annotations

import hmac
import os
import re
import stat
import warnings

import bcrypt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.conch.checkers import IAuthorizedKeysDB
from twisted.conch.ssh import keys
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import threads
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from ersid.files import refuse_if_exposed

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import crypt as _crypt
    except ImportError:  # Python 3.13 and later
        _crypt = None

__all__ = [
    "HOST_KEY_NAME",
    "AuthorizedKeys",
    "HashedPasswordChecker",
    "ManholeError",
    "fingerprint",
    "load_or_create_host_key",
    "read_authorized_keys",
    "read_password_file",
]

HOST_KEY_NAME = "ssh_host_ed25519_key"

_log = Logger()


class ManholeError(Exception):
    """The manhole cannot start as configured; the message says why."""


def load_or_create_host_key(data_dir: str) -> keys.Key:
    """
    The manhole's SSH host key from C{data_dir}, created (ed25519, mode
    0600, in a directory of mode 0700) on first use and reused afterwards so
    that its fingerprint never changes. Blocking: call before the reactor.
    """
    path = os.path.join(data_dir, HOST_KEY_NAME)
    os.makedirs(data_dir, mode=0o700, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        refuse_if_exposed(path, "SSH host key", ManholeError)
        try:
            return keys.Key.fromFile(path)
        except (keys.BadKeyError, ValueError) as e:
            raise ManholeError(f"cannot read SSH host key {path}: {e}") from None
    private = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    with os.fdopen(descriptor, "wb") as f:
        f.write(private)
    _log.info("Generated SSH host key {path}", path=path)
    return keys.Key.fromString(private)


def fingerprint(key: keys.Key) -> str:
    """The key's fingerprint as OpenSSH prints it: C{SHA256:...}."""
    digest = key.fingerprint(keys.FingerprintFormats.SHA256_BASE64)
    return "SHA256:" + digest.rstrip("=")


def read_authorized_keys(path: str) -> list[keys.Key]:
    """
    The public keys in an OpenSSH C{authorized_keys} file; a missing file
    holds none. Lines with options (C{from=...}, C{command=...}) are skipped
    with a warning, since honouring them only partly would grant too much.

    @raise ManholeError: if others than its owner (or root) could have added
        a key: the file or its directory writable by them, as OpenSSH's
        C{StrictModes} refuses.
    """
    try:
        with open(path, "rb") as f:
            _refuse_if_others_may_write(path, os.fstat(f.fileno()))
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    found = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith(b"#"):
            continue
        try:
            found.append(keys.Key.fromString(line))
        except (keys.BadKeyError, ValueError, IndexError):
            _log.warn(
                "Skipping line {number} of {path}: not a plain public key "
                "(key options are not supported)",
                number=number,
                path=path,
            )
    return found


def _refuse_if_others_may_write(path: str, status: os.stat_result) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    for what, where, found in [
        ("file", path, status),
        ("directory", directory, os.stat(directory)),
    ]:
        mode = stat.S_IMODE(found.st_mode)
        if mode & 0o022 or found.st_uid not in (0, os.geteuid()):
            raise ManholeError(
                f"authorized keys {path}: its {what} {where} may be written by "
                f"others (mode {mode:04o}, owner {found.st_uid}), who could add "
                f"their key; run: chmod go-w {where}"
            )


def read_password_file(path: str) -> dict[bytes, bytes]:
    """
    Read C{user:hash} lines, where each hash is bcrypt (C{$2b$...}) or
    crypt(3) (C{$6$...}); plain-text passwords are refused, and so is a file
    that others may read.
    """
    refuse_if_exposed(path, "manhole password file", ManholeError)
    hashes = {}
    with open(path, "rb") as f:
        for number, line in enumerate(f.read().splitlines(), 1):
            if not line.strip() or line.startswith(b"#"):
                continue
            user, separator, hashed = line.strip().partition(b":")
            if not separator or not hashed.startswith(b"$"):
                raise ManholeError(
                    f"line {number} of {path} is not 'user:hash' with a bcrypt or "
                    "crypt hash; plain-text passwords are not accepted"
                )
            if not _usable_hash(hashed):
                raise ManholeError(
                    f"line {number} of {path}: the hash is damaged or of a kind "
                    "this system cannot check; make it again, e.g. with "
                    "python3 -c 'import bcrypt, getpass; print(bcrypt.hashpw("
                    "getpass.getpass().encode(), bcrypt.gensalt()).decode())'"
                )
            hashes[user] = hashed
    return hashes


# A well-formed bcrypt hash of bcrypt's default cost that no password is
# known to match, checked for unknown users.
_NO_USER = b"$2b$12$" + b"." * 53
_BCRYPT_HASH = re.compile(rb"\$2[aby]\$[0-9]{2}\$[./A-Za-z0-9]{53}")


def _usable_hash(hashed: bytes) -> bool:
    """Whether C{hashed} is a well-formed bcrypt hash or one crypt(3) can use."""
    if hashed.startswith((b"$2a$", b"$2b$", b"$2y$")):
        return _BCRYPT_HASH.fullmatch(hashed) is not None
    if _crypt is None or not hashed.isascii():
        return False
    # crypt(3) answers a hash it cannot use with None or a "*" token.
    computed = _crypt.crypt("", hashed.decode())
    return computed is not None and not computed.startswith("*")


@implementer(IAuthorizedKeysDB)
class AuthorizedKeys:
    """The operator's public keys, valid whatever user name they log in as."""

    def __init__(self, authorized: list[keys.Key]) -> None:
        self._keys = authorized

    def getAuthorizedKeys(self, username: bytes) -> list[keys.Key]:
        return self._keys


def _password_matches(password: bytes, hashed: bytes) -> bool:
    if hashed.startswith((b"$2a$", b"$2b$", b"$2y$")):
        # bcrypt reads 72 bytes at most (and refuses more): a longer
        # password costs the same check, and is wrong.
        return bcrypt.checkpw(password[:72], hashed) and len(password) <= 72
    if _crypt is None:
        return False
    computed = _crypt.crypt(password.decode("utf-8", "replace"), hashed.decode())
    return computed is not None and hmac.compare_digest(computed.encode(), hashed)


@implementer(ICredentialsChecker)
class HashedPasswordChecker:
    """
    Check passwords against bcrypt or crypt(3) hashes, in a thread: a bcrypt
    check costs a good fraction of a second of CPU.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, hashes: dict[bytes, bytes]) -> None:
        self._hashes = hashes

    def requestAvatarId(self, credentials: IUsernamePassword) -> Deferred[bytes]:
        known = credentials.username in self._hashes
        # An unknown user costs the same check, so that timing does not tell
        # which user names exist.
        hashed = self._hashes.get(credentials.username, _NO_USER)

        def checked(matches: bool) -> bytes:
            if not (known and matches):
                raise UnauthorizedLogin("wrong user name or password")
            return credentials.username

        matching = threads.deferToThread(
            _password_matches, credentials.password, hashed
        )
        return matching.addCallback(checked)
