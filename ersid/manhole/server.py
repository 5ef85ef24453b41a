"""
The manhole's SSH server: a colored Python prompt inside the running
daemon for each operator who logs in, every login and refusal logged.
"""

from __future__ import annotations

from typing import Any

from twisted.conch import error as conch_error
from twisted.conch.checkers import SSHPublicKeyChecker
from twisted.conch.insults import insults
from twisted.conch.interfaces import IConchUser
from twisted.conch.manhole import ColoredManhole
from twisted.conch.manhole_ssh import ConchFactory, TerminalRealm, TerminalSession
from twisted.conch.ssh import keys
from twisted.conch.ssh.connection import SSHConnection
from twisted.conch.ssh.transport import DISCONNECT_BY_APPLICATION, SSHServerTransport
from twisted.conch.ssh.userauth import SSHUserAuthServer
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger, LogLevel, globalLogPublisher
from twisted.python.failure import Failure

from ersid.manhole.credentials import AuthorizedKeys, HashedPasswordChecker

__all__ = ["makeFactory"]

_log = Logger()


def _warnings_and_worse(event: dict[str, Any]) -> None:
    if event["log_level"] >= LogLevel.warn:
        globalLogPublisher(event)


# Conch tells of every step of every SSH session at debug and info level,
# some twenty lines a login; the manhole logs logins and their end itself.
# Its classes log through a class attribute, _log (tests/test_twisted.py
# pins it), which these subclasses replace.
_quiet = Logger(observer=_warnings_and_worse)


# Seconds a connection may take to log in before it is closed: one that
# never does would otherwise hold its place for ever.
LOGIN_TIMEOUT = 60.0


class _Transport(SSHServerTransport):
    _log = _quiet
    _login_timer: IDelayedCall | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        clock = self.factory.clock
        self._login_timer = clock.callLater(LOGIN_TIMEOUT, self._too_slow)

    def logged_in(self) -> None:
        """The client has logged in: it may stay."""
        if self._login_timer is not None and self._login_timer.active():
            self._login_timer.cancel()
        self._login_timer = None

    def _too_slow(self) -> None:
        self._login_timer = None
        peer = self.transport.getPeer()
        _log.info("Manhole connection from {peer} did not log in", peer=peer.host)
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure) -> None:
        self.logged_in()
        super().connectionLost(reason)

    def receiveError(self, reasonCode: int, description: bytes) -> None:
        """The client disconnecting, as logging out does, is no error."""
        if reasonCode == DISCONNECT_BY_APPLICATION:
            peer = self.transport.getPeer()
            _log.info("Manhole session from {peer} ended", peer=peer.host)
            return
        super().receiveError(reasonCode, description)


class _Connection(SSHConnection):
    _log = _quiet


class _Factory(ConchFactory):
    _log = _quiet
    protocol = _Transport


class _Session(TerminalSession):
    """
    A terminal session that survives what Conch's own leaves unimplemented
    (the client closing its input, resizing its window) and that ends with
    exit status 0, as a shell would, when the operator leaves.
    """

    _terminal: Any = None

    def openShell(self, proto: Any) -> None:
        self._terminal = self.transportFactory(
            proto,
            self.chainedProtocolFactory(),
            IConchUser(self.original),
            self.width,
            self.height,
        )
        self._terminal.chainedProtocol.transport.loseConnection = lambda: (
            proto.processEnded(Failure(ProcessDone(0)))
        )

    def windowChanged(self, newWindowSize: tuple[int, ...]) -> None:
        if self._terminal is not None:
            height, width = newWindowSize[:2]
            self._terminal.chainedProtocol.terminalProtocol.terminalSize(width, height)

    def eofReceived(self) -> None:
        if self._terminal is not None:
            self._terminal.chainedProtocol.loseConnection()


class _AuditedUserAuth(SSHUserAuthServer):
    """User authentication that logs every login and every refusal."""

    _log = _quiet

    def tryAuth(self, kind: bytes, user: bytes, data: bytes) -> Deferred[Any]:
        attempt = super().tryAuth(kind, user, data)
        if kind == b"none":
            return attempt
        peer = self.transport.transport.getPeer()
        fields = {"user": user.decode("utf-8", "replace"), "peer": peer.host}
        fields["method"] = kind.decode("ascii", "replace")

        def succeeded(result: Any) -> Any:
            _log.info("Manhole login by {user} from {peer} ({method})", **fields)
            self.transport.logged_in()
            return result

        def failed(reason: Failure) -> Failure:
            if not reason.check(conch_error.IgnoreAuthentication):
                _log.warn(
                    "Manhole login refused for {user} from {peer} ({method})",
                    **fields,
                )
            return reason

        return attempt.addCallbacks(succeeded, failed)


def makeFactory(
    namespace: dict[str, Any],
    host_key: keys.Key,
    authorized: list[keys.Key],
    password_hashes: dict[bytes, bytes],
    clock: IReactorTime,
) -> ConchFactory:
    """
    An SSH server factory giving each authenticated operator a
    L{ColoredManhole} over C{namespace}; connections that have not logged
    in after C{LOGIN_TIMEOUT} seconds on C{clock} are closed.
    """
    realm = TerminalRealm()
    realm.sessionFactory = _Session
    realm.chainedProtocolFactory = lambda: insults.ServerProtocol(
        ColoredManhole, namespace
    )
    checkers: list[ICredentialsChecker] = []
    if authorized:
        checkers.append(SSHPublicKeyChecker(AuthorizedKeys(authorized)))
    if password_hashes:
        checkers.append(HashedPasswordChecker(password_hashes))
    factory = _Factory(Portal(realm, checkers))
    factory.clock = clock
    factory.publicKeys = {host_key.sshType(): host_key.public()}
    factory.privateKeys = {host_key.sshType(): host_key}
    factory.services = {
        b"ssh-userauth": _AuditedUserAuth,
        b"ssh-connection": _Connection,
    }
    return factory
