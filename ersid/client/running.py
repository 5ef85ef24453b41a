"""
C{ersid lock}'s other half: running a command while a L{Lock} is held, and
ending it if the lock is lost.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from ersid.client.errors import ClientError, LockLost
from ersid.client.locking import Lock, LockRequest

__all__ = ["EXIT_CANNOT_RUN", "EXIT_LOCK_LOST", "run_locked"]

EXIT_LOCK_LOST = 9
EXIT_CANNOT_RUN = 127
# Signals passed on to the command, which ends as it sees fit.
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# Seconds a command told to end, its lock lost, has before it is killed.
_GRACE = 5.0


class _Command(ProcessProtocol):
    """A command's process, sharing our standard input, output and error."""

    def __init__(self) -> None:
        self.ended: Deferred[int] = Deferred()

    def processEnded(self, reason: Failure) -> None:
        status = reason.value
        signalled = getattr(status, "signal", None)
        self.ended.callback(128 + signalled if signalled else status.exitCode or 0)


async def run_locked(request: LockRequest, argv: list[str], reactor: Any) -> int:
    """
    Take the lock C{request} asks for, run C{argv} holding it, then release
    it: the command's exit status, or L{EXIT_LOCK_LOST} if the lock was
    lost (the command is then ended), or L{EXIT_CANNOT_RUN}; 128 + N if
    signal N came while waiting. The command finds the lock's token in
    C{$ERSID_LOCK_TOKEN}; the signals that come while it runs are its own.
    """
    run = _Run(reactor)
    # After the reactor's own handlers, installed as it starts, or they win.
    await deferLater(reactor, 0, lambda: None)
    previous = {number: signal.signal(number, run.signalled) for number in _FORWARDED}
    try:
        return await run.run(request, argv)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


class _Run:
    """One command, run holding a lock, and the signals that come meanwhile."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._waiting: Deferred[Lock] | None = None
        self._process: Any = None
        self._signal: int | None = None
        self._lost: list[LockLost] = []

    def signalled(self, number: int, frame: Any) -> None:
        self._reactor.callFromThread(self._pass_on, number)

    def _pass_on(self, number: int) -> None:
        self._signal = number
        if self._process is not None:
            self._send(signal.Signals(number).name[3:])
        elif self._waiting is not None:
            self._waiting.cancel()

    def _send(self, name: str) -> None:
        try:
            self._process.signalProcess(name)
        except ProcessExitedAlready:
            pass

    async def run(self, request: LockRequest, argv: list[str]) -> int:
        executable = shutil.which(argv[0])
        if executable is None:
            print(f"ersid: cannot run {argv[0]!r}: no such command", file=sys.stderr)
            return EXIT_CANNOT_RUN
        self._waiting = request.acquire()
        try:
            lock = await self._waiting
        except CancelledError:
            assert self._signal is not None
            return 128 + self._signal
        if self._signal is not None:
            await self._release(lock)
            return 128 + self._signal
        command = _Command()
        environment = dict(os.environ, ERSID_LOCK_TOKEN=str(lock.token))
        self._process = self._reactor.spawnProcess(
            command, executable, argv, environment, childFDs={0: 0, 1: 1, 2: 2}
        )
        lock.lost.addCallback(self._on_lost)
        status = await command.ended
        await self._release(lock)
        return EXIT_LOCK_LOST if self._lost else status

    def _on_lost(self, error: LockLost) -> None:
        self._lost.append(error)
        print(f"ersid: {error}; ending the command", file=sys.stderr)
        self._send("TERM")
        self._reactor.callLater(_GRACE, self._send, "KILL")

    async def _release(self, lock: Lock) -> None:
        """Free the lock; if the server cannot be told, it frees itself."""
        try:
            await lock.release()
        except ClientError as e:
            print(
                f"ersid: could not free the lock ({e}); it expires in its TTL",
                file=sys.stderr,
            )
