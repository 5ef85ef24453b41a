"""
A throwaway three-node MariaDB Galera cluster on loopback, for tests and
benchmarks, from Debian's C{mariadb-server} and C{galera-4}: each node with
its own data directory, ports and socket under a directory given to it, as
MariaDB's own C{galera_3nodes} test suite configures one.

Nodes run as the C{mysql} user when started by root: state transfer by
C{rsync} (the quickest method) runs its daemon as an unprivileged user,
which must be able to write the data directory.
"""

from __future__ import annotations

import os
import pwd
import re
import signal
import subprocess
import time

import MySQLdb

from ersid.mysql.settings import MySQLSettings
from ersid.testing import port_for_a_server
from ersid.testing.mariadb import PASSWORD, MariaDB

__all__ = ["PROVIDER", "GaleraCluster"]

PROVIDER = "/usr/lib/galera/libgalera_smm.so"
# Quicker than Galera's defaults (5 s and 15 s), so that tests see a dead
# node evicted in seconds, yet slack enough for a loaded machine.
_SUSPECT = "PT3S"
_INACTIVE = "PT5S"


class GaleraCluster:
    """Three (or C{size}) Galera nodes; node 0 bootstrapped the cluster."""

    def __init__(self, root: str, size: int = 3) -> None:
        """
        @param root: an empty directory, which the C{mysql} user must be
            able to reach (made readable to all here, not its parents).
        """
        os.chmod(root, 0o755)
        user = "mysql" if os.geteuid() == 0 and _has_user("mysql") else None
        # Not free_port()'s: an IST listener binds only when a node rejoins,
        # by when an outgoing connection may have taken an ephemeral port.
        ports = [tuple(port_for_a_server() for _ in range(4)) for _ in range(size)]
        members = ",".join(f"127.0.0.1:{galera}" for _, galera, _, _ in ports)
        self.nodes: list[MariaDB] = []
        started = time.monotonic()
        for index, (port, galera, ist, sst) in enumerate(ports):
            options = [
                "--wsrep-on=ON",
                f"--wsrep-provider={PROVIDER}",
                f"--wsrep-cluster-address=gcomm://{members}",
                "--wsrep-cluster-name=ersid-test",
                f"--wsrep-node-name=node{index}",
                "--wsrep-node-address=127.0.0.1",
                f"--wsrep-node-incoming-address=127.0.0.1:{port}",
                "--wsrep-provider-options="
                f"base_port={galera};gmcast.listen_addr=tcp://127.0.0.1:{galera};"
                f"ist.recv_addr=127.0.0.1:{ist};gcache.size=128M;"
                f"evs.suspect_timeout={_SUSPECT};evs.inactive_timeout={_INACTIVE};"
                "evs.keepalive_period=PT0.5S;evs.inactive_check_period=PT0.5S",
                "--wsrep-sst-method=rsync",
                f"--wsrep-sst-receive-address=127.0.0.1:{sst}",
                "--wsrep-slave-threads=2",
                "--binlog-format=ROW",
                "--innodb-autoinc-lock-mode=2",
                "--innodb-log-file-size=16M",
                "--default-storage-engine=InnoDB",
            ]
            directory = os.path.join(root, f"node{index}")
            os.mkdir(directory)
            try:
                node = MariaDB(
                    directory,
                    options,
                    user=user,
                    port=port,
                    install=index == 0,
                    first_start=["--wsrep-new-cluster"] if index == 0 else [],
                )
            except BaseException:
                self.stop()  # the nodes already started
                raise
            self.nodes.append(node)
        #: Seconds the cluster took to start, all nodes synced.
        self.startup_seconds = time.monotonic() - started

    def settings(self, *nodes: int) -> MySQLSettings:
        """Settings reaching the C{nodes} over TCP, tried in that order."""
        hosts = tuple(("127.0.0.1", self.nodes[i].port) for i in nodes or (0,))
        return MySQLSettings("ersid", "ersid", hosts=hosts, password=PASSWORD)

    def fresh_database(self) -> MySQLSettings:
        """
        A new C{ersid} database from the schema, which replicates; settings
        reaching every node, the first first.
        """
        self.nodes[0].as_root("DROP DATABASE IF EXISTS ersid")
        self.nodes[0].run_schema()
        self.wait_synced()
        return self.settings(*range(len(self.nodes)))

    def url(self, *nodes: int) -> str:
        """C{--mysql-url} for the C{nodes}, tried in that order."""
        hosts = ",".join(f"127.0.0.1:{self.nodes[i].port}" for i in nodes)
        return f"mysql://ersid@{hosts}/ersid"

    def status(self, node: int, name: str) -> str:
        """A C{wsrep_} status variable of a running node."""
        connection = MySQLdb.connect(unix_socket=self.nodes[node].socket, user="root")
        try:
            cursor = connection.cursor()
            cursor.execute("SHOW STATUS LIKE %s", (name,))
            row = cursor.fetchone()
            return "" if row is None else str(row[1])
        finally:
            connection.close()

    def wait_for(self, node: int, name: str, value: str, timeout: float = 60) -> None:
        """Block until a status variable of C{node} reads C{value}."""
        deadline = time.monotonic() + timeout
        seen = None
        while time.monotonic() < deadline:
            try:
                seen = self.status(node, name)
            except MySQLdb.Error as e:
                seen = str(e)
            if seen == value:
                return
            time.sleep(0.1)
        raise RuntimeError(f"node{node}: {name} is {seen!r}, not {value!r}")

    def running(self) -> list[int]:
        return [i for i, node in enumerate(self.nodes) if node.process is not None]

    def wait_synced(self) -> None:
        """Block until every running node is synced in one cluster of them all."""
        alive = self.running()
        for i in alive:
            self.wait_for(i, "wsrep_cluster_size", str(len(alive)))
            self.wait_for(i, "wsrep_local_state_comment", "Synced")

    def kill(self, node: int) -> None:
        """SIGKILL a node, as a crash or a power cut would."""
        self.nodes[node].kill()

    def pause(self, node: int) -> None:
        """SIGSTOP a node: to the others it is as if cut off by the network."""
        assert self.nodes[node].process is not None
        self.nodes[node].process.send_signal(signal.SIGSTOP)

    def resume(self, node: int) -> None:
        assert self.nodes[node].process is not None
        self.nodes[node].process.send_signal(signal.SIGCONT)

    def restart(self, node: int) -> None:
        """
        Start a killed node again from its recovered position, so that it
        rejoins by incremental state transfer, as systemd's unit would
        (without it, a crashed node asks for a full copy).
        """
        server = self.nodes[node]
        log = os.path.join(server.root, "recover.log")
        subprocess.run(
            ["mariadbd", *server.arguments(), "--wsrep-recover", f"--log-error={log}"],
            capture_output=True,
            timeout=120,
        )
        with open(log, errors="replace") as recovered:
            found = re.search(r"Recovered position: (\S+:-?\d+)", recovered.read())
        extra = [f"--wsrep-start-position={found.group(1)}"] if found else []
        server.start(extra)

    def stop(self) -> None:
        """Stop every node, the first (which bootstrapped) last."""
        for server in reversed(self.nodes):
            try:
                if server.process is not None:
                    server.process.send_signal(signal.SIGCONT)
                server.stop()
            except subprocess.TimeoutExpired:
                server.kill()


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
