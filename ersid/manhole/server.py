"""
The manhole's SSH server: a colored Python prompt inside the running
daemon for each operator who logs in, every login and refusal logged.

The log says one line per event: a login, a refusal, a session's end, a
connection that never logged in, a request refused (a command, a
subsystem, port forwarding). Conch's own account of each step, and its
tracebacks for requests the manhole does not serve, stay out of it.
"""

from __future__ import annotations

import struct
from typing import Any

from twisted.conch import error as conch_error
from twisted.conch.checkers import SSHPublicKeyChecker
from twisted.conch.insults import insults
from twisted.conch.interfaces import IConchUser, ISession
from twisted.conch.manhole import ColoredManhole
from twisted.conch.manhole_ssh import (
    ConchFactory,
    TerminalRealm,
    TerminalSession,
    TerminalUser,
)
from twisted.conch.ssh import common, keys
from twisted.conch.ssh.connection import SSHConnection
from twisted.conch.ssh.session import (
    SSHSession,
    SSHSessionProcessProtocol,
    parseRequest_pty_req,
)
from twisted.conch.ssh.transport import DISCONNECT_BY_APPLICATION, SSHServerTransport
from twisted.conch.ssh.userauth import SSHUserAuthServer
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger, LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from ersid.manhole.credentials import AuthorizedKeys, HashedPasswordChecker

__all__ = ["makeFactory"]

_log = Logger()


def _conch_refusal(failure: Failure) -> str:
    """Why Conch refused a request, from its C{ConchError(value, data)}."""
    error = failure.value
    # Some are raised (code, text), others (text, code): see Conch's #3657.
    if isinstance(error.value, int) and error.data:
        return str(error.data)
    return str(error.value)


def _warnings_and_worse(event: dict[str, Any]) -> None:
    if event["log_level"] < LogLevel.warn:
        return
    failure = event.get("log_failure")
    if failure is not None and failure.check(conch_error.ConchError):
        # Conch refusing what a client asked (a channel the manhole does
        # not serve, say) is no error, and needs no traceback.
        _log.info(
            "Manhole refused a client's request ({what}): {why}",
            what=formatEvent(event),
            why=_conch_refusal(failure),
        )
        return
    globalLogPublisher(event)


def _errors_and_worse(event: dict[str, Any]) -> None:
    if event["log_level"] >= LogLevel.error:
        globalLogPublisher(event)


# Conch tells of every step of every SSH session at debug and info level,
# some twenty lines a login; the manhole logs logins and their end itself.
# Its classes log through a class attribute, _log (tests/test_twisted.py
# and tests/manhole/test_manhole_log.py pin it), which these subclasses
# replace.
_quiet = Logger(observer=_warnings_and_worse)


# Seconds a connection may take to log in before it is closed: one that
# never does would otherwise hold its place for ever.
LOGIN_TIMEOUT = 60.0


class _Transport(SSHServerTransport):
    """
    The SSH connection: closed if it has not logged in within
    C{LOGIN_TIMEOUT}, and its end logged in one line, however it ends.
    """

    _log = _quiet
    _login_timer: IDelayedCall | None = None
    _in = False
    _end_said = False

    def connectionMade(self) -> None:
        super().connectionMade()
        clock = self.factory.clock
        self._login_timer = clock.callLater(LOGIN_TIMEOUT, self._too_slow)

    def logged_in(self) -> None:
        """The client has logged in: it may stay."""
        self._in = True
        self._stop_timer()

    def _stop_timer(self) -> None:
        if self._login_timer is not None and self._login_timer.active():
            self._login_timer.cancel()
        self._login_timer = None

    def _too_slow(self) -> None:
        self._login_timer = None
        self._say_end("did not log in within {seconds:.0f} s", seconds=LOGIN_TIMEOUT)
        self.transport.loseConnection()

    def _say_end(self, how: str, **fields: Any) -> None:
        """Log, once, how the connection ended: a session, or an attempt."""
        if self._end_said:
            return
        self._end_said = True
        what = "session" if self._in else "connection"
        peer = self.transport.getPeer().host
        _log.info(f"Manhole {what} from {{peer}} {how}", peer=peer, **fields)

    def connectionLost(self, reason: Failure) -> None:
        self._stop_timer()
        if self._in:
            self._say_end("ended: the connection closed")
        else:
            self._say_end("closed before logging in")
        super().connectionLost(reason)

    def receiveError(self, reasonCode: int, description: bytes) -> None:
        """The client disconnecting, as logging out does, is no error."""
        if reasonCode == DISCONNECT_BY_APPLICATION and self._in:
            self._say_end("ended")
        else:
            self._say_end(
                "ended by the client: {why} (SSH disconnect code {code})",
                why=description.decode("utf-8", "replace"),
                code=reasonCode,
            )


