#!/usr/bin/env python3
"""
What counting requests for /_metrics costs each request, in instructions:
Ersid dict with its metrics and with --no-metrics, each run under
valgrind's callgrind and sent the same GETs, then PUTs, one at a time over
one kept-alive connection; the counters are dumped before and after each
phase (callgrind_control). Instructions are not time: they leave out
the kernel and the caches, but they are the same on a quiet machine and on
a noisy one, where wrk's ratios (run.py's "ersid dict no-metrics") wander
by several percent from one round to the next. Under valgrind a request
takes fifty times as long, so every duration falls past the first bucket
and is searched for: the figure errs on the side of counting's cost.

Usage: benchmarks/counting.py [--requests N] [--output DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import run

_PUT = b"PUT /bench/k HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"v" * 100
_GET = b"GET /bench/k HTTP/1.1\r\nHost: x\r\n\r\n"


def _receive(client: socket.socket) -> bytes:
    data = client.recv(65536)
    if not data:
        raise ConnectionError("the daemon closed the connection")
    return data


def _ask(client: socket.socket, request: bytes) -> None:
    """Send one request, read its whole response, which must be a success."""
    client.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        data += _receive(client)
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 2"):
        raise RuntimeError(f"the daemon answered {head.splitlines()[0]!r}")
    found = re.search(rb"(?im)^content-length: *(\d+)", head)
    length = int(found.group(1)) if found else 0
    while len(body) < length:
        body += _receive(client)


def _dump(pid: int, work: str) -> int:
    """
    The instructions callgrind counted in C{pid} since its last dump, from
    a new one. callgrind_control says nothing of failures: a dump missing
    is how one shows.
    """
    for name in os.listdir(work):
        if name.startswith("callgrind.out"):
            os.unlink(os.path.join(work, name))
    subprocess.run(["callgrind_control", "-d", str(pid)], capture_output=True)
    dumps = [name for name in os.listdir(work) if name.startswith("callgrind.out")]
    if len(dumps) != 1:
        raise RuntimeError(f"callgrind_control could not dump {pid}: {dumps}")
    with open(os.path.join(work, dumps[0])) as f:
        totals = [line for line in f if line.startswith("summary:")]
    return int(totals[-1].split()[1])


def _connect(port: int, daemon: subprocess.Popen) -> socket.socket:
    """A connection to the daemon, once it listens (valgrind starts slowly)."""
    deadline = time.monotonic() + 300
    while True:
        try:
            client = socket.create_connection(("127.0.0.1", port))
        except OSError:
            if time.monotonic() > deadline or daemon.poll() is not None:
                raise RuntimeError("the daemon did not start under valgrind") from None
            time.sleep(0.5)
        else:
            client.settimeout(120)
            return client


def _measure(port: int, options: list[str], requests: int) -> dict[str, float]:
    """Instructions per GET and per PUT of a daemon started with C{options}."""
    work = tempfile.mkdtemp(prefix="ersid-counting-")
    command = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={work}/callgrind.out.%p",
        *run._twistd(port, os.path.join(work, "data"), *options),
    ]
    # The same hash seed for both: dict layouts then differ only by the code.
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    daemon = None
    try:
        daemon = subprocess.Popen(
            command,
            cwd=work,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        figures = {}
        with _connect(port, daemon) as client:
            for _ in range(200):  # warm: the interpreter specializes
                _ask(client, _PUT)
                _ask(client, _GET)
            for name, request in (("GET", _GET), ("PUT", _PUT)):
                _dump(daemon.pid, work)
                for _ in range(requests):
                    _ask(client, request)
                figures[name] = _dump(daemon.pid, work) / requests
        return figures
    finally:
        if daemon is not None:
            daemon.terminate()
            try:
                daemon.wait(60)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        shutil.rmtree(work, ignore_errors=True)


def benchmark_counting(requests: int) -> dict:
    """Instructions per request with and without counting, and their ratios."""
    ports = [run.free_port()]
    while len(ports) < 2:
        port = run.free_port()
        if port not in ports:
            ports.append(port)
    with ThreadPoolExecutor(2) as pool:
        counted, bare = pool.map(
            _measure, ports, ([], ["--no-metrics"]), (requests, requests)
        )
    figures: dict = {"requests": requests}
    for method in ("GET", "PUT"):
        figures[f"{method}_instructions"] = round(counted[method])
        figures[f"{method}_instructions_no_metrics"] = round(bare[method])
        figures[f"{method}_ratio_to_no_metrics"] = round(
            bare[method] / counted[method], 4
        )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--output", default=os.path.join(run.HERE, "results"))
    arguments = parser.parse_args()
    if not shutil.which("callgrind_control"):
        sys.exit("this benchmark needs valgrind: bin/dev bench installs it")
    figures = benchmark_counting(arguments.requests)
    for key, value in figures.items():
        print(f"{key:40} {value}")
    os.makedirs(arguments.output, exist_ok=True)
    with open(os.path.join(arguments.output, "counting.json"), "w") as f:
        json.dump({"machine": run.machine(), "counting": figures}, f, indent=2)


if __name__ == "__main__":
    main()
