"""
A throwaway MariaDB server for the tests: its own data directory, socket
and loopback port under a temporary directory, stopped when the tests end.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile

import MySQLdb

from ersid.mysql import MySQLSettings

from ._helpers import CHECKOUT, free_port_holder, require

INSTALL_HINT = (
    "needs a MariaDB server: apt-get install mariadb-server libmariadb-dev "
    "pkg-config (bin/dev test does this as root)"
)
PASSWORD = "ersid-test-password"


class MariaDB:
    """One mariadbd process, with a database and an C{ersid} user."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.data = os.path.join(root, "data")
        self.socket = os.path.join(root, "mysqld.sock")
        holder, self.port = free_port_holder()
        holder.close()
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
        self._as_root("CREATE USER 'ersid'@'localhost' IDENTIFIED BY %s", PASSWORD)
        self._as_root("CREATE USER 'ersid'@'127.0.0.1' IDENTIFIED BY %s", PASSWORD)
        self._as_root("GRANT ALL ON ersid.* TO 'ersid'@'localhost'")
        self._as_root("GRANT ALL ON ersid.* TO 'ersid'@'127.0.0.1'")

    def _as_root(self, statement: str, *args: str) -> None:
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
        self._as_root("DROP DATABASE IF EXISTS ersid")
        with open(os.path.join(CHECKOUT, "mysql_schema.sql"), "rb") as schema:
            subprocess.run(
                ["mariadb", f"--socket={self.socket}", "-u", "root"],
                stdin=schema,
                check=True,
            )
        return self.settings()

    def settings(self, tcp: bool = False) -> MySQLSettings:
        if tcp:
            return MySQLSettings(
                "ersid", "ersid", "127.0.0.1", self.port, None, PASSWORD
            )
        return MySQLSettings(
            "ersid", "ersid", unix_socket=self.socket, password=PASSWORD
        )


_shared: MariaDB | None = None


def shared_server() -> MariaDB:
    """
    The MariaDB server shared by the tests of one run, started on first use;
    the test calling this fails, saying what to install, without one.
    """
    global _shared
    require(
        bool(shutil.which("mariadbd") and shutil.which("mariadb-install-db")),
        INSTALL_HINT,
    )
    if _shared is None:
        root = tempfile.mkdtemp(prefix="ersid-mariadb-")
        _shared = MariaDB(root)
        atexit.register(_shared.stop)
        atexit.register(shutil.rmtree, root, True)
    return _shared


def private_server(test) -> MariaDB:
    """A MariaDB server of the calling test's own, stopped after it."""
    require(
        bool(shutil.which("mariadbd") and shutil.which("mariadb-install-db")),
        INSTALL_HINT,
    )
    # Not under _trial_temp: socket paths must stay under 108 bytes.
    root = tempfile.mkdtemp(prefix="ersid-mariadb-")
    test.addCleanup(shutil.rmtree, root, True)
    server = MariaDB(root)
    test.addCleanup(server.kill)
    return server
