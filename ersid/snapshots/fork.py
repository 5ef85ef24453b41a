"""
Work done in a forked child, as Redis's C{BGSAVE} does: the child sees the
parent's memory as it was at the instant of the fork (copy-on-write) while
the parent's reactor goes on serving, paying only for the fork itself.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import sys
from collections.abc import Callable, Collection
from typing import Any, NoReturn

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.threads import deferToThreadPool

__all__ = ["CAN_FORK", "ChildFailed", "in_child"]

CAN_FORK = sys.platform == "linux"

_PR_SET_PDEATHSIG = 1


class ChildFailed(Exception):
    """The forked child failed; the message is its reason."""


def in_child(
    reactor: IReactorThreads,
    work: Callable[[], dict[str, Any]],
    keep: Collection[int] = (),
) -> tuple[int, Deferred[dict[str, Any]]]:
    """
    Run C{work} in a forked child at the lowest priority: the child's
    process ID, and a Deferred firing with what C{work} returns (a JSON
    object), or failing with L{ChildFailed}. The kernel kills the child if
    the parent dies. The child closes every file it inherits but the
    descriptors in C{keep} (a backup's socket, say).
    """
    report, report_end = os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        os.close(report)
        _child(work, parent, report_end, keep)
    os.close(report_end)
    pool = reactor.getThreadPool()
    return pid, deferToThreadPool(reactor, pool, _wait_for_child, pid, report)


def _die_with_parent(parent: int) -> None:
    """
    Have the kernel kill this forked child if its parent dies: an orphan
    snapshot writer would otherwise rename an old snapshot over one written
    after a restart.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)


def _close_inherited(keep: Collection[int]) -> None:
    """
    Close what the child inherited but the parent owns (sockets, the
    journal, the locks on the data directory): a child the kernel has not
    yet killed after its parent died must not hold them up for the next
    daemon.
    """
    most = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if most == resource.RLIM_INFINITY:
        most = 1 << 20
    start = 3
    for descriptor in sorted(keep):
        os.closerange(start, descriptor)
        start = max(start, descriptor + 1)
    os.closerange(start, max(most, start))


def _child(
    work: Callable[[], dict[str, Any]],
    parent: int,
    report: int,
    keep: Collection[int],
) -> NoReturn:
    """The forked child: do the work, report how it went, and leave."""
    status = 1
    try:
        _die_with_parent(parent)
        _close_inherited({report, *keep})
        # Background work: on a busy core, serving requests comes first.
        # At nice 10 its time slices pushed the daemon's p99 under load to
        # 2-2.8 times the quiet figure in some benchmark runs; at 19 it gets
        # about 1.5% of a saturated core.
        os.nice(19)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        try:
            outcome = work()
            status = 0
        except OSError as e:
            outcome = {"error": e.strerror or str(e)}
        except Exception as e:
            outcome = {"error": str(e) or repr(e)}
        os.write(report, json.dumps(outcome).encode("utf-8"))
    finally:
        os._exit(status)


def _wait_for_child(pid: int, report: int) -> dict[str, Any]:
    """In a thread: the child's report, once it has exited."""
    chunks = []
    while chunk := os.read(report, 65536):
        chunks.append(chunk)
    os.close(report)
    _, status = os.waitpid(pid, 0)
    try:
        outcome = json.loads(b"".join(chunks))
    except ValueError:
        raise ChildFailed(f"the forked process died (wait status {status})") from None
    if "error" in outcome:
        raise ChildFailed(outcome["error"])
    return outcome
