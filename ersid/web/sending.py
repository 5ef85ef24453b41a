"""
Sending a response: at once when the socket can take it, which twisted.web
and Twisted's transports do not do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import tcp

__all__ = ["writer"]


def writer(transport: Any) -> Callable[[bytes], None]:
    """
    How to send bytes on C{transport}: at once when it is a TCP connection
    with nothing waiting to be sent.

    A transport's C{write} only buffers; the bytes go at the reactor's next
    turn, at the price of two C{epoll_ctl} calls and a dispatch: a third
    of the cost of a small request. Sending at once needs to know that
    nothing written before is still waiting, which Twisted tells only in
    private attributes: C{dataBuffer} and C{_tempDataLen} (pinned by
    tests/test_twisted.py). Anything else, TLS included, is written.
    """
    if not isinstance(transport, tcp.Connection):
        return transport.write

    def write(data: bytes) -> None:
        if not transport.dataBuffer and not transport._tempDataLen:
            sent = transport.writeSomeData(data)
            if sent == len(data):
                return
            if isinstance(sent, int):
                data = data[sent:]
        transport.write(data)

    return write
