#!/usr/bin/env python3
"""
How keys with a time to live expire in Ersid dict: how late their expire
events come, how long the reaper holds the reactor, and what a TTL costs a
key in memory. run.py calls L{benchmark_expiry}; run alone, this file
writes results/expiry.json.

  1. Lag: a daemon at its default options on core 0; this file, run as a
     script on core 1 (C{lag}, L{measure_lag}), watches exp/ and writes
     100,000 keys exp/N, pipelined over keep-alive connections, with TTLs
     that make them expire spread over 10 s (10,000 a second), starting 3 s
     after the last write. Each expire event's lag is the time it arrives less its key's
     C{Ersid-Expires}. A sample of keys are read just after they expire:
     each must be a 404, reaped or not.
  2. Stall: in one process on core 0 (C{stall}, L{measure_stall}), no
     HTTP: the store as C{open_embedded} builds it (journal at
     fsync=everysec, no watcher) is written 1,000,000 keys exp/NNNNNNN, in
     order (twice as fast as in any order), that expire at the same
     instant; the collector is off while they are written, on as in a
     daemon from a full collection on. While the reaper removes them, a
     1 ms C{LoopingCall} measures the longest gap between its calls. The
     reap slices, the journal's batches and their settling, the hub's
     publishing and the collector's passes are timed meanwhile (in that
     process only), so that a long stall says where it came from.
  3. Memory: 200,000 keys of 100-byte values, written in order, in a
     C{DictStorage} without a journal, with and without a TTL, each in a
     fresh process (C{memory}, L{measure_memory}): bytes a key by
     C{tracemalloc}, and by RSS in another pair of processes. They run on
     core 1 while the stall's keys are written on core 0, which takes
     longer; if they ever end after the stall's probe starts, it says so.

Usage: benchmarks/expiry.py [--keys N] [--spread S] [--stall-keys N]
[--memory-keys N] [--output DIR]
"""

from __future__ import annotations

import argparse
import functools
import gc
import hashlib
import json
import os
import platform
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
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import run

LAG_KEYS = 100_000
# Seconds over which the keys expire, and from the last write to the first.
SPREAD = 10.0
LEAD = 3.0
# Connections writing, and requests pipelined on each.
WRITERS = 32
PIPELINED = 16
# Keys read just after their expiry, expecting 404.
SAMPLED = 200
# Read this long after the expiry, by this machine's clock (the server's).
READ_AFTER = 0.002
STALL_KEYS = 1_000_000
MEMORY_KEYS = 200_000
# From the issue.
TARGET_LAG_P99_MS = 1000.0
TARGET_STALL_MS = 20.0
# Stalls longer than this are each told apart in the results.
LONG_STALL_MS = 10.0


def _centiles(values: list[float]) -> dict[str, float]:
    """p50, p99, max, min of C{values} (seconds), in ms."""
    ordered = sorted(values)
    centiles = statistics.quantiles(ordered, n=100, method="inclusive")
    return {
        "p50_ms": round(1000 * centiles[49], 3),
        "p99_ms": round(1000 * centiles[98], 3),
        "max_ms": round(1000 * ordered[-1], 3),
        "min_ms": round(1000 * ordered[0], 3),
    }


# Part 1: lag, run as a script on core 1 against a daemon on core 0.


class Dechunker:
    """The body of a chunked HTTP response, from its pieces as they come."""

    def __init__(self) -> None:
        self._raw = b""
        self._left = 0  # bytes of the current chunk still to come
        self._trailer = False  # its CRLF still to come

    def feed(self, data: bytes) -> bytes:
        """The body's bytes in C{data}; raise if the body ends."""
        raw, position, body = self._raw + data, 0, []
        while True:
            if self._left:
                taken = min(self._left, len(raw) - position)
                if not taken:
                    break
                body.append(raw[position : position + taken])
                position += taken
                self._left -= taken
                if self._left:
                    break
                self._trailer = True
            if self._trailer:
                if len(raw) - position < 2:
                    break
                position += 2
                self._trailer = False
            end = raw.find(b"\r\n", position)
            if end < 0:
                break
            size = int(raw[position:end].split(b";")[0], 16)
            if not size:
                raise RuntimeError("the server ended the watch")
            position, self._left = end + 2, size
        self._raw = raw[position:]
        return b"".join(body)


_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length: *(\d+)", re.I)
_EXPIRES = re.compile(rb"\r\nErsid-Expires: *([\d.]+)", re.I)
_EVENT_KEY = re.compile(rb'"key":"([^"]*)"')


