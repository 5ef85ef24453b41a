"""
Support for Ersid's tests and benchmarks, which both use it: loopback
ports chosen by the OS, and throwaway MariaDB servers (C{mariadb}).
"""

from __future__ import annotations

import random
import socket

__all__ = ["free_port", "free_port_holder", "port_for_a_server"]


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


def port_for_a_server() -> int:
    """
    A loopback port free a moment ago, below the range the OS gives
    outgoing connections: a server that binds it later (Galera's IST and
    state transfer listeners bind only when needed) finds it still free.
    """
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    while True:
        port = random.randrange(max(1024, low - 12000), low)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
