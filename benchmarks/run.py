#!/usr/bin/env python3
"""
Measure Ersid against its peers, and against the limit of any Twisted HTTP
server on this interpreter, in one run and under the same load.

The targets: a bare httptools protocol over a dict (bare_httptools.py, the
limit), a bare twisted.web resource over a dict (bare_server.py), Ersid with
the dict backend (journal flushed every second, its default, and before
each write), Ersid with MySQL when a MariaDB server can be started and on
a three-node Galera cluster when galera-4 is installed, etcd
(v2 keys API, one core, a flush before each write) and webdis in front of
Redis (no persistence). They run side by side, each on core 0, and wrk on
core 1 loads one at a time, in slices of a few seconds: PUT and GET of
100-byte values over 1,000 keys with 50 keep-alive connections, then, for
the limit, Ersid dict, etcd and webdis, with 10 and with 500. Ersid dict also
runs with tokens (--tokens, every request bearing one with permissions on
a few prefixes), whose ratio to Ersid dict without is the cost of access
control, and with --no-metrics, Ersid dict's ratio to which is the cost of
counting for /_metrics. Before that,
what an idle keep-alive connection costs Ersid dict, etcd and webdis in
memory; after it, the cost of snapshots with 1,000,000 keys, then what
watchers cost Ersid dict (watchers.py), then what Prometheus's scrapes
cost it (metrics.py) and what counting costs a request in instructions
(counting.py, when valgrind is there), then how its keys expire
(expiry.py), then where writes should go in a Galera cluster and what a
node's death costs (galera.py). Prints tables and writes
results/latest.json and results/latest.png. Every figure has its ratio to
the limit, to etcd, to Ersid dict and to the bare twisted.web.

Usage: bin/dev bench [--duration S] [--rounds N] [--rounds-other N]
[--idle-connections N] [--idle-watchers N] [--no-scale] [--no-watch]
[--only-watch] [--no-metrics] [--only-metrics] [--no-expiry] [--only-expiry] [--no-galera] [--only-galera]
[--galera-rounds N] [--no-mysql] [--targets A,B] [--output DIR]
(--duration: seconds a slice; --rounds-other: rounds at 10 and 500
connections, 0 for none)
"""

from __future__ import annotations

import argparse
import functools
import http.client
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKOUT = os.path.dirname(HERE)
sys.path.insert(0, CHECKOUT)

from ersid.testing import free_port  # noqa: E402 (after the path is set)
from ersid.testing.galera import PROVIDER, GaleraCluster  # noqa: E402

WRK_SCRIPT = os.path.join(HERE, "wrk_mixed.lua")
# Data directories on a disk, not a tmpfs: a flush must reach one.
WORK_ROOT = "/var/tmp"
VALUE_SIZE = 100
KEYS = 1000
CONNECTIONS = 50
OTHER_CONNECTIONS = (10, 500)

LIMIT = "bare httptools (limit)"
ERSID = "ersid dict"
ERSID_TOKENS = "ersid dict tokens"
ERSID_NO_METRICS = "ersid dict no-metrics"
ETCD = "etcd"
WEBDIS = "webdis + redis"
GALERA = "ersid galera"
TWISTED_WEB = "twisted.web (bare)"
# Every figure has a ratio to each of these: "ratio_to_limit", "ratio_to_etcd",
# "ratio_to_dict" (for the cost of tokens), "ratio_to_twisted_web" (the
# ceiling the MySQL backend is held to) and "ratio_to_no_metrics" (the cost
# of counting for /_metrics).
REFERENCES = {
    "limit": LIMIT,
    "etcd": ETCD,
    "dict": ERSID,
    "twisted_web": TWISTED_WEB,
    "no_metrics": ERSID_NO_METRICS,
}
# Also measured with OTHER_CONNECTIONS.
PEERS = (LIMIT, ERSID, ETCD, WEBDIS)
# Measured for the memory an idle connection costs.
IDLE_MEASURED = (ERSID, ETCD, WEBDIS)


def _pinned(core: int, command: list[str]) -> list[str]:
    if os.cpu_count() and os.cpu_count() >= 2 and shutil.which("taskset"):
        return ["taskset", "-c", str(core), *command]
    return command