class Answers:
    """Answers read from a keep-alive connection, in the order they come."""

    def __init__(self, connection: socket.socket) -> None:
        self.connection = connection
        self._buffer = b""

    def read(self) -> list[tuple[bytes, bytes]]:
        """Each whole answer read: its head and body."""
        data = self.connection.recv(262144)
        if not data:
            raise RuntimeError("the server closed a connection")
        buffer, answers = self._buffer + data, []
        while (end := buffer.find(b"\r\n\r\n")) >= 0:
            head = buffer[:end]
            length = _CONTENT_LENGTH.search(head + b"\r\n")
            size = int(length[1]) if length else 0
            if len(buffer) < end + 4 + size:
                break
            answers.append((head, buffer[end + 4 : end + 4 + size]))
            buffer = buffer[end + 4 + size :]
        self._buffer = buffer
        return answers


def _connect(port: int) -> socket.socket:
    connection = socket.create_connection(("127.0.0.1", port), timeout=30)
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return connection


class Load:
    """
    One loop over a watch of C{prefix}, C{WRITERS} connections writing
    with C{PIPELINED} requests each in flight, and one reading samples.
    Every read is timed as it returns, by the Unix clock the server's
    expiry times are given in.
    """

    def __init__(self, port: int, prefix: str) -> None:
        self.selector = selectors.DefaultSelector()
        self.watch = _connect(port)
        self.watch.sendall(
            f"GET /_watch?prefix={prefix} HTTP/1.1\r\nHost: b\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            data = self.watch.recv(65536)
            if not data:
                raise RuntimeError("the server closed the watch")
            head += data
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"the watch was answered {head!r}")
        self.dechunker = Dechunker()
        self.events = self.dechunker.feed(head.split(b"\r\n\r\n", 1)[1])
        # Each put's data, and each expire event's arrival and key.
        self.puts: list[bytes] = []
        self.expired: list[tuple[float, bytes]] = []
        self.selector.register(self.watch, selectors.EVENT_READ)
        self.writers: list[Answers] = []
        for _ in range(WRITERS):
            writer = Answers(_connect(port))
            self.writers.append(writer)
            self.selector.register(writer.connection, selectors.EVENT_READ, writer)
        self.in_flight: dict[Answers, deque[Any]] = {w: deque() for w in self.writers}
        self.reader = Answers(_connect(port))
        self.selector.register(self.reader.connection, selectors.EVENT_READ, "reader")
        self.on_answer: Callable[[Answers, Any, bytes, float], None] = lambda *_: None
        self.on_read: Callable[[bytes, bytes, float], None] = lambda *_: None

    def pump(self, timeout: float) -> None:
        """Read whatever comes within C{timeout} seconds, and act on it."""
        for key, _ in self.selector.select(timeout):
            if key.fileobj is self.watch:
                data = self.watch.recv(262144)
                now = time.time()
                if not data:
                    raise RuntimeError("the server closed the watch")
                self._events(self.dechunker.feed(data), now)
            elif key.data == "reader":
                for head, body in self.reader.read():
                    self.on_read(head, body, time.time())
            else:
                writer = key.data
                for head, _ in writer.read():
                    now = time.time()
                    self.on_answer(writer, self.in_flight[writer].popleft(), head, now)

    def _events(self, data: bytes, now: float) -> None:
        events = (self.events + data).split(b"\n\n")
        self.events = events.pop()  # what is not yet a whole event
        for event in events:
            if b"\nevent: expire\n" in event:
                self.expired.append((now, _EVENT_KEY.search(event)[1]))
            elif b"\nevent: put\n" in event:
                self.puts.append(event.split(b"\ndata: ", 1)[1])

    def write(self, requests: Callable[[int], tuple[Any, bytes] | None]) -> int:
        """
        Write until C{requests(i)} (what to send i-th, and what to note it
        by) says there is no more, and every answer came; how many.
        """
        sent = answers = 0

        def top_up(writer: Answers) -> None:
            nonlocal sent
            waiting = self.in_flight[writer]
            if len(waiting) > PIPELINED // 2:
                return
            batch = []
            while len(waiting) < PIPELINED:
                request = requests(sent)
                if request is None:
                    break
                note, data = request
                waiting.append(note)
                batch.append(data)
                sent += 1
            if batch:
                writer.connection.sendall(b"".join(batch))

        answer = self.on_answer

        def answered(writer: Answers, note: Any, head: bytes, now: float) -> None:
            nonlocal answers
            answers += 1
            answer(writer, note, head, now)
            top_up(writer)

        self.on_answer = answered
        try:
            for writer in self.writers:
                top_up(writer)
            progress, before = time.monotonic(), answers
            while any(self.in_flight.values()):
                self.pump(1)
                if answers != before:
                    progress, before = time.monotonic(), answers
                elif time.monotonic() - progress > 30:
                    raise RuntimeError("no answer to the writes for 30 s")
        finally:
            self.on_answer = answer
        return sent


