"""
Snapshots streamed, for online backups (C{GET /_snapshot}): L{IBackups},
what a backend offers, opens an L{ISnapshotStream} of the store at one
revision, which writes the snapshot document, as L{Layout} lays it out,
no faster than its consumer takes it. L{ForkedBackups} is the dict
backend's: a child forked at that instant writes it into a socket.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer, IReactorSocket, IReactorThreads
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

from ersid.snapshots.fork import ChildFailed, in_child
from ersid.snapshots.writer import write_layout
from ersid.storage import Record

__all__ = ["BackupFailed", "ForkedBackups", "IBackups", "ISnapshotStream"]

# A durable image of the store: its revision, and its records as they are
# at the instant of the call, which must not change until they are read.
Image = Callable[[], tuple[int, Iterable[tuple[str, Record]]]]


class BackupFailed(Exception):
    """A snapshot being streamed could not be finished; the message says why."""


class ISnapshotStream(IPushProducer):
    """
    One snapshot of the store at L{revision}, written once to a consumer
    that pauses and resumes it as it can take more.
    """

    revision = Attribute("The revision it holds: every change up to it, none after.")

    def start(write: Callable[[bytes], object]) -> Deferred[None]:
        """
        Write the snapshot document with C{write}, a piece at a time, while
        not paused.

        @return: a Deferred firing once the whole document is written, or
            failing with L{BackupFailed} if it cannot be finished; cancelling
            it stops the stream and frees what it holds.
        """


class IBackups(Interface):
    """A backend's online backups."""

    def open() -> Deferred[ISnapshotStream]:
        """
        A stream of the store as it is now. Call L{ISnapshotStream.start}
        or L{IPushProducer.stopProducing} on it, once: it holds a process
        or a database connection until then.
        """


@implementer(IBackups)
class ForkedBackups:
    """
    Backups of a store held in memory: each is written by a child forked
    at the instant it is asked for, from C{image}, as the periodic
    snapshots are (copy-on-write, at C{nice 19}), into one end of a Unix
    socket pair whose other end the daemon relays to its client: the child
    blocks when the client does not read, so nothing piles up in the daemon
    and no file is left behind.
    """

    def __init__(self, image: Image, reactor: IReactorSocket & IReactorThreads) -> None:
        self._image = image
        self._reactor = reactor

    def open(self) -> Deferred[ISnapshotStream]:
        ours, theirs = socket.socketpair()
        try:
            # Taken in the same reactor turn as the fork: nothing can
            # change between the two.
            revision, items = self._image()
            sending = theirs.fileno()

            def work() -> dict[str, Any]:
                with open(sending, "wb", buffering=1 << 16) as out:
                    keys, size = write_layout(out.write, revision, items)
                return {"keys": keys, "bytes": size}

            pid, reported = in_child(self._reactor, work, keep=[sending])
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return succeed(_ForkedStream(self._reactor, revision, pid, reported, ours))


@implementer(ISnapshotStream)
class _ForkedStream:
    """The socket a forked child writes a snapshot into, relayed."""

    def __init__(
        self,
        reactor: IReactorSocket,
        revision: int,
        pid: int,
        reported: Deferred[dict[str, Any]],
        sock: socket.socket,
    ) -> None:
        self.revision = revision
        self._reactor = reactor
        self._pid: int | None = pid
        self._reported = reported
        self._socket: socket.socket | None = sock
        self._relay: _Relay | None = None
        self._stopped = False
        self._done: Deferred[None] = Deferred(lambda _: self.stopProducing())

    def start(self, write: Callable[[bytes], object]) -> Deferred[None]:
        assert self._socket is not None, "a stream is started once"
        self._relay = _Relay(write, self._ended)
        self._reactor.adoptStreamConnection(
            self._socket.fileno(),
            socket.AF_UNIX,
            Factory.forProtocol(lambda: self._relay),
        )
        # Adopting duplicated it: the transport has its own.
        self._socket.close()
        self._socket = None
        return self._done

    def _ended(self, reason: Failure, received: int) -> None:
        """The child closed its end: it finished, or died."""
        if self._stopped:
            return
        self._pid = None
        if not reason.check(ConnectionDone):
            self._fail(BackupFailed(f"the snapshot could not be read: {reason.value}"))
            return

        def check(outcome: dict[str, Any]) -> None:
            if outcome["bytes"] != received:
                problem = f"{received} of its {outcome['bytes']} bytes arrived"
                raise BackupFailed(f"the snapshot was cut short: {problem}")
            if not self._done.called:
                self._done.callback(None)

        self._reported.addCallback(check).addErrback(self._failed)

    def _failed(self, failure: Failure) -> None:
        if failure.check(ChildFailed):
            self._fail(BackupFailed(f"the snapshot's writer failed: {failure.value}"))
        else:
            self._fail(failure.value)

    def _fail(self, error: BaseException) -> None:
        if not self._done.called:
            self._done.errback(error)

    def pauseProducing(self) -> None:
        if self._relay is not None and self._relay.transport is not None:
            self._relay.transport.pauseProducing()

    def resumeProducing(self) -> None:
        if self._relay is not None and self._relay.transport is not None:
            self._relay.transport.resumeProducing()

    def stopProducing(self) -> None:
        """Kill the child and close the socket: its client has gone."""
        if self._stopped:
            return
        self._stopped = True
        if self._pid is not None:
            try:
                os.kill(self._pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._pid = None
        # The thread that waits for it reports it killed: nothing to say.
        self._reported.addErrback(lambda _: None)
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        if self._relay is not None:
            if self._relay.transport is not None:
                self._relay.transport.abortConnection()
            self._fail(CancelledError("the snapshot's client has gone"))


class _Relay(Protocol):
    """Hands what the child writes to C{write}; tells C{ended} of the end."""

    def __init__(
        self,
        write: Callable[[bytes], object],
        ended: Callable[[Failure, int], None],
    ) -> None:
        self._write = write
        self._ended = ended
        self._received = 0

    def dataReceived(self, data: bytes) -> None:
        self._received += len(data)
        self._write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._ended(reason, self._received)
