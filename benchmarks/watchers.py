#!/usr/bin/env python3
"""
What watchers (C{GET /_watch}, Server-Sent Events) cost Ersid dict at its
default fsync=everysec: PUT throughput with 1,000 idle watchers (prefixes no
write matches) and with 100 watchers every write matches, as ratios to PUT
throughput without watchers; the delay from a write's answer to its event;
the memory an idle watcher takes, and whether the daemon holds them all.
run.py calls L{benchmark_watch}.

The watchers are real streams, read by this file run as a script on core 1
next to wrk, so that core 0 measures the server alone: C{clients PORT
PREFIX COUNT} (L{hold}) or C{latency PORT SECONDS} (L{measure_latency}).
"""

from __future__ import annotations

import json
import os
import re
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext, suppress

import run

NO_WATCHERS = "no watchers"
# The throughput slices' conditions: the watchers' prefix, and how many.
CONDITIONS = {
    NO_WATCHERS: ("", 0),
    "1,000 idle watchers": ("idle/{:06d}/", 1000),  # wrk writes bench/NNNNNN
    "100 matching watchers": ("bench/", 100),
}
# wrk's connections writing other keys while the latency is measured.
LATENCY_LOAD_CONNECTIONS = 10
MARKER = b"event: put\n"
_EVENT = re.compile(rb"id: (\d+)\nevent: put\n")
_ANSWER = re.compile(rb'HTTP/1.1 2.*?\r\nETag: "(\d+)"', re.S)


def count_events(tail: bytes, data: bytes) -> tuple[int, bytes]:
    """
    The put events in C{data}, read after C{tail}, and the tail to keep for
    the next read: an event's marker may be split between two reads.
    """
    buffer = tail + data
    return buffer.count(MARKER), buffer[-(len(MARKER) - 1) :]


def _received(connection: socket.socket) -> bytes:
    """What C{connection} has to read; the server must not close it."""
    data = connection.recv(262144)
    if not data:
        raise RuntimeError("the server closed a stream or connection")
    return data


def open_streams(port: int, prefixes: list[str]) -> list[socket.socket]:
    """
    A stream watching each prefix, opened 200 at a time, each batch
    answered before the next (the server's backlog stays short).
    """
    streams: list[socket.socket] = []
    for start in range(0, len(prefixes), 200):
        batch: list[socket.socket] = []
        for prefix in prefixes[start : start + 200]:
            batch.append(socket.create_connection(("127.0.0.1", port), timeout=60))
            batch[-1].sendall(
                f"GET /_watch?prefix={prefix} HTTP/1.1\r\nHost: b\r\n\r\n".encode()
            )
        for stream in batch:
            # The head comes with the stream's start, once it is watching.
            head = b""
            while b"\r\n\r\n" not in head:
                head += _received(stream)
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"a watch was answered {head!r}")
            stream.setblocking(False)
        streams += batch
    return streams


def hold(port: int, prefix: str, count: int) -> None:
    """
    Hold C{count} streams of C{prefix} (formatted with each one's number),
    read them as fast as they come, print a line when they are open, and
    answer each line of the standard input with their counts as JSON;
    close them all at its end.
    """
    streams = open_streams(port, [prefix.format(i) for i in range(count)])
    print(flush=True)
    tails, seen = dict.fromkeys(streams, b""), dict.fromkeys(streams, 0)
    selector = selectors.DefaultSelector()
    for stream in [sys.stdin, *streams]:
        selector.register(stream, selectors.EVENT_READ)
    while True:
        for key, _ in selector.select():
            stream = key.fileobj
            if stream is sys.stdin:
                if not sys.stdin.readline():
                    return
                with_event = sum(1 for n in seen.values() if n)
                counts = {"open": len(tails), "with_event": with_event}
                print(json.dumps({**counts, "events": sum(seen.values())}), flush=True)
            elif data := stream.recv(262144):
                found, tails[stream] = count_events(tails[stream], data)
                seen[stream] += found
            else:  # the server ended the stream
                selector.unregister(stream)
                del tails[stream]


