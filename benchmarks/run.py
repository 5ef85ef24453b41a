#!/usr/bin/env python3
"""
Measure Ersid against the ceiling of any Twisted HTTP service on this
interpreter: a bare twisted.web resource over a dict (bare_server.py).

In one run, under the same load (wrk, 50 keep-alive connections, GET and PUT
of 100-byte values over 1,000 keys; server on core 0, wrk on core 1 where
there are two), it measures the bare server, Ersid with the dict backend and,
when a MariaDB server can be started, Ersid with MySQL, all running side by
side and loaded in turn, in slices of a few seconds; then the cost of
snapshots with 1,000,000 keys. Prints a table and writes results/latest.json
and results/latest.png.

Usage: bin/dev bench [--duration S] [--rounds N] [--no-scale] [--no-mysql]
(--duration: seconds a slice)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKOUT = os.path.dirname(HERE)
sys.path.insert(0, CHECKOUT)

from ersid.testing import free_port  # noqa: E402 (after the path is set)

WRK_SCRIPT = os.path.join(HERE, "wrk_mixed.lua")
CONNECTIONS = 50
CEILING = "twisted.web (ceiling)"


def _pinned(core: int, command: list[str]) -> list[str]:
    if os.cpu_count() and os.cpu_count() >= 2 and shutil.which("taskset"):
        return ["taskset", "-c", str(core), *command]
    return command


@contextmanager
def _server(command: list[str], ready: bytes) -> Iterator[subprocess.Popen[bytes]]:
    """Run a server on core 0 until its output shows C{ready}."""
    process = subprocess.Popen(
        _pinned(0, command),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=CHECKOUT,
        env={**os.environ, "PYTHONPATH": CHECKOUT},
    )
    assert process.stdout is not None
    output = b""
    while ready not in output:
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"{command[0]} exited:\n{output.decode()}")
        output += line
    process.startup_output = output  # type: ignore[attr-defined]
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(120)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wrk(
    url: str,
    method: str,
    seconds: float,
    connections: int = CONNECTIONS,
    keys: int = 1000,
) -> dict[str, float]:
    result = subprocess.run(
        _pinned(
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
        ),
        env={**os.environ, "WRK_METHOD": method, "WRK_KEYS": str(keys)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return parse_wrk(result)


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _milliseconds(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(number) * _UNITS[unit]


def parse_wrk(output: str) -> dict[str, float]:
    requests = float(re.search(r"Requests/sec:\s+([\d.]+)", output)[1])
    latency = dict(re.findall(r"^\s+(50|90|99)%\s+(\S+)", output, re.M))
    maximum = re.search(r"Latency\s+\S+\s+\S+\s+(\S+)", output)[1]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return {
        "requests_per_second": requests,
        "p50_ms": _milliseconds(latency["50"]),
        "p90_ms": _milliseconds(latency["90"]),
        "p99_ms": _milliseconds(latency["99"]),
        "max_ms": _milliseconds(maximum),
        "non_2xx": int(errors[1]) if errors else 0,
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
        f"tcp:{port}:interface=127.0.0.1",
        "-m",
        "none",
        "-d",
        data_dir,
        *extra,
    ]


def throughput(seconds: float, rounds: int, with_mysql: bool) -> dict:
    """
    Requests/s and latency of each target: all of them run side by side
    (one at a time under load), and each round gives every target a slice
    of C{seconds} of PUT, then of GET, in an order that alternates from one
    round to the next. Short, interleaved slices measure the targets under
    the same conditions: on a shared VM the machine's speed drifts by a
    fifth within a minute.
    """
    work = tempfile.mkdtemp(prefix="ersid-bench-")
    targets: dict[str, tuple[list[str], bytes, int]] = {}
    port = free_port()
    targets[CEILING] = (
        [sys.executable, os.path.join(HERE, "bare_server.py"), str(port)],
        b"listening",
        port,
    )
    port = free_port()
    targets["ersid dict"] = (
        _twistd(port, os.path.join(work, "dict")),
        b"REST API listening",
        port,
    )
    mariadb = None
    if with_mysql and shutil.which("mariadbd"):
        from ersid.testing.mariadb import PASSWORD, MariaDB

        mariadb = MariaDB(tempfile.mkdtemp(prefix="ersid-mariadb-"))
        mariadb.fresh_database()
        os.environ["ERSID_MYSQL_PASSWORD"] = PASSWORD
        port = free_port()
        targets["ersid mysql"] = (
            _twistd(
                port,
                os.path.join(work, "mysql"),
                "--storage",
                "mysql",
                "--mysql-url",
                f"mysql://ersid@localhost/ersid?unix_socket={mariadb.socket}",
                "-i",
                "3600",
            ),
            b"REST API listening",
            port,
        )
    measured: dict[str, dict[str, list[dict[str, float]]]] = {}
    try:
        with ExitStack() as running:
            for command, ready, port in targets.values():
                running.enter_context(_server(command, ready))
                _wrk(f"http://127.0.0.1:{port}", "PUT", 1)  # creates the keys
            for number, round_slices in enumerate(slices(list(targets), rounds), 1):
                print(f"  round {number}/{rounds}", flush=True)
                for method, name in round_slices:
                    url = f"http://127.0.0.1:{targets[name][2]}"
                    figures = _wrk(url, method, seconds)
                    measured.setdefault(name, {}).setdefault(method, []).append(figures)
    finally:
        if mariadb is not None:
            mariadb.stop()
        shutil.rmtree(work, ignore_errors=True)
    return summarize(measured, CEILING)


def slices(names: list[str], rounds: int) -> list[list[tuple[str, str]]]:
    """
    Each round's slices as (method, target): every target's PUT, then every
    target's GET. The first two targets, the ceiling and the dict backend
    whose ratio to it is the target, swap places every other round; the
    rest follow them. Whatever a slice leaves behind (MariaDB flushing the
    writes of the last one) then falls on each of the pair as often.
    """
    pair, rest = names[:2], names[2:]
    schedule = []
    for round_number in range(rounds):
        order = (pair if round_number % 2 == 0 else pair[::-1]) + rest
        schedule.append([(method, name) for method in ("PUT", "GET") for name in order])
    return schedule


def summarize(
    measured: dict[str, dict[str, list[dict[str, float]]]], ceiling: str
) -> dict[str, dict[str, dict[str, float]]]:
    """
    Each target's figures from its median round, with its ratio to the
    ceiling: the median of the ratios of the rounds, each round's target
    against the same round's ceiling, measured next to it. On a shared
    VM the ceiling itself varies by a fifth from one round to the next; a
    ratio of two best rounds follows whichever was luckier.
    """
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for name, methods in measured.items():
        for method, rounds in methods.items():
            ratios = [
                figures["requests_per_second"] / base["requests_per_second"]
                for figures, base in zip(rounds, measured[ceiling][method], strict=True)
            ]
            by_speed = sorted(rounds, key=lambda f: f["requests_per_second"])
            summary.setdefault(name, {})[method] = {
                **by_speed[len(by_speed) // 2],
                "ratio": round(statistics.median(ratios), 3),
                "round_ratios": [round(ratio, 3) for ratio in ratios],
            }
    return summary


def _write_snapshot(path: str, count: int) -> None:
    """A snapshot of C{count} keys with 100-byte values."""
    from ersid.snapshots import write_snapshot
    from ersid.storage import Record

    value = b"v" * 100
    records = ((f"bench/{i:06d}", Record(value, version=i + 1)) for i in range(count))
    write_snapshot(path, count, records)
    # A snapshot restored on its own starts with an empty journal after it.
    directory = os.path.dirname(path)
    open(os.path.join(directory, f"journal.{count:020d}"), "wb").close()


def _memory_mb(pid: int) -> tuple[float, float]:
    with open(f"/proc/{pid}/status") as f:
        status = dict(line.split(":", 1) for line in f)
    return (
        int(status["VmRSS"].split()[0]) / 1024,
        int(status["VmHWM"].split()[0]) / 1024,
    )


def scale(count: int, seconds: float) -> dict:
    """
    Snapshot cost with C{count} keys: load time, memory, and GET latency
    with and without a snapshot running (continuous snapshots are forced by
    a write a second with a 1 s interval).
    """
    work = tempfile.mkdtemp(prefix="ersid-scale-")
    try:
        _write_snapshot(os.path.join(work, "snapshot.json"), count)
        port = free_port()
        started = time.monotonic()
        command = _twistd(port, work, "-i", "1")
        with _server(command, b"REST API listening") as process:
            load_seconds = time.monotonic() - started
            url = f"http://127.0.0.1:{port}"
            rss, _ = _memory_mb(process.pid)
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
            _, peak = _memory_mb(process.pid)
        # Read once the daemon has stopped: all of its log is there then.
        log = (process.startup_output + process.stdout.read()).decode()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    snapshots = re.findall(r"Dumping (\d+) keys in (\d+) bytes", log)
    loading = re.search(r"Loaded \d+ keys .* in ([\d.]+) s", log)
    return {
        "keys": count,
        "load_seconds": float(loading[1]) if loading else None,
        "load_seconds_including_startup": round(load_seconds, 2),
        "rss_mb_after_load": round(rss, 1),
        "peak_rss_mb": round(peak, 1),
        "get_p99_ms_quiet": quiet["p99_ms"],
        "get_p99_ms_during_snapshots": busy["p99_ms"],
        "p99_ratio": round(busy["p99_ms"] / quiet["p99_ms"], 2),
        "lone_client_max_ms_quiet": quiet_lone["max_ms"],
        "lone_client_max_ms_during_snapshots": busy_lone["max_ms"],
        "snapshots_seen_in_log": len(snapshots),
    }


def _chart(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["throughput"])
    figure, axes = plt.subplots(figsize=(8, 4))
    width = 0.38
    for offset, method in ((-width / 2, "GET"), (width / 2, "PUT")):
        values = [
            results["throughput"][n][method]["requests_per_second"] for n in names
        ]
        bars = axes.bar(
            [i + offset for i in range(len(names))], values, width, label=method
        )
        axes.bar_label(
            bars,
            labels=[f"{results['throughput'][n][method]['ratio']:.2f}x" for n in names],
            fontsize=8,
        )
    axes.set_xticks(range(len(names)), names)
    axes.set_ylabel("requests/s (wrk, 50 connections)")
    axes.set_title(f"Ersid vs. bare twisted.web, {results['machine']['python']}")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=3, help="seconds a slice")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--scale-duration", type=int, default=10)
    parser.add_argument("--scale-keys", type=int, default=1_000_000)
    parser.add_argument("--no-scale", action="store_true")
    parser.add_argument("--no-throughput", action="store_true")
    parser.add_argument("--no-mysql", action="store_true")
    parser.add_argument("--output", default=os.path.join(HERE, "results"))
    arguments = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("benchmarks need wrk: apt-get install wrk")

    results: dict = {
        "machine": {
            "python": f"{platform.python_implementation()} {platform.python_version()}",
            "cpu": _cpu_model(),
            "cores": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d"),
        },
    }
    if not arguments.no_throughput:
        print("Throughput (interleaved slices, order alternating):", flush=True)
        results["throughput"] = throughput(
            arguments.duration, arguments.rounds, not arguments.no_mysql
        )
    if not arguments.no_scale:
        print(f"Snapshots with {arguments.scale_keys:,} keys:", flush=True)
        results["scale"] = scale(arguments.scale_keys, arguments.scale_duration)

    print()
    print(
        f"{'server':24} {'method':6} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'ratio':>6}"
    )
    for name, methods in results.get("throughput", {}).items():
        for method in ("GET", "PUT"):
            f = methods[method]
            print(
                f"{name:24} {method:6} {f['requests_per_second']:9.0f} "
                f"{f['p50_ms']:7.2f} {f['p99_ms']:7.2f} {f['ratio']:6.2f}"
            )
    if "scale" in results:
        print()
        for key, value in results["scale"].items():
            print(f"{key:40} {value}")
    os.makedirs(arguments.output, exist_ok=True)
    with open(os.path.join(arguments.output, "latest.json"), "w") as f:
        json.dump(results, f, indent=2)
    if "throughput" in results:
        _chart(results, os.path.join(arguments.output, "latest.png"))
    print(f"\nWrote {arguments.output}/latest.json and latest.png")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return re.search(r"model name\s*:\s*(.*)", f.read())[1]
    except (OSError, TypeError):
        return platform.processor()


if __name__ == "__main__":
    main()
