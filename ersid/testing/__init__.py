"""
Support for Ersid's tests and benchmarks, which both use it: loopback
ports chosen by the OS, and throwaway MariaDB servers (C{mariadb}).
"""

from __future__ import annotations

import socket

__all__ = ["free_port", "free_port_holder"]


def free_port_holder() -> tuple[socket.socket, int]:
    """A listening socket on a loopback port chosen by the OS, and the port."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    return holder, holder.getsockname()[1]


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    holder, port = free_port_holder()
    holder.close()
    return port