class _Connection(SSHConnection):
    _log = _quiet


class _Factory(ConchFactory):
    _log = _quiet
    protocol = _Transport


class _Prompt(ColoredManhole):
    """
    The colored Python prompt. Keys it has no use for (a function key) are
    ignored, as by a terminal, rather than logged one warning a keystroke.
    """

    _log = Logger(observer=_errors_and_worse)


class _Session(TerminalSession):
    """
    A terminal session that survives what Conch's own leaves unimplemented
    (the client closing its input, resizing its window) and that ends with
    exit status 0, as a shell would, when the operator leaves.
    """

    _terminal: Any = None
    _ended = False

    def openShell(self, proto: Any) -> None:
        self._terminal = self.transportFactory(
            proto,
            self.chainedProtocolFactory(),
            IConchUser(self.original),
            self.width,
            self.height,
        )

        def leave() -> None:
            # As SSHSessionProcessProtocol.processEnded would, once, and
            # without logging "exitCode: 0" each time.
            if not self._ended:
                self._ended = True
                channel = proto.session
                channel.conn.sendRequest(channel, b"exit-status", struct.pack(">L", 0))
                channel.loseConnection()

        self._terminal.chainedProtocol.transport.loseConnection = leave

    def windowChanged(self, newWindowSize: tuple[int, ...]) -> None:
        if self._terminal is not None:
            height, width = newWindowSize[:2]
            self._terminal.chainedProtocol.terminalProtocol.terminalSize(width, height)

    def eofReceived(self) -> None:
        if self._terminal is not None:
            self._terminal.chainedProtocol.loseConnection()


class _SessionChannel(SSHSession):
    """
    A session channel that opens a terminal with the prompt and refuses,
    in one line, to run a command or a subsystem: Conch would log its
    every step, and a traceback for each refusal.
    """

    _log = _quiet

    def request_pty_req(self, data: bytes) -> int:
        term, window_size, modes = parseRequest_pty_req(data)
        self.session = ISession(self.avatar)
        self.session.getPty(term, window_size, modes)
        return 1

    def request_shell(self, data: bytes) -> int:
        if self.client is not None:
            return 0  # one shell per session
        self.session = ISession(self.avatar)
        client = SSHSessionProcessProtocol(self)
        self.session.openShell(client)
        self.client = client
        return 1

    def request_exec(self, data: bytes) -> int:
        return self._refuse("to run {asked!r}", common.getNS(data)[0])

    def request_subsystem(self, data: bytes) -> int:
        return self._refuse("the subsystem {asked!r}", common.getNS(data)[0])

    def _refuse(self, what: str, asked: bytes) -> int:
        peer = self.conn.transport.transport.getPeer().host
        _log.info(
            f"Manhole session from {{peer}} asked {what}: refused (the manhole "
            "offers a Python prompt only: ssh without a command)",
            peer=peer,
            asked=asked.decode("utf-8", "replace"),
        )
        return 0


class _User(TerminalUser):
    """An operator logged in: only sessions of the manhole's kind."""

    def __init__(self, original: Any, avatar_id: bytes) -> None:
        super().__init__(original, avatar_id)
        self.channelLookup[b"session"] = _SessionChannel


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
    realm.userFactory = _User
    realm.sessionFactory = _Session
    realm.chainedProtocolFactory = lambda: insults.ServerProtocol(_Prompt, namespace)
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