def measure_latency(port: int, seconds: float) -> dict[str, float]:
    """
    For C{seconds}, write keys under lat/ one at a time on a keep-alive
    connection while a stream watches lat/; each write's delay, in ms, is
    the time its event arrives less that of its 2xx answer, matched by
    revision (the answer's ETag). One loop reads both sockets as they
    become readable, and times each read.
    """
    (watcher,) = open_streams(port, ["lat/"])
    writer = socket.create_connection(("127.0.0.1", port), timeout=10)
    writer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    selector = selectors.DefaultSelector()
    for connection in (watcher, writer):
        selector.register(connection, selectors.EVENT_READ)
    answered: dict[int, float] = {}
    arrived: dict[int, float] = {}
    events = answer = b""

    def read() -> None:
        nonlocal events, answer
        for key, _ in selector.select(timeout=1):
            data, now = _received(key.fileobj), time.perf_counter()
            if key.fileobj is watcher:
                events, last = events + data, 0
                for match in _EVENT.finditer(events):
                    arrived[int(match[1])], last = now, match.end()
                events = events[last:][-200:]
                continue
            answer += data
            if b"\r\n\r\n" in answer:  # an answer to a PUT has no body
                if not (match := _ANSWER.match(answer)):
                    raise RuntimeError(f"a PUT was answered {answer!r}")
                answered[int(match[1])], answer = now, b""

    head = b" HTTP/1.1\r\nHost: b\r\nContent-Length: %d\r\n\r\n" % run.VALUE_SIZE
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        writes = len(answered)
        writer.sendall(b"PUT /lat/%d" % (writes % 1000) + head + b"v" * run.VALUE_SIZE)
        while len(answered) == writes:
            read()
    while len(arrived) < len(answered) and time.monotonic() < end + 2:
        read()
    delays = sorted(
        1000 * (arrived[r] - t) for r, t in answered.items() if r in arrived
    )
    centiles = statistics.quantiles(delays, n=100, method="inclusive")
    return {
        "writes": len(answered),
        "events_missing": len(answered) - len(delays),
        "p50_ms": round(centiles[49], 3),
        "p99_ms": round(centiles[98], 3),
        "max_ms": round(delays[-1], 3),
        "min_ms": round(delays[0], 3),
    }


def _script(*words: object) -> list[str]:
    """This file run as a script on core 1, next to wrk."""
    return run._pinned(1, [sys.executable, os.path.abspath(__file__), *map(str, words)])


def _watch_state(port: int) -> dict:
    """The C{watch} part of the server's C{/_health}."""
    url = f"http://127.0.0.1:{port}/_health"
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)["watch"]


