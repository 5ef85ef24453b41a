"""
Who may do what: the daemon's L{IAccess}, either L{OpenAccess} (no tokens:
anyone on loopback may do anything) or L{TokenAccess}, the token file's
grants, reloaded on C{SIGHUP} by L{TokenReloading}.
"""

from __future__ import annotations

import hmac
import signal
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from ersid.auth.grants import ANYONE, Grant, NotAuthenticated
from ersid.auth.token_file import (
    TokenEntry,
    TokenFileError,
    digest_of,
    read_token_file,
)
from ersid.startup import StartupError

__all__ = ["IAccess", "OpenAccess", "RememberedGrant", "TokenAccess", "TokenReloading"]

_log = Logger()


class IAccess(Interface):
    """What the API asks of its access control."""

    open = Attribute("Whether anyone may do anything, without a token.")

    def grant(authorization: list[bytes] | None) -> Grant:
        """
        The grant of a request whose C{Authorization} header has these
        lines (C{None}: it has none).

        @raise NotAuthenticated: if there is no token, or an unknown one.
        """


@implementer(IAccess)
class OpenAccess:
    """No tokens: everyone is L{ANYONE}."""

    open = True

    def grant(self, authorization: list[bytes] | None) -> Grant:
        return ANYONE


@implementer(IAccess)
class TokenAccess:
    """
    The grants of the token file at C{path}, found by the SHA-256 of the
    token a request bears.

    @raise StartupError: if the file cannot be used.
    """

    open = False

    def __init__(self, path: str) -> None:
        self.path = path
        self._grants: dict[bytes, Grant] = {}
        try:
            self._take(read_token_file(path))
        except TokenFileError as e:
            raise StartupError(str(e)) from None
        _log.info("{count} tokens from {path}", count=len(self._grants), path=path)
        if not self._grants:
            _log.warn(
                "The token file {path} has no tokens: every request is refused",
                path=path,
            )

    def grant(self, authorization: list[bytes] | None) -> Grant:
        if authorization is None:
            raise NotAuthenticated("this server needs a token: Authorization: Bearer")
        scheme, _, token = authorization[-1].strip().partition(b" ")
        token = token.strip()
        if len(authorization) > 1 or scheme.lower() != b"bearer" or not token:
            raise NotAuthenticated(
                "expected one Authorization: Bearer <token>", "invalid_request"
            )
        digest = digest_of(token)
        # A lookup by digest tells an attacker nothing about a stored token
        # (steering the digest needs a preimage); the comparison after it
        # takes the same time however much of the digest matches.
        grant = self._grants.get(digest)
        if grant is None or not hmac.compare_digest(grant.digest, digest):
            raise NotAuthenticated(
                "the token is not one of this server's", "invalid_token"
            )
        return grant

    def reload(self) -> None:
        """
        Read the token file again: new tokens pass at once; removed ones,
        or ones whose permissions changed, are revoked at once, their
        watches ended. A file that cannot be used is logged, and the tokens
        stay as they were.
        """
        try:
            entries = read_token_file(self.path)
        except TokenFileError as e:
            _log.error("Tokens not reloaded, the old ones still hold: {why}", why=e)
            return
        before = set(self._grants.values())
        self._take(entries)
        revoked = before - set(self._grants.values())
        for grant in revoked:
            grant.revoke(f"the token {grant.name!r} was revoked or changed")
        _log.info(
            "Tokens reloaded from {path}: {count}; revoked: {revoked}",
            path=self.path,
            count=len(self._grants),
            revoked=", ".join(sorted(g.name for g in revoked)) or "none",
        )

    def _take(self, entries: list[TokenEntry]) -> None:
        grants: dict[bytes, Grant] = {}
        for entry in entries:
            digest = bytes.fromhex(entry.sha256)
            grant = Grant(
                entry.name, entry.read, entry.write, entry.admin, digest, entry.metrics
            )
            kept = self._grants.get(digest)
            if (
                kept is not None
                and kept.name == grant.name
                and kept.permissions == grant.permissions
            ):
                grant = kept  # unchanged: its connections and watches go on
            grants[digest] = grant
        self._grants = grants


class RememberedGrant:
    """
    The grants of a connection's requests, through C{access}: the last
    C{Authorization} line and its grant are remembered, for a kept-alive
    client sends the same token again and again.
    """

    __slots__ = ("_access", "_line", "_remembered")

    def __init__(self, access: IAccess) -> None:
        self._access = access
        self._line = b""
        self._remembered: Grant | None = None

    def grant(self, authorization: list[bytes] | None) -> Grant:
        """L{IAccess.grant}, without hashing the token again if it is the last one."""
        access = self._access
        if access.open:
            return ANYONE
        remembered = self._remembered
        if (
            remembered is not None
            and authorization is not None
            and len(authorization) == 1
            and not remembered.revoked
            # A proxy may send other clients' requests on this connection.
            and hmac.compare_digest(authorization[0], self._line)
        ):
            return remembered
        grant = access.grant(authorization)
        self._line, self._remembered = authorization[-1], grant  # type: ignore[index]
        return grant


class TokenReloading(Service):
    """Reload C{access} when the daemon is sent C{SIGHUP}."""

    def __init__(self, access: TokenAccess, reactor: Any) -> None:
        self._access = access
        self._reactor = reactor
        self._previous: Any = None

    def startService(self) -> None:
        super().startService()
        self._previous = signal.signal(signal.SIGHUP, self._hangup)

    def stopService(self) -> None:
        super().stopService()
        signal.signal(signal.SIGHUP, self._previous or signal.SIG_DFL)

    def _hangup(self, number: int, frame: Any) -> None:
        # A signal handler runs between any two bytecodes: the reload waits
        # for the reactor's next turn.
        self._reactor.callFromThread(self._access.reload)
