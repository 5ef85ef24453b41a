"""
A throwaway MariaDB server for tests and benchmarks: its own data
directory, socket and loopback port under a directory given to it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess

import MySQLdb

from ersid.mysql.schema import SCHEMA_FILE
from ersid.mysql.settings import MySQLSettings
from ersid.testing import free_port

__all__ = ["PASSWORD", "MariaDB"]

PASSWORD = "ersid-test-password"


class MariaDB:
    """One mariadbd process, with a database and an C{ersid} user."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.data = os.path.join(root, "data")
        self.socket = os.path.join(root, "mysqld.sock")
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        arguments = ["--no-defaults", f"--datadir={self.data}"]
        if os.geteuid() == 0:
            arguments.append("--user=root")
        subprocess.run(
            [
                "mariadb-install-db",
                *arguments,
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._arguments = arguments
        self.start()
        self.as_root("CREATE USER 'ersid'@'localhost' IDENTIFIED BY %s", PASSWORD)
        self.as_root("CREATE USER 'ersid'@'127.0.0.1' IDENTIFIED BY %s", PASSWORD)
        self.as_root("GRANT ALL ON ersid.* TO 'ersid'@'localhost'")
        self.as_root("GRANT ALL ON ersid.* TO 'ersid'@'127.0.0.1'")

    def as_root(self, statement: str, *args: str) -> None:
        """Run one statement as the server's root user."""
        connection = MySQLdb.connect(unix_socket=self.socket, user="root")
        try:
            connection.cursor().execute(statement, args or None)
        finally:
            connection.close()

    def start(self) -> None:
        """Start mariadbd and wait for its systemd-style READY notice."""
        notify_path = os.path.join(self.root, "notify")
        if os.path.exists(notify_path):
            os.unlink(notify_path)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
            notify.bind(notify_path)
            notify.settimeout(1)
            self.process = subprocess.Popen(
                [
                    "mariadbd",
                    *self._arguments,
                    f"--socket={self.socket}",
                    f"--port={self.port}",
                    "--bind-address=127.0.0.1",
                    f"--pid-file={os.path.join(self.root, 'mariadbd.pid')}",
                    f"--log-error={os.path.join(self.root, 'error.log')}",
                    "--innodb-buffer-pool-size=32M",
                    "--skip-name-resolve",
                ],
                env={**os.environ, "NOTIFY_SOCKET": notify_path},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(120):
                try:
                    if b"READY=1" in notify.recv(4096):
                        return
                except TimeoutError:
                    if self.process.poll() is not None:
                        break
            with open(os.path.join(self.root, "error.log")) as log:
                tail = log.read()[-2000:]
            raise RuntimeError(f"mariadbd did not start:\n{tail}")

    def stop(self) -> None:
        """Stop mariadbd cleanly and wait for it to exit. Blocking."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(60)
        self.process = None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(60)
        self.process = None

    def fresh_database(self) -> MySQLSettings:
        """
        Drop and recreate the C{ersid} database from C{mysql_schema.sql}, as
        a user would, and return settings to reach it over the socket.
        """
        self.as_root("DROP DATABASE IF EXISTS ersid")
        self.run_schema()
        return self.settings()

    def run_schema(self) -> None:
        """Run C{mysql_schema.sql} as root, as a user does, with the client."""
        with open(SCHEMA_FILE, "rb") as schema:
            subprocess.run(
                ["mariadb", f"--socket={self.socket}", "-u", "root"],
                stdin=schema,
                check=True,
            )

    def settings(self, tcp: bool = False) -> MySQLSettings:
        if tcp:
            return MySQLSettings(
                "ersid", "ersid", "127.0.0.1", self.port, None, PASSWORD
            )
        return MySQLSettings(
            "ersid", "ersid", unix_socket=self.socket, password=PASSWORD
        )