@dataclass(frozen=True)
class Process:
    """
    A server process: its command, the piece of its output that says it
    serves (None when it says nothing: its port then tells), and what it
    needs in its environment.
    """

    command: list[str]
    ready: bytes | None
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Target:
    """
    A server under load: its processes, started in this order (the last one
    answers HTTP on C{port}), and how its API spells a key's URL (the
    prefix before the key's number, per method) and a PUT's body (the
    value, or C{value=<value>} form-encoded).
    """

    name: str
    port: int
    processes: list[Process]
    get_prefix: str = "/bench/"
    put_prefix: str = "/bench/"
    put_form: bool = False
    authorization: str | None = None

    def prefix(self, method: str) -> str:
        """What comes before a key's number in the path of a C{method}."""
        return self.put_prefix if method == "PUT" else self.get_prefix

    def path(self, method: str, number: int) -> str:
        """The path of key C{number}, as wrk_mixed.lua builds it."""
        return f"{self.prefix(method)}{number:06d}"

    def load(
        self, method: str, seconds: float, connections: int = CONNECTIONS
    ) -> dict[str, float]:
        """wrk's figures for C{seconds} of C{method} requests over the keys."""
        return _wrk(
            f"http://127.0.0.1:{self.port}",
            method,
            seconds,
            connections,
            prefix=self.prefix(method),
            put_form=self.put_form,
            authorization=self.authorization,
        )

    def create_keys(self) -> None:
        """
        Write every key (1 s of PUT), then read one back. Any answer but a
        2xx, or a value that is not the one written, is a bug of the
        benchmark, not a figure: webdis, for one, answers Redis's errors
        with 200 OK.
        """
        figures = self.load("PUT", 1)
        url = f"http://127.0.0.1:{self.port}{self.path('GET', 1)}"
        request = urllib.request.Request(url)
        if self.authorization is not None:
            request.add_header("Authorization", self.authorization)
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        if figures["non_2xx"] or b"v" * VALUE_SIZE not in body:
            raise RuntimeError(
                f"{self.name}: {figures['non_2xx']:.0f} PUTs failed; "
                f"GET {url} answered {body[:300]!r}"
            )


@contextmanager
def _server(process: Process, log: str) -> Iterator[subprocess.Popen[bytes]]:
    """
    Run C{process} on core 0 until its output shows it is ready. Its output
    goes to the file C{log}: a pipe nobody reads once it is ready would fill
    up and stop a server that keeps logging.
    """
    with open(log, "wb") as output:
        popen = subprocess.Popen(
            _pinned(0, process.command),
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=CHECKOUT,
            env={**os.environ, "PYTHONPATH": CHECKOUT, **process.env},
        )
    try:
        if process.ready is not None:
            _wait_until(functools.partial(_logged, log, process.ready), popen, log)
        yield popen
    finally:
        popen.send_signal(signal.SIGTERM)
        try:
            popen.wait(120)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()


def _logged(log: str, text: bytes) -> bool:
    with open(log, "rb") as f:
        return text in f.read()


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def _wait_until(
    ready: Callable[[], bool],
    popen: subprocess.Popen[bytes],
    log: str,
    timeout: float = 300,
) -> None:
    """Poll C{ready}; fail with the server's log if it exits or takes too long."""
    deadline = time.monotonic() + timeout
    while not ready():
        if popen.poll() is not None or time.monotonic() > deadline:
            with open(log, errors="replace") as f:
                output = f.read()[-4000:]
            state = "exited" if popen.returncode is not None else "is not ready"
            raise RuntimeError(f"{popen.args} {state}:\n{output}")
        time.sleep(0.01)


def wrk_invocation(
    url: str,
    method: str,
    seconds: float,
    connections: int = CONNECTIONS,
    keys: int = KEYS,
    prefix: str = "/bench/",
    put_form: bool = False,
    authorization: str | None = None,
) -> tuple[list[str], dict[str, str]]:
    """wrk's command (on core 1) and environment, for wrk_mixed.lua."""
    command = _pinned(
        1,
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{round(seconds)}s",
            "--latency",
            "-s",
            WRK_SCRIPT,
            url,
        ],
    )
    env = {
        **os.environ,
        "WRK_METHOD": method,
        "WRK_KEYS": str(keys),
        "WRK_VALUE_SIZE": str(VALUE_SIZE),
        "WRK_PREFIX": prefix,
        "WRK_PUT_FORM": "1" if put_form else "0",
        "WRK_AUTHORIZATION": authorization or "",
    }
    return command, env


