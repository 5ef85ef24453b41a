#!/usr/bin/env python3
"""
What Prometheus's scrapes cost Ersid dict: a daemon on core 0 loaded from a
snapshot of 1,000,000 keys, holding 10,000 idle watchers (streams held by
watchers.py's script on core 1), scraped at /_metrics over and over. A
scrape is rendered in one reactor turn (the dict backend's figures need
no I/O), so its time is the longest it holds the reactor; a lone client's
GETs meanwhile (wrk, one connection) show the stall as clients see it.
The hot path's cost, GET and PUT with and without counting, is measured
by run.py (target "ersid dict no-metrics") and, in instructions, by
counting.py. run.py calls
L{benchmark_metrics}; run alone, this file writes results/metrics.json.

Usage: benchmarks/metrics.py [--keys N] [--watchers N] [--scrapes N]
[--output DIR]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import run
import watchers


def _scrape(connection: http.client.HTTPConnection) -> tuple[float, bytes]:
    """One scrape over a kept-alive connection, as Prometheus scrapes."""
    started = time.perf_counter()
    connection.request("GET", "/_metrics")
    body = connection.getresponse().read()
    return (time.perf_counter() - started) * 1000, body


def benchmark_metrics(keys: int, watcher_count: int, scrapes: int) -> dict:
    """The scrape's time and size, and a lone GET client's latency meanwhile."""
    run._raise_open_files(watcher_count + 200)
    work = tempfile.mkdtemp(prefix="ersid-metrics-")
    try:
        run._write_snapshot(os.path.join(work, "snapshot.json"), keys)
        port = run.free_port()
        process = run.Process(run._twistd(port, work), b"REST API listening")
        with run._server(process, os.path.join(work, "ersid.log")):
            url = f"http://127.0.0.1:{port}"
            with watchers.Streams(port, "idle/", watcher_count):
                quiet = run._wrk(url, "GET", 3, connections=1, keys=keys)
                times: list[float] = []
                stop = threading.Event()

                connection = http.client.HTTPConnection("127.0.0.1", port)

                def scrape_all() -> None:
                    while not stop.is_set() and len(times) < scrapes:
                        times.append(_scrape(connection)[0])

                scraper = threading.Thread(target=scrape_all)
                scraper.start()
                busy = run._wrk(url, "GET", 3, connections=1, keys=keys)
                stop.set()
                scraper.join()
                _, body = _scrape(connection)
        text = body.decode()
        held = [
            line for line in text.splitlines() if line.startswith("ersid_watchers ")
        ]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "keys": keys,
        "watchers": watcher_count,
        "watchers_reported": float(held[0].split()[1]) if held else None,
        "scrapes": len(times),
        "scrape_ms_median": round(statistics.median(times), 2),
        "scrape_ms_max": round(max(times), 2),
        "scrape_bytes": len(body),
        "lone_get_p99_ms_quiet": quiet["p99_ms"],
        "lone_get_p99_ms_while_scraped": busy["p99_ms"],
        "lone_get_max_ms_quiet": quiet["max_ms"],
        "lone_get_max_ms_while_scraped": busy["max_ms"],
    }


def print_metrics(figures: dict) -> None:
    print()
    for key, value in figures.items():
        print(f"{key:40} {value}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--watchers", type=int, default=10_000)
    parser.add_argument("--scrapes", type=int, default=200)
    parser.add_argument("--output", default=os.path.join(run.HERE, "results"))
    arguments = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("benchmarks need wrk: bin/dev bench installs it")
    figures = benchmark_metrics(arguments.keys, arguments.watchers, arguments.scrapes)
    print_metrics(figures)
    os.makedirs(arguments.output, exist_ok=True)
    with open(os.path.join(arguments.output, "metrics.json"), "w") as f:
        json.dump({"machine": run.machine(), "metrics": figures}, f, indent=2)


if __name__ == "__main__":
    main()
