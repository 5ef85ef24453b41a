"""
Where and how to reach the database: L{MySQLSettings}, from a URL that
never holds the password, and the password from a file of the user's own.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import attrs

from ersid.files import refuse_if_exposed

__all__ = ["MySQLSettings", "read_password_file"]


@attrs.frozen
class MySQLSettings:
    """
    Where and how to connect, from a C{mysql://USER@HOST:PORT/DB} URL (with
    C{?unix_socket=/path} for a local socket) and a password kept out of it.
    The URL may name several servers of one cluster,
    C{mysql://USER@HOST1:PORT1,HOST2:PORT2/DB}: each connection goes to the
    first of them that is up and ready.
    """

    database: str
    user: str
    hosts: tuple[tuple[str, int], ...] = (("localhost", 3306),)
    unix_socket: str | None = None
    password: str = attrs.field(default="", repr=False)

    @property
    def host(self) -> str:
        return self.hosts[0][0]

    @property
    def port(self) -> int:
        return self.hosts[0][1]

    @classmethod
    def from_url(cls, url: str, password: str = "") -> MySQLSettings:
        parts = urlsplit(url)
        userinfo, _, servers = parts.netloc.rpartition("@")
        database = unquote(parts.path[1:])
        if (
            parts.scheme != "mysql"
            or not userinfo
            or not database
            or "/" in database
            or parts.fragment
        ):
            raise ValueError(
                f"expected mysql://USER@HOST[:PORT][,HOST[:PORT]...]/DATABASE, "
                f"not {url!r}"
            )
        if ":" in userinfo:
            raise ValueError(
                "do not put the password in the URL, where the process list "
                "shows it: use --mysql-password-file or $ERSID_MYSQL_PASSWORD"
            )
        hosts = (
            (("localhost", 3306),)
            if servers == ""
            else tuple(_host(server, url) for server in servers.split(","))
        )
        query = parse_qs(parts.query, keep_blank_values=True)
        unknown = sorted(set(query) - {"unix_socket"})
        if unknown:
            raise ValueError(
                f"unknown option {unknown[0]!r} in {url!r}: the only one is unix_socket"
            )
        sockets = query.get("unix_socket", [None])
        if len(sockets) != 1 or sockets[0] == "":
            raise ValueError(f"give unix_socket once, as a path, in {url!r}")
        if sockets[0] is not None and [name for name, _ in hosts] != ["localhost"]:
            # The client library would quietly use TCP to that host instead.
            raise ValueError(
                f"with unix_socket the host is localhost, not {servers!r}, in {url!r}"
            )
        return cls(
            database=database,
            user=unquote(userinfo),
            hosts=hosts,
            unix_socket=sockets[0],
            password=password,
        )

    def connect_arguments(self) -> dict[str, Any]:
        """
        The keyword arguments of L{ersid.mysql.connecting.connect}.
        """
        arguments: dict[str, Any] = {
            "db": self.database,
            "user": self.user,
            "passwd": self.password,
            "hosts": self.hosts,
            "charset": "utf8mb4",
            "connect_timeout": 3,
            "read_timeout": 5,
            "write_timeout": 5,
            # UTC: expiry times are DATETIMEs compared with NOW(6), and
            # turned into Unix times, without a daylight-saving hour's doubt.
            "init_command": (
                "SET SESSION innodb_lock_wait_timeout = 3, time_zone = '+00:00'"
            ),
        }
        if self.unix_socket:
            arguments["unix_socket"] = self.unix_socket
        return arguments

    def describe(self) -> str:
        """The database for messages: C{user@host:port/database}, no password."""
        where = self.unix_socket or ",".join(
            f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.hosts
        )
        return f"{self.user}@{where}/{self.database}"

    def client_arguments(self) -> str:
        """How the C{mysql} command reaches the (first) server, as this user."""
        target = (
            f"--socket={self.unix_socket}"
            if self.unix_socket
            else f"-h {self.host} -P {self.port}"
        )
        return f"{target} -u {self.user} -p"


def _host(server: str, url: str) -> tuple[str, int]:
    """C{HOST}, C{HOST:PORT} or C{[V6]:PORT}, from a URL's list of servers."""
    try:
        parts = urlsplit(f"//{server}")
        port = 3306 if parts.port is None else parts.port
    except ValueError:
        parts = None
    if parts is None or not parts.hostname or port == 0 or server != server.strip():
        raise ValueError(f"bad server {server!r} in {url!r}")
    return unquote(parts.hostname), port


def read_password_file(path: str) -> str:
    """The password in C{path}, which only its owner may read."""
    refuse_if_exposed(path, "password file", ValueError)
    with open(path) as f:
        return f.read().rstrip("\r\n")
