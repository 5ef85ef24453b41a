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

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from ersid.client.errors import LockLost
from ersid.client.locking import Lock

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


async def run_locked(lock: Lock, argv: list[str], reactor: Any) -> int:
    """
    Run C{argv} holding C{lock}, then release it: the command's exit status,
    or L{EXIT_LOCK_LOST} if the lock was lost (the command is then ended),
    or L{EXIT_CANNOT_RUN}. The command finds the lock's token in
    C{$ERSID_LOCK_TOKEN}.
    """
    executable = shutil.which(argv[0])
    if executable is None:
        await lock.release()
        print(f"ersid: cannot run {argv[0]!r}: no such command", file=sys.stderr)
        return EXIT_CANNOT_RUN
    command = _Command()
    environment = dict(os.environ, ERSID_LOCK_TOKEN=str(lock.token))
    process = reactor.spawnProcess(
        command, executable, argv, environment, childFDs={0: 0, 1: 1, 2: 2}
    )

    def signal_command(name: str) -> None:
        try:
            process.signalProcess(name)
        except ProcessExitedAlready:
            pass

    def forward(number: int, frame: Any) -> None:
        reactor.callFromThread(signal_command, signal.Signals(number).name[3:])

    lost: list[LockLost] = []

    def on_lost(error: LockLost) -> None:
        lost.append(error)
        print(f"ersid: {error}; ending the command", file=sys.stderr)
        signal_command("TERM")
        reactor.callLater(_GRACE, signal_command, "KILL")

    previous = {number: signal.signal(number, forward) for number in _FORWARDED}
    lock.lost.addCallback(on_lost)
    try:
        status = await command.ended
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        await lock.release()
    return EXIT_LOCK_LOST if lost else status
