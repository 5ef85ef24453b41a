"""
A throwaway MariaDB server for tests and benchmarks: its own data
directory, socket and loopback port under a directory given to it.
"""

from __future__ import annotations

import os
import pwd
import signal
import socket
import subprocess
import time
from collections.abc import Sequence

import MySQLdb

from ersid.mysql.schema import SCHEMA_FILE
from ersid.mysql.settings import MySQLSettings
from ersid.testing import free_port

__all__ = ["PASSWORD", "MariaDB"]

PASSWORD = "ersid-test-password"


class MariaDB:
    """One mariadbd process, with a database and an C{ersid} user."""

    def __init__(
        self,
        root: str,
        options: Sequence[str] = (),
        *,
        user: str | None = None,
        port: int | None = None,
        install: bool = True,
        first_start: Sequence[str] = (),
    ) -> None:
        """
        Make the data directory (unless C{install} is false: a Galera node
        that joins gets it by state transfer), start the server with the
        extra C{options} (and C{first_start} this first time), and add the
        C{ersid} user if installed here.

        @param user: the system user mariadbd runs as, owning the data
            directory; by default the current one.
        """
        self.root = root
        self.data = os.path.join(root, "data")
        self.socket = os.path.join(root, "mysqld.sock")
        self.port = free_port() if port is None else port
        self.process: subprocess.Popen[bytes] | None = None
        if user is None and os.geteuid() == 0:
            user = "root"
        self._arguments = [
            "--no-defaults",
            f"--datadir={self.data}",
            *([f"--user={user}"] if user else []),
        ]
        self._options = list(options)
        if user not in (None, "root"):
            os.makedirs(self.data, exist_ok=True)
            owner = pwd.getpwnam(user)
            for path in (root, self.data):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        if install:
            installed = subprocess.run(
                [
                    "mariadb-install-db",
                    *self._arguments,
                    f"--tmpdir={root}",
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            if installed.returncode:
                raise RuntimeError(
                    f"mariadb-install-db failed:\n{installed.stdout[-2000:].decode()}"
                )
        self.start(first_start)
        try:
            if install:
                for host in ("localhost", "127.0.0.1"):
                    self.as_root(
                        f"CREATE USER 'ersid'@'{host}' IDENTIFIED BY %s", PASSWORD
                    )
                    self.as_root(f"GRANT ALL ON ersid.* TO 'ersid'@'{host}'")
        except BaseException:
            self.kill()
            raise

    def as_root(self, statement: str, *args: str) -> None:
        """Run one statement as the server's root user."""
        connection = MySQLdb.connect(unix_socket=self.socket, user="root")
        try:
            connection.cursor().execute(statement, args or None)
        finally:
            connection.close()

    def start(self, extra: Sequence[str] = ()) -> None:
        """
        Start mariadbd, with C{extra} options this time, and wait for its
        systemd-style READY notice (a Galera node sends it once synced).
        """
        notify_path = os.path.join(self.root, "notify")
        if os.path.exists(notify_path):
            os.unlink(notify_path)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
            notify.bind(notify_path)
            # mariadbd may run as another user, who must be able to write.
            os.chmod(notify_path, 0o666)
            notify.settimeout(1)
            self.process = subprocess.Popen(
                ["mariadbd", *self.arguments(), *extra],
                env={**os.environ, "NOTIFY_SOCKET": notify_path},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    if b"READY=1" in notify.recv(4096):
                        return
                except TimeoutError:
                    if self.process.poll() is not None:
                        break
            self.kill()
            raise RuntimeError(f"mariadbd did not start:\n{self.log_tail()}")

    def arguments(self) -> list[str]:
        """The options of every start of mariadbd."""
        return [
            *self._arguments,
            f"--socket={self.socket}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            f"--pid-file={os.path.join(self.root, 'mariadbd.pid')}",
            f"--log-error={os.path.join(self.root, 'error.log')}",
            "--innodb-buffer-pool-size=32M",
            "--skip-name-resolve",
            f"--tmpdir={self.root}",
            *self._options,
        ]

    def log_tail(self) -> str:
        """The end of the server's error log, for messages."""
        try:
            with open(os.path.join(self.root, "error.log"), errors="replace") as log:
                return log.read()[-2000:]
        except OSError as e:
            return str(e)

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
                "ersid", "ersid", (("127.0.0.1", self.port),), password=PASSWORD
            )
        return MySQLSettings(
            "ersid", "ersid", unix_socket=self.socket, password=PASSWORD
        )