def _until(get: Callable[[], dict], done: Callable[[dict], bool]) -> dict:
    """C{get()} until C{done} with it, for 30 s at most: its last value."""
    deadline = time.monotonic() + 30
    while not done(value := get()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


class Streams:
    """
    C{count} streams held by a script on core 1 (see L{hold}). Once they
    are closed, it waits for the server to drop them all, for the next
    slice to start clean, and keeps how long that took in C{drop_seconds}.
    """

    def __init__(self, port: int, prefix: str, count: int) -> None:
        self._port, self.drop_seconds = port, 0.0
        self._command = _script("clients", port, prefix, count)
        self._popen = subprocess.Popen(
            self._command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def __enter__(self) -> Streams:
        if not self._popen.stdout.readline():  # a line once they are open
            raise RuntimeError(f"{self._command} failed")
        return self

    def counts(self) -> dict:
        """Streams still open, events read, and streams that read one."""
        self._popen.stdin.write("count\n")
        self._popen.stdin.flush()
        return json.loads(self._popen.stdout.readline())

    def __exit__(self, *failure: object) -> None:
        with suppress(BrokenPipeError):  # it failed, and said why
            self._popen.stdin.close()
        if self._popen.wait(60):
            raise RuntimeError(f"{self._command} failed")
        closed = time.monotonic()
        _until(lambda: _watch_state(self._port), lambda s: not s["watchers"])
        self.drop_seconds = round(time.monotonic() - closed, 2)


def _cpu_seconds(pid: int) -> float:
    """The CPU time process C{pid} has used, user and system."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def watched_throughput(
    target: run.Target, pid: int, seconds: float, rounds: int
) -> dict:
    """
    PUT throughput at 50 connections in each of L{CONDITIONS}, in slices
    whose order turns every round, summarized as run.py summarizes its
    targets: the ratio is the median of the rounds' ratios to no watchers.
    With watchers, C{delivered}: the share of the events due (writes times
    watchers) that they read. And the server's CPU time per write, whose
    ratio to none's is what one server core would do with the watchers'
    clients elsewhere: on this machine they share core 1 with wrk, and
    reading a hundred streams slows wrk down as much as the server.
    """
    names = list(CONDITIONS)
    measured: dict[str, dict[str, list[dict[str, float]]]] = {}
    for number in range(rounds):
        print(f"  watchers, round {number + 1}/{rounds}", flush=True)
        turn = number % len(names)
        for name in names[turn:] + names[:turn]:
            prefix, count = CONDITIONS[name]
            with (
                Streams(target.port, prefix, count) if count else nullcontext() as held
            ):
                first = _watch_state(target.port)["history"]["revision"]
                cpu = _cpu_seconds(pid)
                figures = target.load("PUT", seconds)
                cpu = _cpu_seconds(pid) - cpu
                writes = _watch_state(target.port)["history"]["revision"] - first
                figures["server_us_per_put"] = round(cpu * 1e6 / writes, 2)
                if held is not None:
                    events = held.counts()["events"]
                    figures["delivered"] = round(events / (writes * count), 3)
            measured.setdefault(name, {}).setdefault("PUT", []).append(figures)
    summary = run.summarize(measured, {"none": NO_WATCHERS})
    for name, methods in measured.items():
        ratios = [
            base["server_us_per_put"] / f["server_us_per_put"]
            for f, base in zip(
                methods["PUT"], measured[NO_WATCHERS]["PUT"], strict=True
            )
        ]
        summary[name]["PUT"]["cpu_ratio_to_none"] = round(statistics.median(ratios), 3)
    return {name: methods["PUT"] for name, methods in summary.items()}


def latency(target: run.Target, seconds: float) -> dict:
    """
    L{measure_latency} on core 1 for C{seconds}, while wrk writes other
    keys on LATENCY_LOAD_CONNECTIONS connections.
    """
    port = target.port
    with ThreadPoolExecutor(1) as pool:
        load = pool.submit(target.load, "PUT", seconds + 3, LATENCY_LOAD_CONNECTIONS)
        time.sleep(1)
        figures = json.loads(subprocess.check_output(_script("latency", port, seconds)))
        figures["background_put_per_second"] = load.result()["requests_per_second"]
    return figures


def idle_watchers(target: run.Target, pid: int, count: int) -> dict:
    """
    What C{count} idle streams, all watching idle/, cost the server C{pid}
    in resident memory, measured as run.py's C{idle_memory} measures idle
    connections (RSS before, and a second after they are open); then one
    write under idle/, and how many of them, still open, got its event.
    """
    before, _ = run._memory_kib(pid)
    with Streams(target.port, "idle/", count) as held:
        time.sleep(1)
        after, _ = run._memory_kib(pid)
        url = f"http://127.0.0.1:{target.port}/idle/last"
        urllib.request.urlopen(urllib.request.Request(url, b"x", method="PUT")).close()
        got = _until(held.counts, lambda c: c["with_event"] >= count)
    return {
        "watchers": count,
        "rss_kib_before": before,
        "rss_kib_after": after,
        "kib_per_watcher": round((after - before) / count, 2),
        "still_open": got["open"],
        "got_the_last_write": got["with_event"],
        "seconds_to_drop_closed": held.drop_seconds,
    }


def benchmark_watch(seconds: float, rounds: int, idle: int) -> dict:
    """
    A fresh Ersid dict on core 0: the memory of C{idle} idle watchers
    first (before any load, as run.py does), then throughput, then latency.
    """
    run._raise_open_files(idle + 200)
    work = tempfile.mkdtemp(prefix="ersid-watch-", dir=run.WORK_ROOT)
    target = run._ersid(run.ERSID, os.path.join(work, "dict"))
    try:
        with run._running([target], work) as pids:
            print(f"Memory of {idle:,} idle watchers:", flush=True)
            results = {"idle": idle_watchers(target, pids[run.ERSID], idle)}
            print("PUT throughput with watchers:", flush=True)
            results["throughput"] = watched_throughput(
                target, pids[run.ERSID], seconds, rounds
            )
            print("Delivery latency:", flush=True)
            results["latency"] = latency(target, max(seconds, 5))
            results["server"] = _watch_state(target.port)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


def print_watch(results: dict) -> None:
    """The watchers' figures: a small table, then a line each."""
    print(f"\n{'ersid dict PUT':24} {'req/s':>9} {'p99 ms':>7} {'errors':>6} ", end="")
    print(f"{'/none':>6} {'delivered':>9} {'µs CPU':>7} {'/none':>6}")
    for name, f in results["throughput"].items():
        print(
            f"{name:24} {f['requests_per_second']:9.0f} {f['p99_ms']:7.2f} "
            f"{f['non_2xx'] + f['socket_errors']:6} {f['ratio_to_none']:6.2f} "
            f"{f.get('delivered', float('nan')):9.3f} "
            f"{f['server_us_per_put']:7.1f} {f['cpu_ratio_to_none']:6.2f}"
        )
    f = results["latency"]
    print(
        f"write answered -> event: p50 {f['p50_ms']:.2f} ms, p99 {f['p99_ms']:.2f} "
        f"ms, max {f['max_ms']:.2f} ms; {f['writes']} writes, "
        f"{f['events_missing']} missing, {f['background_put_per_second']:.0f} PUT/s"
    )
    f = results["idle"]
    print(
        f"{f['watchers']:,} idle watchers: {f['kib_per_watcher']:.1f} KiB each, "
        f"{f['still_open']:,} open, {f['got_the_last_write']:,} got a write; "
        f"dropped {f['seconds_to_drop_closed']} s after they closed"
    )


if __name__ == "__main__":
    if sys.argv[1] == "clients":
        hold(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
    else:
        print(json.dumps(measure_latency(int(sys.argv[2]), float(sys.argv[3]))))