def _wrk(*args: Any, **kwargs: Any) -> dict[str, float]:
    """wrk's figures (see L{wrk_invocation} for the arguments)."""
    command, env = wrk_invocation(*args, **kwargs)
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, check=True
    ).stdout
    return parse_wrk(result)


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _milliseconds(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(number) * _UNITS[unit]


def parse_wrk(output: str) -> dict[str, float]:
    """
    wrk's figures: requests/s, latency percentiles and maximum, answers
    other than 2xx or 3xx, and socket errors (connect, read, write and
    timeout, added up).
    """
    requests = float(re.search(r"Requests/sec:\s+([\d.]+)", output)[1])
    latency = dict(re.findall(r"^\s+(50|90|99)%\s+(\S+)", output, re.M))
    maximum = re.search(r"Latency\s+\S+\s+\S+\s+(\S+)", output)[1]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    return {
        "requests_per_second": requests,
        "p50_ms": _milliseconds(latency["50"]),
        "p90_ms": _milliseconds(latency["90"]),
        "p99_ms": _milliseconds(latency["99"]),
        "max_ms": _milliseconds(maximum),
        "non_2xx": int(errors[1]) if errors else 0,
        "socket_errors": sum(map(int, socket_errors.groups())) if socket_errors else 0,
    }


def _twistd(port: int, data_dir: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-c",
        "from twisted.scripts.twistd import run; run()",
        "-n",
        "--pidfile=",
        "ersid",
        "-p",
        str(port),  # as Ersid listens by default: 127.0.0.1, backlog 1024
        "-m",
        "none",
        "-d",
        data_dir,
        *extra,
    ]


def _options(options: dict[str, str]) -> list[str]:
    """Command-line options, from their names and values."""
    return [word for option in options.items() for word in option]


def _bare(name: str, script: str) -> Target:
    """One of the bare servers of this folder, which print "listening"."""
    port = free_port()
    command = [sys.executable, os.path.join(HERE, script), str(port)]
    return Target(name, port, [Process(command, b"listening")])


def _ersid(name: str, data_dir: str, *options: str) -> Target:
    port = free_port()
    command = _twistd(port, data_dir, *options)
    return Target(name, port, [Process(command, b"REST API listening")])


def _ersid_with_tokens(name: str, data_dir: str) -> Target:
    """
    Ersid dict with a token file of a few entries, loaded with a token that
    may write bench/ and read two other prefixes: a request is checked
    against its longest matching prefix, as a deployment's would be.
    """
    from ersid.auth import add_token

    os.makedirs(data_dir)
    tokens = os.path.join(data_dir, "tokens.jsonl")
    add_token(tokens, "admin", admin=True)
    add_token(tokens, "reader", read=("config/",))
    token = add_token(tokens, "bench", read=("config/", "other/"), write=("bench/",))
    target = _ersid(name, data_dir, "--tokens", tokens)
    return Target(
        target.name, target.port, target.processes, authorization=f"Bearer {token}"
    )


def _etcd(data_dir: str) -> Target:
    """
    A one-member etcd on one core (GOMAXPROCS=1, as Ersid has one), with
    its v2 keys API, which takes a PUT's value form-encoded. It flushes
    its log before it acknowledges a write.
    """
    port, peer_port = free_port(), free_port()
    client, peer = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{peer_port}"
    command = [
        "etcd",
        "--enable-v2",
        *_options(
            {
                "--data-dir": data_dir,
                "--name": "default",
                "--listen-client-urls": client,
                "--advertise-client-urls": client,
                "--listen-peer-urls": peer,
                "--initial-advertise-peer-urls": peer,
                "--initial-cluster": f"default={peer}",
            }
        ),
    ]
    # etcd 3.4 logs "ready to serve client requests", then this once it does.
    process = Process(command, b"serving insecure client requests", {"GOMAXPROCS": "1"})
    return Target(
        ETCD,
        port,
        [process],
        get_prefix="/v2/keys/bench/",
        put_prefix="/v2/keys/bench/",
        put_form=True,
    )


def _webdis(directory: str) -> Target:
    """
    Webdis (one thread, ten connections to Redis) in front of a Redis that
    keeps nothing on disk. Webdis reads a PUT's body as the command's last
    argument (PUT /SET/key), and a slash in a path separates arguments:
    its keys are spelled bench:000001.
    """
    os.makedirs(directory)
    redis_port, port = free_port(), free_port()
    config = os.path.join(directory, "webdis.json")
    with open(config, "w") as f:
        json.dump(
            {
                "redis_host": "127.0.0.1",
                "redis_port": redis_port,
                "http_host": "127.0.0.1",
                "http_port": port,
                "threads": 1,
                # Per thread; later releases than Debian's 0.1.9 name it
                # pool_size_per_thread.
                "pool_size": 10,
                "daemonize": False,
                "verbosity": 1,
                "logfile": os.path.join(directory, "webdis.log"),
            },
            f,
        )
    redis = Process(
        [
            "redis-server",
            *_options(
                {
                    "--bind": "127.0.0.1",
                    "--port": str(redis_port),
                    "--save": "",
                    "--appendonly": "no",
                    "--dir": directory,
                }
            ),
        ],
        b"Ready to accept connections",
    )
    # Webdis logs to its own file only: its port tells when it serves.
    webdis = Process(["webdis", config], None)
    return Target(
        WEBDIS,
        port,
        [redis, webdis],
        get_prefix="/GET/bench:",
        put_prefix="/SET/bench:",
    )


def _targets(
    work: str, mysql_socket: str | None, galera_url: str | None = None
) -> list[Target]:
    """
    Every target, in the order of their slices (see L{slices}): the limit
    and Ersid dict first, MySQL and Galera last.
    """
    targets = [
        _bare(LIMIT, "bare_httptools.py"),
        _ersid(ERSID, os.path.join(work, "dict")),
        _ersid(ERSID_NO_METRICS, os.path.join(work, "dict-no-metrics"), "--no-metrics"),
        _ersid_with_tokens(ERSID_TOKENS, os.path.join(work, "dict-tokens")),
        _etcd(os.path.join(work, "etcd")),
        _webdis(os.path.join(work, "webdis")),
        _bare(TWISTED_WEB, "bare_server.py"),
        _ersid(
            "ersid dict fsync=always",
            os.path.join(work, "dict-always"),
            "--fsync",
            "always",
        ),
    ]
    if mysql_socket is not None:
        targets.append(
            _ersid(
                "ersid mysql",
                os.path.join(work, "mysql"),
                "--storage",
                "mysql",
                "--mysql-url",
                f"mysql://ersid@localhost/ersid?unix_socket={mysql_socket}",
                "-i",
                "3600",
            )
        )
    if galera_url is not None:
        targets.append(
            _ersid(
                GALERA,
                os.path.join(work, "galera"),
                *("--storage", "mysql", "--mysql-url", galera_url, "-i", "3600"),
            )
        )
    return targets


@contextmanager
def _running(targets: list[Target], work: str) -> Iterator[dict[str, int]]:
    """
    Start every target and create its keys; yield the process id of each
    one's HTTP server, by name.
    """
    pids = {}
    with ExitStack() as stack:
        for target in targets:
            slug = re.sub(r"\W+", "-", target.name)
            for number, process in enumerate(target.processes):
                log = os.path.join(work, f"{slug}.{number}.log")
                popen = stack.enter_context(_server(process, log))
            # The last process started answers HTTP.
            _wait_until(functools.partial(_accepts, target.port), popen, log)
            target.create_keys()
            pids[target.name] = popen.pid
        yield pids


def benchmark(
    seconds: float,
    rounds: int,
    rounds_other: int,
    idle_connections: int,
    with_mysql: bool,
    only: list[str] | None = None,
) -> dict:
    """
    The memory an idle connection costs (before any load: the memory
    freed by 500 busy connections would be reused by the idle ones), then
    the throughput at 50 connections of every target (or of those named
    in C{only}), then that of the peers at 10 and 500, all targets running
    from start to end. MySQL and a three-node Galera cluster (Ersid on
    node 0, the others named after it) run when MariaDB can be started.
    """
    work = tempfile.mkdtemp(prefix="ersid-bench-", dir=WORK_ROOT)
    os.chmod(work, 0o755)  # for Galera's mariadbd, which runs as mysql
    mariadb = cluster = None
    results: dict = {}
    try:
        if with_mysql and shutil.which("mariadbd"):
            from ersid.testing.mariadb import PASSWORD, MariaDB

            os.mkdir(os.path.join(work, "mariadb"))
            mariadb = MariaDB(os.path.join(work, "mariadb"))
            mariadb.fresh_database()
            os.environ["ERSID_MYSQL_PASSWORD"] = PASSWORD
            if os.path.exists(PROVIDER):
                os.mkdir(os.path.join(work, "galera-cluster"))
                cluster = GaleraCluster(os.path.join(work, "galera-cluster"))
                cluster.fresh_database()
        targets = _targets(
            work,
            mariadb.socket if mariadb else None,
            cluster.url(0, 1, 2) if cluster else None,
        )
        if only:
            targets = [target for target in targets if target.name in only]
        peers = [target for target in targets if target.name in PEERS]
        with _running(targets, work) as pids:
            if idle_connections:
                print(f"Memory of {idle_connections:,} idle connections:", flush=True)
                results["idle_connections"] = {
                    target.name: idle_memory(
                        target, pids[target.name], idle_connections
                    )
                    for target in targets
                    if target.name in IDLE_MEASURED
                }
            print("Throughput (interleaved slices, order alternating):", flush=True)
            results["throughput"] = {
                str(CONNECTIONS): throughput(targets, seconds, rounds, CONNECTIONS)
            }
            if rounds_other:
                for connections in OTHER_CONNECTIONS:
                    results["throughput"][str(connections)] = throughput(
                        peers, seconds, rounds_other, connections
                    )
    finally:
        if mariadb is not None:
            mariadb.stop()
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    return results


def throughput(
    targets: list[Target], seconds: float, rounds: int, connections: int
) -> dict:
    """
    Requests/s and latency of each target, loaded one at a time with
    C{connections}: each round gives every target a slice of C{seconds}
    of PUT, then of GET, in the order of L{slices}. Short, interleaved
    slices measure the targets under the same conditions: on a shared VM
    the machine's speed drifts by a fifth within a minute.
    """
    by_name = {target.name: target for target in targets}
    measured: dict[str, dict[str, list[dict[str, float]]]] = {}
    for number, round_slices in enumerate(slices(list(by_name), rounds), 1):
        print(f"  {connections} connections, round {number}/{rounds}", flush=True)
        for method, name in round_slices:
            figures = by_name[name].load(method, seconds, connections)
            measured.setdefault(name, {}).setdefault(method, []).append(figures)
    return summarize(measured, REFERENCES)


def slices(names: list[str], rounds: int) -> list[list[tuple[str, str]]]:
    """
    Each round's slices as (method, target): every target's PUT, then every
    target's GET. The first two targets, the limit and the dict backend
    whose ratio to it is the figure to watch, swap places every other
    round; the rest follow them. Whatever a slice leaves behind (MariaDB
    flushing the writes of the last one) then falls on each of the pair as
    often.
    """
    pair, rest = names[:2], names[2:]
    schedule = []
    for round_number in range(rounds):
        order = (pair if round_number % 2 == 0 else pair[::-1]) + rest
        schedule.append([(method, name) for method in ("PUT", "GET") for name in order])
    return schedule


def summarize(
    measured: dict[str, dict[str, list[dict[str, float]]]],
    references: dict[str, str],
) -> dict[str, dict[str, dict]]:
    """
    Each target's figures from its median round, its errors of all rounds
    (an error in another round is no less a bug), and its ratio to each
    reference measured (C{references} maps a label to a target's name):
    the median of the ratios of the rounds, each round's target against the
    same round's reference, measured next to it. On a shared VM a reference
    itself varies by a fifth from one round to the next; a ratio of two
    best rounds follows whichever was luckier.
    """
    summary: dict[str, dict[str, dict]] = {}
    for name, methods in measured.items():
        for method, rounds in methods.items():
            by_speed = sorted(rounds, key=lambda f: f["requests_per_second"])
            figures: dict = {**by_speed[len(by_speed) // 2]}
            for errors in ("non_2xx", "socket_errors"):
                figures[errors] = sum(f.get(errors, 0) for f in rounds)
            for label, reference in references.items():
                if reference not in measured:
                    continue
                ratios = [
                    f["requests_per_second"] / base["requests_per_second"]
                    for f, base in zip(rounds, measured[reference][method], strict=True)
                ]
                figures[f"ratio_to_{label}"] = round(statistics.median(ratios), 3)
                figures[f"round_ratios_to_{label}"] = [round(r, 3) for r in ratios]
            summary.setdefault(name, {})[method] = figures
    return summary


def _memory_kib(pid: int) -> tuple[int, int]:
    """The resident memory of process C{pid}, and its peak, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        status = dict(line.split(":", 1) for line in f)
    return int(status["VmRSS"].split()[0]), int(status["VmHWM"].split()[0])


def idle_memory(target: Target, pid: int, count: int) -> dict[str, float]:
    """
    What idle keep-alive connections cost the server C{pid} (webdis, not
    the Redis behind it, which sees none of them) in resident memory:
    C{count} connections each send a GET and read the answer, then stay
    open, and the server's RSS is read before and after (after a second,
    for a server that settles after its work).
    """
    before, _ = _memory_kib(pid)
    connections = []
    try:
        for _ in range(count):
            connection = http.client.HTTPConnection(
                "127.0.0.1", target.port, timeout=10
            )
            connections.append(connection)
            connection.request("GET", target.path("GET", 1))
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"{target.name}: GET answered {response.status}")
        time.sleep(1)
        after, _ = _memory_kib(pid)
    finally:
        for connection in connections:
            connection.close()
    return {
        "connections": count,
        "rss_kib_before": before,
        "rss_kib_after": after,
        "kib_per_connection": round((after - before) / count, 2),
    }


def _write_snapshot(path: str, count: int) -> None:
    """A snapshot of C{count} keys with 100-byte values."""
    from ersid.snapshots import write_snapshot
    from ersid.storage import Record

    value = b"v" * VALUE_SIZE
    records = ((f"bench/{i:06d}", Record(value, version=i + 1)) for i in range(count))
    write_snapshot(path, count, records)
    # A snapshot restored on its own starts with an empty journal after it.
    directory = os.path.dirname(path)
    open(os.path.join(directory, f"journal.{count:020d}"), "wb").close()


def scale(count: int, seconds: float) -> dict:
    """
    Snapshot cost with C{count} keys: load time, memory, and GET latency
    with and without a snapshot running (continuous snapshots are forced by
    a write a second with a 1 s interval).
    """
    work = tempfile.mkdtemp(prefix="ersid-scale-")
    log = os.path.join(work, "ersid.log")
    try:
        _write_snapshot(os.path.join(work, "snapshot.json"), count)
        port = free_port()
        started = time.monotonic()
        process = Process(_twistd(port, work, "-i", "1"), b"REST API listening")
        with _server(process, log) as popen:
            load_seconds = time.monotonic() - started
            url = f"http://127.0.0.1:{port}"
            rss, _ = _memory_kib(popen.pid)
            quiet = _wrk(url, "GET", seconds, keys=count)
            quiet_lone = _wrk(url, "GET", seconds, connections=1, keys=count)
            writer = subprocess.Popen(
                [
                    "sh",
                    "-c",
                    f"while true; do curl -s -X PUT -d x {url}/bench/tick; "
                    "sleep 0.5; done",
                ],
                stdout=subprocess.DEVNULL,
            )
            try:
                busy = _wrk(url, "GET", seconds, keys=count)
                busy_lone = _wrk(url, "GET", seconds, connections=1, keys=count)
            finally:
                writer.kill()
            _, peak = _memory_kib(popen.pid)
        # Read once the daemon has stopped: all of its log is there then.
        with open(log) as f:
            output = f.read()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    snapshots = re.findall(r"Dumping (\d+) keys in (\d+) bytes", output)
    loading = re.search(r"Loaded \d+ keys .* in ([\d.]+) s", output)
    return {
        "keys": count,
        "load_seconds": float(loading[1]) if loading else None,
        "load_seconds_including_startup": round(load_seconds, 2),
        "rss_mb_after_load": round(rss / 1024, 1),
        "peak_rss_mb": round(peak / 1024, 1),
        "get_p99_ms_quiet": quiet["p99_ms"],
        "get_p99_ms_during_snapshots": busy["p99_ms"],
        "p99_ratio": round(busy["p99_ms"] / quiet["p99_ms"], 2),
        "lone_client_max_ms_quiet": quiet_lone["max_ms"],
        "lone_client_max_ms_during_snapshots": busy_lone["max_ms"],
        "snapshots_seen_in_log": len(snapshots),
    }


def _chart(results: dict, path: str) -> None:
    """Bars of GET and PUT at 50 connections: requests/s and ratio to etcd."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = results["throughput"][str(CONNECTIONS)]
    names = list(measured)
    figure, axes = plt.subplots(figsize=(12, 5))
    width = 0.38
    for offset, method in ((-width / 2, "GET"), (width / 2, "PUT")):
        figures = [measured[name][method] for name in names]
        bars = axes.bar(
            [i + offset for i in range(len(names))],
            [f["requests_per_second"] for f in figures],
            width,
            label=method,
        )
        axes.bar_label(
            bars,
            labels=[
                f"{f['requests_per_second'] / 1000:.1f}k\n"
                f"{f.get('ratio_to_etcd', float('nan')):.2f}x etcd"
                for f in figures
            ],
            fontsize=7,
        )
    axes.set_xticks(range(len(names)), [textwrap.fill(n, 14) for n in names])
    axes.set_ylabel(f"requests/s (wrk, {CONNECTIONS} connections)")
    axes.set_title(f"Ersid and its peers, {results['machine']['python']}")
    axes.margins(y=0.15)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def _print_tables(results: dict) -> None:
    """The results as tables; errors (non-2xx answers, socket errors) flagged."""
    print()
    print(
        f"{'server':24} {'conns':>5} {'method':6} {'req/s':>9} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'errors':>6} "
        + " ".join(f"{'/' + label:>6}" for label in REFERENCES)
    )
    errors = []
    for connections, measured in results.get("throughput", {}).items():
        for name, methods in measured.items():
            for method in ("GET", "PUT"):
                f = methods[method]
                failed = f["non_2xx"] + f["socket_errors"]
                if failed:
                    errors.append(f"{name} {method} at {connections} connections")
                ratios = [
                    f"{f.get(f'ratio_to_{label}', float('nan')):6.2f}"
                    for label in REFERENCES
                ]
                print(
                    f"{name:24} {connections:>5} {method:6} "
                    f"{f['requests_per_second']:9.0f} {f['p50_ms']:7.2f} "
                    f"{f['p99_ms']:7.2f} {failed:6} {' '.join(ratios)}"
                )
    if errors:
        print("\nNon-2xx answers or socket errors (a bug of the benchmark):")
        print("\n".join(f"  {e}" for e in errors))
    if "idle_connections" in results:
        print()
        print(f"{'server':24} {'idle conns':>10} {'RSS before':>12} {'KiB/conn':>9}")
        for name, f in results["idle_connections"].items():
            print(
                f"{name:24} {f['connections']:10} "
                f"{f['rss_kib_before'] / 1024:9.1f} MB {f['kib_per_connection']:9.1f}"
            )
    if "scale" in results:
        print()
        for key, value in results["scale"].items():
            print(f"{key:40} {value}")


def _raise_open_files(needed: int) -> None:
    """
    Raise this process's limit of open files to its hard limit, for the
    idle connections it opens and for its children (wrk's 500 connections,
    the servers), which inherit it.
    """
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < needed:
        sys.exit(f"benchmarks need {needed} open files: ulimit -Hn is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=3, help="seconds a slice")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument(
        "--rounds-other",
        type=int,
        default=3,
        help=f"rounds at {' and '.join(map(str, OTHER_CONNECTIONS))} connections",
    )
    parser.add_argument(
        "--idle-connections",
        type=int,
        default=2000,
        help="idle connections measured for their memory, 0 for none",
    )
    parser.add_argument("--scale-duration", type=int, default=10)
    parser.add_argument("--scale-keys", type=int, default=1_000_000)
    parser.add_argument("--no-scale", action="store_true")
    parser.add_argument(
        "--no-throughput", action="store_true", help="nor idle connections"
    )
    parser.add_argument("--no-mysql", action="store_true")
    parser.add_argument(
        "--targets",
        help="only these targets' throughput, by name, comma-separated "
        "(with --output elsewhere: results/latest.json is the whole run's)",
    )
    parser.add_argument(
        "--idle-watchers", type=int, default=10_000, help="watchers.py: for memory"
    )
    parser.add_argument("--no-watch", action="store_true")
    parser.add_argument("--only-watch", action="store_true", help="only watchers.py")
    parser.add_argument("--no-expiry", action="store_true")
    parser.add_argument("--only-expiry", action="store_true", help="only expiry.py")
    parser.add_argument("--no-metrics", action="store_true")
    parser.add_argument("--only-metrics", action="store_true", help="only metrics.py")
    parser.add_argument("--no-galera", action="store_true")
    parser.add_argument("--only-galera", action="store_true", help="only galera.py")
    parser.add_argument(
        "--galera-rounds", type=int, default=5, help="galera.py: rounds of layouts"
    )
    parser.add_argument("--output", default=os.path.join(HERE, "results"))
    arguments = parser.parse_args()
    # Not at the top: they import this file as "run", from this folder,
    # on the path when this file runs as a script, not when tests load it.
    import counting
    import expiry
    import galera
    import metrics
    import watchers

    only = (
        arguments.only_watch
        or arguments.only_expiry
        or arguments.only_galera
        or arguments.only_metrics
    )
    if only:
        arguments.no_throughput = arguments.no_scale = True
        arguments.no_watch |= not arguments.only_watch
        arguments.no_expiry |= not arguments.only_expiry
        arguments.no_galera |= not arguments.only_galera
        arguments.no_metrics |= not arguments.only_metrics
    if arguments.no_mysql or not os.path.exists(PROVIDER):
        arguments.no_galera = True
    programs = (
        ()
        if arguments.only_expiry
        else ("wrk",)
        if arguments.only_watch or arguments.only_galera or arguments.only_metrics
        else ("wrk", "etcd", "webdis", "redis-server")
    )
    missing = [program for program in programs if not shutil.which(program)]
    if missing:
        sys.exit(f"benchmarks need {', '.join(missing)}: bin/dev bench installs them")
    # Each idle connection takes a file here and one in the server.
    _raise_open_files(arguments.idle_connections + max(OTHER_CONNECTIONS) + 100)

    results: dict = {
        "machine": machine(),
        "settings": {
            "slice_seconds": arguments.duration,
            "rounds": arguments.rounds,
            "rounds_other": arguments.rounds_other,
            "keys": KEYS,
            "value_bytes": VALUE_SIZE,
        },
    }
    if not arguments.no_throughput:
        results.update(
            benchmark(
                arguments.duration,
                arguments.rounds,
                arguments.rounds_other,
                arguments.idle_connections,
                not arguments.no_mysql,
                arguments.targets.split(",") if arguments.targets else None,
            )
        )
    if not arguments.no_scale:
        print(f"Snapshots with {arguments.scale_keys:,} keys:", flush=True)
        results["scale"] = scale(arguments.scale_keys, arguments.scale_duration)

    if not arguments.no_watch:
        print("Watchers:", flush=True)
        results["watch"] = watchers.benchmark_watch(
            arguments.duration, arguments.rounds, arguments.idle_watchers
        )
    if not arguments.no_metrics:
        print("Scrapes of /_metrics:", flush=True)
        results["metrics"] = metrics.benchmark_metrics(
            arguments.scale_keys, arguments.idle_watchers, 200
        )
        if shutil.which("callgrind_control"):
            print("Counting, in instructions (valgrind):", flush=True)
            results["counting"] = counting.benchmark_counting(10_000)
    if not arguments.no_expiry:
        print("Expiry:", flush=True)
        results["expiry"] = expiry.benchmark_expiry()
    if not arguments.no_galera:
        print("Galera:", flush=True)
        results["galera"] = galera.benchmark_galera(
            arguments.duration, arguments.galera_rounds
        )
    if not only:
        _print_tables(results)
    if "watch" in results:
        watchers.print_watch(results["watch"])
    if "metrics" in results:
        metrics.print_metrics(results["metrics"])
    if "counting" in results:
        metrics.print_metrics(results["counting"])
    if "expiry" in results:
        expiry.print_expiry(results["expiry"])
    if "galera" in results:
        galera.print_galera(results["galera"])
    os.makedirs(arguments.output, exist_ok=True)
    with open(os.path.join(arguments.output, "latest.json"), "w") as f:
        json.dump(results, f, indent=2)
    if "throughput" in results:
        _chart(results, os.path.join(arguments.output, "latest.png"))
    print(f"\nWrote {arguments.output}/latest.json and latest.png")


def machine() -> dict[str, object]:
    """What the figures were measured on."""
    return {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return re.search(r"model name\s*:\s*(.*)", f.read())[1]
    except (OSError, TypeError):
        return platform.processor()


if __name__ == "__main__":
    main()