def _put(key: bytes, ttl: float | None) -> bytes:
    head = b"PUT /" + key + b" HTTP/1.1\r\nHost: b\r\n"
    if ttl is not None:
        head += b"Ersid-TTL: %.6f\r\n" % ttl
    return head + b"Content-Length: %d\r\n\r\n" % run.VALUE_SIZE + b"v" * run.VALUE_SIZE


def measure_lag(port: int, count: int, spread: float, lead: float) -> dict:
    """
    Write C{count} keys exp/N whose expiries spread over C{spread} s from
    C{lead} s after the last write; each expire event's lag, and what a
    sample of reads just after their keys' expiry answered.
    """
    load = Load(port, "exp/")
    failures: list[str] = []

    def refused(head: bytes) -> None:
        if len(failures) < 10:
            failures.append(f"a request was answered {head[:200]!r}")

    def checked(writer: Answers, note: Any, head: bytes, now: float) -> None:
        if not head.startswith(b"HTTP/1.1 2"):
            refused(head)

    # How fast this machine writes, for the TTLs: 5,000 keys expiring in an
    # hour, outside the prefix watched. Writes slow down as the store grows.
    load.on_answer = checked
    started = time.time()
    calibration = 5000
    load.write(lambda i: (None, _put(b"cal/%d" % i, 3600)) if i < calibration else None)
    rate = calibration / (time.time() - started)
    first = time.time() + 1.35 * count / rate + lead
    expires: dict[bytes, float] = {}

    def noted(writer: Answers, key: Any, head: bytes, now: float) -> None:
        if not head.startswith(b"HTTP/1.1 2"):
            refused(head)
        elif match := _EXPIRES.search(head + b"\r\n"):
            expires[key] = float(match[1])

    def ttl_put(i: int) -> tuple[bytes, bytes] | None:
        if i == count:
            return None
        key = b"exp/%d" % i
        return key, _put(key, first + spread * i / count - time.time())

    load.on_answer = noted
    started = time.time()
    load.write(ttl_put)
    written = time.time()
    print(f"  {count:,} keys written in {written - started:.1f} s", file=sys.stderr)
    if len(expires) != count:
        failures.append(f"{count - len(expires)} writes answered no Ersid-Expires")
    if min(expires.values(), default=written) < written:
        failures.append(
            f"keys expired {written - min(expires.values()):.1f} s before the "
            "last write: the writes took longer than planned"
        )

    # Reads just after the expiry of a sample, one at a time, in order.
    step = max(count // SAMPLED, 1)
    sample = sorted((expires[key], key) for key in list(expires)[::step])
    queue, reads = deque(sample), []

    def read_sample(now: float) -> None:
        if queue and not reading and now >= queue[0][0] + READ_AFTER:
            due, key = queue.popleft()
            reading.append((key, due, now))
            load.reader.connection.sendall(
                b"GET /" + key + b" HTTP/1.1\r\nHost: b\r\n\r\n"
            )

    def was_read(head: bytes, body: bytes, now: float) -> None:
        key, due, sent = reading.pop()
        reads.append({"key": key, "status": int(head[9:12]), "due": due, "sent": sent})
        read_sample(now)

    reading: list[tuple[bytes, float, float]] = []
    load.on_read = was_read
    last_due = max(expires.values(), default=time.time())
    deadline = last_due + 30
    while len(load.expired) < len(expires) and time.time() < deadline:
        now = time.time()
        read_sample(now)
        wait = queue[0][0] + READ_AFTER - now if queue and not reading else 0.05
        load.pump(min(max(wait, 0), 0.05))
    finished = time.time()
    while (queue or reading) and time.time() < deadline + 5:
        read_sample(time.time())
        load.pump(0.01)

    # Each key's expiry, as its put event said it: it must agree.
    announced = {}
    for data in load.puts:
        document = json.loads(data)
        announced[document["key"].encode()] = document.get("expires")
    disagreeing = sum(1 for key, when in expires.items() if announced.get(key) != when)
    if len(announced) != count or disagreeing:
        failures.append(
            f"{len(announced):,} put events for {count:,} writes, "
            f"{disagreeing} with another expiry than the answer's"
        )
    lags, seen, unknown = [], set(), 0
    for arrived, key in load.expired:
        if key not in expires or key in seen:
            unknown += 1
            continue
        seen.add(key)
        lags.append(arrived - expires[key])
    if len(lags) != count or unknown:
        failures.append(
            f"{len(lags):,} expire events for {count:,} keys "
            f"({unknown} unknown or repeated), {finished - last_due:.1f} s "
            "after the last expiry"
        )
    arrived = {key: when for when, key in reversed(load.expired)}
    reaped_before_read = sum(
        1 for r in reads if arrived.get(r["key"], float("inf")) <= r["sent"]
    )
    served = [r for r in reads if r["status"] != 404]
    if served or len(reads) != len(sample):
        failures.append(
            f"{len(served)} of {len(reads)} reads just after expiry were not "
            f"404 ({[(r['key'].decode(), r['status']) for r in served[:5]]}); "
            f"{len(sample)} planned"
        )
    arrivals = [arrived for arrived, _ in load.expired]
    return {
        "keys": count,
        "calibration_puts_per_second": round(rate),
        "write_seconds": round(written - started, 2),
        "puts_per_second": round(count / (written - started)),
        "seconds_from_last_write_to_first_expiry": round(
            min(expires.values()) - written, 2
        ),
        "expiry_spread_seconds": round(last_due - min(expires.values()), 2),
        "expire_events": len(lags),
        "events_seconds": round(max(arrivals) - min(arrivals), 2) if arrivals else 0,
        "lag": _centiles(lags) if len(lags) > 1 else {},
        "reads_after_expiry": {
            "reads": len(reads),
            "status_404": len(reads) - len(served),
            "read_after_expiry_p50_ms": round(
                1000 * statistics.median(r["sent"] - r["due"] for r in reads), 2
            )
            if reads
            else None,
            "read_after_expiry_max_ms": round(
                1000 * max((r["sent"] - r["due"] for r in reads), default=0), 2
            ),
            "before_their_expire_event": len(reads) - reaped_before_read,
        },
        "failures": failures,
    }


def _health(port: int) -> dict:
    url = f"http://127.0.0.1:{port}/_health"
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def lag(work: str, count: int, spread: float, lead: float) -> dict:
    """L{measure_lag} on core 1, against a fresh daemon on core 0."""
    port = run.free_port()
    process = run.Process(
        run._twistd(port, os.path.join(work, "dict")), b"REST API listening"
    )
    log = os.path.join(work, "ersid.log")
    with run._server(process, log) as popen:
        run._wait_until(functools.partial(run._accepts, port), popen, log)
        rss_before, _ = run._memory_kib(popen.pid)
        output = subprocess.run(
            _script("lag", port, count, spread, lead),
            stdout=subprocess.PIPE,
            check=True,
        ).stdout
        figures = json.loads(output)
        figures["server_expiry_after"] = _health(port).get("expiry")
        rss_after, peak = run._memory_kib(popen.pid)
        figures["server_rss_mb"] = {
            "before": round(rss_before / 1024, 1),
            "after": round(rss_after / 1024, 1),
            "peak": round(peak / 1024, 1),
        }
    return figures


def _script(*words: object) -> list[str]:
    """This file run as a script on core 1, as the load is."""
    return run._pinned(1, [sys.executable, os.path.abspath(__file__), *map(str, words)])


# Part 2: the reaper's longest stall, in one process on core 0.


class Spans:
    """When each timed call, and each pass of the collector, ran."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, float, float, int]] = []
        self._collecting = 0.0

    def wrap(
        self,
        name: str,
        function: Callable[..., Any],
        size: Callable[..., int] | None = None,
    ) -> Callable[..., Any]:
        """C{function}, timed as C{name}; with the C{size} of its arguments."""
        spans = self.spans
        clock = time.perf_counter

        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = clock()
            try:
                return function(*args, **kwargs)
            finally:
                spans.append((name, start, clock(), size(*args) if size else 0))

        return timed

    def collected(self, phase: str, info: dict[str, int]) -> None:
        """A C{gc.callbacks} callback."""
        if phase == "start":
            self._collecting = time.perf_counter()
        else:
            name = f"gc generation {info['generation']}"
            self.spans.append((name, self._collecting, time.perf_counter(), 0))

    def within(self, start: float, end: float) -> dict[str, float]:
        """The ms of each kind of span within C{start} to C{end}."""
        inside: dict[str, float] = {}
        for name, began, ended, _ in self.spans:
            overlap = min(end, ended) - max(start, began)
            if overlap > 0:
                inside[name] = inside.get(name, 0) + 1000 * overlap
        return {name: round(ms, 2) for name, ms in sorted(inside.items())}

    def summary(self, start: float) -> dict[str, dict[str, float]]:
        """Per kind of span after C{start}: how many, longest, total (ms)."""
        kinds: dict[str, list[tuple[float, int]]] = {}
        for name, began, ended, size in self.spans:
            if began >= start:
                kinds.setdefault(name, []).append((ended - began, size))
        return {
            name: {
                "count": len(spans),
                "longest_ms": round(1000 * max(d for d, _ in spans), 2),
                "total_ms": round(1000 * sum(d for d, _ in spans), 1),
                **(
                    {"largest_batch": max(s for _, s in spans)}
                    if any(s for _, s in spans)
                    else {}
                ),
            }
            for name, spans in sorted(kinds.items())
        }


def measure_stall(count: int, work: str) -> dict:
    """
    Fill the store with C{count} keys expiring at one instant, then probe
    the reactor every 1 ms while the reaper removes them.
    """
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred
    from twisted.internet.task import LoopingCall, deferLater

    from ersid.embedded import open_embedded
    from ersid.embedded.journal import Journal
    from ersid.embedded.memory import DictStorage
    from ersid.watch import History, Hub

    # Timed in this process only: the calls a long stall may come from.
    spans = Spans()
    DictStorage.reap = spans.wrap("reap slice (DictStorage.reap)", DictStorage.reap)
    Journal._done = spans.wrap(
        "journal batch done (Journal._done)",
        Journal._done,
        lambda journal, outcome, batch: len(batch),
    )
    DictStorage._settled = spans.wrap(
        "settle (DictStorage._settled, with publish)",
        DictStorage._settled,
        lambda storage, changes, written: len(changes),
    )
    Hub.publish = spans.wrap(
        "hub publish (Hub.publish)", Hub.publish, lambda hub, changes: len(changes)
    )
    gc.callbacks.append(spans.collected)

    hub = Hub(History(), reactor)
    opened = open_embedded(
        work, os.path.join(work, "snapshot.json"), "everysec", 3600, hub, 0.2, reactor
    )
    storage = opened.storage
    results: dict[str, Any] = {"keys": count}

    def settled() -> bool:
        return storage.written_revision == storage.stats().result[1]

    async def until(done: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise RuntimeError("timed out")
            await deferLater(reactor, 0.01)

    async def fill(prefix: str, number: int, expires: float | None) -> None:
        """
        Write C{number} keys, 10,000 a reactor turn, expiring at C{expires};
        without the collector, whose full passes would take most of the time
        (the keys are written, sorted, to be reaped, not to time the writes).
        """
        value = b"x" * run.VALUE_SIZE
        gc.disable()
        try:
            for start in range(0, number, 10_000):
                for i in range(start, min(start + 10_000, number)):
                    ttl = None if expires is None else expires - reactor.seconds()
                    if ttl is not None and ttl <= 0:
                        raise RuntimeError(
                            f"the instant came with {i:,} of {number:,} keys written"
                        )
                    storage.set(f"{prefix}{i:07d}", value, ttl=ttl)
                await deferLater(reactor, 0)
            await until(settled, 120)
        finally:
            gc.enable()

    async def scenario() -> None:
        for service in [*opened.services, hub]:
            service.startService()
        # How fast this machine fills it, for the instant: 20,000 keys that
        # expire in an hour, and stay.
        started = time.monotonic()
        await fill("cal/", 20_000, reactor.seconds() + 3600)
        rate = 20_000 / (time.monotonic() - started)
        instant = round(reactor.seconds() + 1.35 * count / rate + 2, 6)
        started = time.monotonic()
        await fill("exp/", count, instant)
        results["fill_seconds"] = round(time.monotonic() - started, 1)
        results["fill_planned_seconds"] = round(count / rate, 1)
        results["seconds_left_before_the_instant"] = round(
            instant - reactor.seconds(), 2
        )
        remaining = opened.health()["expiry"]["pending"]
        if remaining < count:
            raise RuntimeError(f"only {remaining:,} keys left to expire at the instant")

        # The collector as a daemon has it: on, and every object in its
        # oldest generation (which recovery would have frozen, but these
        # keys were written since).
        gc.collect()
        results["gc_tracked_objects"] = len(gc.get_objects())
        await deferLater(reactor, max(instant - reactor.seconds() - 0.5, 0))
        gaps: list[tuple[float, float]] = []
        marks: dict[str, float] = {}
        last = time.perf_counter()
        spans.spans.clear()
        probed_from = last
        results["probe_started_unix"] = time.time()
        keys_before = storage.stats().result[0]

        def probe() -> None:
            nonlocal last
            now = time.perf_counter()
            gaps.append((last, now))
            last = now
            keys = storage.stats().result[0]
            if keys < keys_before and "first_removal" not in marks:
                marks["first_removal"] = now
            if keys == keys_before - count and "all_removed" not in marks:
                marks["all_removed"] = now
            if "all_removed" in marks and "settled" not in marks and settled():
                marks["settled"] = now

        due = time.perf_counter() + (instant - reactor.seconds())
        probing = LoopingCall(probe)
        probing.start(0.001)
        await until(lambda: "settled" in marks, 120)
        await deferLater(reactor, 0.2)
        probing.stop()
        window = [
            (a, b)
            for a, b in gaps
            if b >= marks["first_removal"] and a <= marks["settled"]
        ]
        outside = set(gaps) - set(window)
        stalls = [b - a - 0.001 for a, b in window]
        ordered = sorted(stalls)
        removing = marks["all_removed"] - marks["first_removal"]
        long_ones = sorted(
            (
                (b - a - 0.001, a, b)
                for a, b in window
                if b - a - 0.001 > LONG_STALL_MS / 1000
            ),
            reverse=True,
        )
        results.update(
            {
                "longest_stall_ms": round(1000 * ordered[-1], 2),
                "p99_stall_ms": round(
                    1000 * ordered[int(0.99 * (len(ordered) - 1))], 2
                ),
                "p50_stall_ms": round(1000 * ordered[len(ordered) // 2], 2),
                "probe_calls": len(window),
                f"stalls_over_{LONG_STALL_MS:.0f}_ms": len(long_ones),
                f"stalls_over_{TARGET_STALL_MS:.0f}_ms": sum(
                    1 for s in stalls if s > TARGET_STALL_MS / 1000
                ),
                "longest_stall_outside_removal_ms": round(
                    1000 * max((b - a - 0.001 for a, b in outside), default=0), 2
                ),
                "first_removal_after_instant_s": round(marks["first_removal"] - due, 3),
                "removal_seconds": round(removing, 2),
                "removed_per_second": round(count / removing),
                "settled_seconds_after_first_removal": round(
                    marks["settled"] - marks["first_removal"], 2
                ),
                "slices": opened.services[0].getServiceNamed("reaper").slices,
                "where": spans.summary(probed_from),
                "longest_stalls": [
                    {
                        "stall_ms": round(1000 * stall, 2),
                        "at_s": round(a - marks["first_removal"], 3),
                        "inside_ms": spans.within(a, b),
                    }
                    for stall, a, b in long_ones[:8]
                ],
            }
        )

    def finish(outcome: Any) -> Any:
        stopped = opened.services[0].stopService()
        stopped.addBoth(lambda _: reactor.stop())
        return outcome

    def start() -> None:
        done = deferLater(reactor, 0).addCallback(
            lambda _: Deferred.fromCoroutine(scenario())
        )
        done.addErrback(
            lambda failure: results.setdefault("error", failure.getTraceback())
        )
        done.addBoth(finish)

    reactor.callWhenRunning(start)
    reactor.run()
    return results


def stall(work: str, count: int) -> dict:
    """L{measure_stall} in a process of its own on core 0."""
    directory = tempfile.mkdtemp(prefix="stall-", dir=work)
    output = subprocess.run(
        run._pinned(
            0,
            [sys.executable, os.path.abspath(__file__), "stall", str(count), directory],
        ),
        stdout=subprocess.PIPE,
        check=True,
    ).stdout
    return json.loads(output)


# Part 3: memory a TTL adds to a key.


def measure_memory(count: int, with_ttl: bool, how: str) -> dict:
    """
    Memory that C{count} keys of 100-byte values take in a C{DictStorage}
    with no journal (its records and expiry index), each with a TTL if
    C{with_ttl}: by C{tracemalloc}, or by RSS.
    """
    import tracemalloc

    from ersid.embedded.memory import DictStorage

    value, ttl = b"x" * run.VALUE_SIZE, 3600.0 if with_ttl else None
    gc.collect()
    if how == "tracemalloc":
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
    else:
        before = run._memory_kib(os.getpid())[0] * 1024
    # Without the collector meanwhile, whose full passes would take most
    # of the time: what is left after the last one is what is measured.
    gc.disable()
    storage = DictStorage()
    for i in range(count):
        storage.set(f"exp/{i:07d}", value, ttl=ttl)
    gc.enable()
    gc.collect()
    if how == "tracemalloc":
        after = tracemalloc.get_traced_memory()[0]
    else:
        after = run._memory_kib(os.getpid())[0] * 1024
    health = storage.stats().result[0]
    assert health == count, health
    return {
        "bytes": after - before,
        "bytes_per_key": round((after - before) / count, 1),
    }


def memory(count: int, cores: tuple[int, int] = (0, 1)) -> dict:
    """
    L{measure_memory} with and without a TTL, each in a fresh process, the
    two side by side, on C{cores}: what each counts is its own.
    """
    results: dict[str, Any] = {"keys": count, "value_bytes": run.VALUE_SIZE}
    script = os.path.abspath(__file__)
    for how in ("tracemalloc", "rss"):
        running = {
            name: subprocess.Popen(
                run._pinned(
                    core, [sys.executable, script, "memory", str(count), ttl, how]
                ),
                stdout=subprocess.PIPE,
            )
            for core, (name, ttl) in zip(
                cores, (("without_ttl", "plain"), ("with_ttl", "ttl")), strict=True
            )
        }
        figures = {}
        for name, popen in running.items():
            output, _ = popen.communicate()
            if popen.returncode:
                raise RuntimeError(f"{popen.args} failed")
            figures[name] = json.loads(output)["bytes_per_key"]
        figures["ttl_adds"] = round(figures["with_ttl"] - figures["without_ttl"], 1)
        results[f"bytes_per_key_{how}"] = figures
    results["finished_unix"] = time.time()
    return results


# All three.


def _sources() -> dict[str, str]:
    """A digest of each Python file of ersid/, by path."""
    digests = {}
    for directory, _, names in os.walk(os.path.join(run.CHECKOUT, "ersid")):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                with open(path, "rb") as f:
                    digests[path] = hashlib.sha256(f.read()).hexdigest()
    return digests


def _code() -> dict:
    """The commit measured, and the files of ersid/ that differ from it."""

    def git(*words: str) -> str:
        return subprocess.run(
            ["git", *words], cwd=run.CHECKOUT, capture_output=True, text=True
        ).stdout.strip()

    changed = git("status", "--porcelain", "--", "ersid").splitlines()
    return {"commit": git("rev-parse", "HEAD"), "ersid_changed": changed}


def benchmark_expiry(
    keys: int = LAG_KEYS,
    spread: float = SPREAD,
    stall_keys: int = STALL_KEYS,
    memory_keys: int = MEMORY_KEYS,
) -> dict:
    """Lag, then the reaper's stall, then memory; C{failures} says what failed."""
    work = tempfile.mkdtemp(prefix="ersid-expiry-", dir=run.WORK_ROOT)
    results: dict[str, Any] = {
        "settings": {
            "lag_keys": keys,
            "spread_seconds": spread,
            "lead_seconds": LEAD,
            "writers": WRITERS,
            "pipelined": PIPELINED,
            "stall_keys": stall_keys,
            "memory_keys": memory_keys,
            "value_bytes": run.VALUE_SIZE,
            "reap_interval": 0.2,
        },
        "code": _code(),
        "targets": {
            "lag_p99_ms": TARGET_LAG_P99_MS,
            "longest_stall_ms": TARGET_STALL_MS,
        },
    }
    failures: list[str] = []
    # The checkout may be edited while the benchmark runs: it then measures
    # code that no commit has, or several versions of it.
    sources = _sources()
    try:
        print(f"Expiry lag, {keys:,} keys over {spread} s:", flush=True)
        results["lag"] = lag(work, keys, spread, LEAD)
        failures += results["lag"].pop("failures")
        # The memory is measured on core 1 while the stall's store fills on
        # core 0, which takes longer: both before the stall is measured. It
        # starts once the stall has timed its first writes, undisturbed, to
        # plan the instant its keys expire at.
        print(
            f"Reaper stall, {stall_keys:,} keys at one instant; meanwhile memory "
            f"of {memory_keys:,} keys with and without TTL:",
            flush=True,
        )

        def later() -> dict:
            time.sleep(3)
            return memory(memory_keys, (1, 1))

        with ThreadPoolExecutor(1) as pool:
            measuring = pool.submit(later)
            results["stall"] = stall(work, stall_keys)
            results["memory"] = measuring.result()
        if "error" in results["stall"]:
            failures.append(f"stall: {results['stall']['error']}")
        finished = results["memory"].pop("finished_unix")
        probed = results["stall"].get("probe_started_unix", finished)
        if finished > probed:
            failures.append(
                f"the memory runs ended {finished - probed:.1f} s into the stall's "
                "probe, on the other core: run with --stall-keys lower or alone"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    after = _sources()
    changed = sorted(
        os.path.relpath(path, run.CHECKOUT)
        for path in sources.keys() | after.keys()
        if sources.get(path) != after.get(path)
    )
    if changed:
        failures.append(f"ersid/ changed during the run: {', '.join(changed)}")
    lag_p99 = results["lag"].get("lag", {}).get("p99_ms", float("inf"))
    longest = results.get("stall", {}).get("longest_stall_ms", float("inf"))
    results["met"] = {
        "lag_p99": lag_p99 < TARGET_LAG_P99_MS,
        "longest_stall": longest < TARGET_STALL_MS,
    }
    results["failures"] = failures
    return results


def print_expiry(results: dict) -> None:
    """The figures as a short table, then the failures, if any."""
    print(f"\n{'expiry (ersid dict)':40} {'measured':>24} {'target':>8}")
    f = results["lag"]
    lag = f.get("lag", {})
    print(
        f"{'lag p50 / p99 / max (ms)':40} "
        f"{lag.get('p50_ms', 0):>7.1f} {lag.get('p99_ms', 0):>7.1f} "
        f"{lag.get('max_ms', 0):>8.1f} {'< ' + str(TARGET_LAG_P99_MS):>8}"
    )
    print(f"{'expire events':40} {f['expire_events']:>15,} / {f['keys']:,}")
    r = f["reads_after_expiry"]
    print(
        f"{'reads just after expiry: 404':40} {r['status_404']:>17} / {r['reads']} "
        f"({r['before_their_expire_event']} before their event)"
    )
    if "stall" in results and "longest_stall_ms" in results["stall"]:
        s = results["stall"]
        print(
            f"{'reaper stall longest / p99 (ms)':40} {s['longest_stall_ms']:>15.1f} "
            f"{s['p99_stall_ms']:>8.1f} {'< ' + str(TARGET_STALL_MS):>8}"
        )
        print(
            f"{'removal: ' + format(s['keys'], ',') + ' keys (s, keys/s)':40} "
            f"{s['removal_seconds']:>15.2f} {s['removed_per_second']:>8,}"
        )
        for stall in s["longest_stalls"][:3]:
            inside = ", ".join(f"{k} {v:.1f}" for k, v in stall["inside_ms"].items())
            print(f"  stall {stall['stall_ms']:.1f} ms: {inside}")
    if "memory" in results:
        for how in ("tracemalloc", "rss"):
            m = results["memory"][f"bytes_per_key_{how}"]
            print(
                f"{'bytes/key no TTL / TTL / +TTL (' + how + ')':40} "
                f"{m['without_ttl']:>7.1f} {m['with_ttl']:>7.1f} {m['ttl_adds']:>8.1f}"
            )
    for target, met in results.get("met", {}).items():
        if not met:
            print(f"TARGET MISSED: {target} (see the figures above)")
    for failure in results.get("failures", []):
        print(f"FAILED: {failure}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=LAG_KEYS, help="for the lag")
    parser.add_argument("--spread", type=float, default=SPREAD, help="seconds")
    parser.add_argument("--stall-keys", type=int, default=STALL_KEYS)
    parser.add_argument("--memory-keys", type=int, default=MEMORY_KEYS)
    parser.add_argument("--output", default=os.path.join(run.HERE, "results"))
    arguments = parser.parse_args()
    results = {
        "machine": {
            "python": f"{platform.python_implementation()} {platform.python_version()}",
            "cpu": run._cpu_model(),
            "cores": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d"),
        },
        **benchmark_expiry(
            arguments.keys,
            arguments.spread,
            arguments.stall_keys,
            arguments.memory_keys,
        ),
    }
    print_expiry(results)
    os.makedirs(arguments.output, exist_ok=True)
    path = os.path.join(arguments.output, "expiry.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    print(f"\nWrote {path}")
    if results["failures"]:
        sys.exit(1)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "lag":
        port, count, spread, lead = sys.argv[2:6]
        print(
            json.dumps(measure_lag(int(port), int(count), float(spread), float(lead)))
        )
    elif len(sys.argv) > 1 and sys.argv[1] == "stall":
        print(json.dumps(measure_stall(int(sys.argv[2]), sys.argv[3])))
    elif len(sys.argv) > 1 and sys.argv[1] == "memory":
        count, ttl, how = sys.argv[2:5]
        print(json.dumps(measure_memory(int(count), ttl == "ttl", how)))
    else:
        main()
