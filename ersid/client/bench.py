"""
C{ersid-bench}: load an Ersid server with a mix of GET and PUT requests at a
bounded concurrency, as the lab's benchmark does, with treq and
C{cooperate}; then report throughput, latency percentiles and statuses.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import resource
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import treq
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import LoopingCall, cooperate, react
from twisted.web.client import Agent, HTTPConnectionPool

from ersid.client.cli import url_argument

__all__ = ["main", "make_room_for", "parallel_map", "parse_mix", "percentile"]


def parallel_map(
    function: Callable[[Any], Deferred[Any]], inputs: Iterable[Any], parallelism: int
) -> Deferred[list[Any]]:
    """
    Like C{map}, but with at most C{parallelism} calls of C{function} (which
    returns a Deferred) outstanding at once.
    """
    work = (function(item) for item in inputs)
    return gatherResults([cooperate(work).whenDone() for _ in range(parallelism)])


def parse_mix(text: str) -> dict[str, int]:
    """C{"get=90,put=10"} as C{{"GET": 90, "PUT": 10}}."""
    mix: dict[str, int] = {}
    for part in text.split(","):
        name, _, weight = part.partition("=")
        method = name.strip().upper()
        if method not in ("GET", "PUT") or not weight.strip().isdigit():
            raise argparse.ArgumentTypeError(f"bad mix {text!r}; e.g. get=90,put=10")
        mix[method] = int(weight)
    if not sum(mix.values()):
        raise argparse.ArgumentTypeError("the mix must have some weight")
    return mix


def percentile(sorted_values: list[float], fraction: float) -> float:
    """
    The nearest-rank percentile: the least of C{sorted_values} that at least
    C{fraction} of them do not exceed.
    """
    if not sorted_values:
        return 0.0
    rank = math.ceil(fraction * len(sorted_values) - 1e-9)  # 0.07 * 100 > 7
    return sorted_values[min(max(rank, 1), len(sorted_values)) - 1]


class _Run:
    """The requests of one benchmark run and what came of them."""

    def __init__(self, arguments: argparse.Namespace, reactor: Any) -> None:
        self.arguments = arguments
        self.reactor = reactor
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = arguments.concurrency
        self.pool = pool
        self.http = treq.client.HTTPClient(Agent(reactor, pool=pool))
        self.value = b"v" * arguments.value_size
        self.url = arguments.url.rstrip("/")
        self.latencies: list[float] = []
        self.statuses: Counter[str] = Counter()
        self.errors = 0
        self.started = 0.0

    def key_url(self, number: int) -> str:
        return f"{self.url}/bench/{number:07d}"

    def request(self, method: str, number: int) -> Deferred[None]:
        return Deferred.fromCoroutine(self._request(method, number))

    async def _request(self, method: str, number: int) -> None:
        began = time.perf_counter()
        try:
            data = self.value if method == "PUT" else None
            response = await self.http.request(method, self.key_url(number), data=data)
            await response.content()
        except Exception:
            self.errors += 1
            return
        self.latencies.append(time.perf_counter() - began)
        self.statuses[str(response.code)] += 1

    def operations(self) -> Iterator[tuple[str, int]]:
        chooser = random.Random(0)
        methods, weights = zip(*self.arguments.mix.items(), strict=True)
        deadline = None
        if self.arguments.duration:
            deadline = time.monotonic() + self.arguments.duration
        count = 0
        while (deadline is None and count < self.arguments.requests) or (
            deadline is not None and time.monotonic() < deadline
        ):
            yield (
                chooser.choices(methods, weights)[0],
                chooser.randrange(self.arguments.keys),
            )
            count += 1

    def progress(self) -> None:
        done = len(self.latencies) + self.errors
        elapsed = time.monotonic() - self.started
        if self.arguments.duration:
            fraction = min(1.0, elapsed / self.arguments.duration)
        else:
            fraction = done / self.arguments.requests
        bar = "#" * int(fraction * 30)
        rate = done / elapsed if elapsed else 0
        sys.stderr.write(f"\r[{bar:<30}] {fraction:4.0%} {done} requests {rate:,.0f}/s")
        sys.stderr.flush()

    def report(self, elapsed: float) -> dict[str, Any]:
        latencies = sorted(self.latencies)
        done = len(latencies) + self.errors
        return {
            "requests": done,
            "seconds": round(elapsed, 3),
            "requests_per_second": round(done / elapsed, 1) if elapsed else 0.0,
            "latency_ms": {
                name: round(percentile(latencies, fraction) * 1000, 3)
                for name, fraction in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)]
            }
            | {"max": round(latencies[-1] * 1000, 3) if latencies else 0.0},
            "errors": self.errors,
            "statuses": dict(sorted(self.statuses.items())),
        }


async def _benchmark(reactor: Any, arguments: argparse.Namespace) -> dict[str, Any]:
    run = _Run(arguments, reactor)
    try:
        if "GET" in arguments.mix:
            await parallel_map(
                lambda number: run.request("PUT", number),
                range(arguments.keys),
                arguments.concurrency,
            )
            if run.errors == arguments.keys:
                raise SystemExit(f"ersid-bench: cannot reach {run.url}")
            refused = {code: n for code, n in run.statuses.items() if code[0] != "2"}
            if refused:
                statuses = ", ".join(f"{n} times {code}" for code, n in refused.items())
                raise SystemExit(
                    f"ersid-bench: preloading the {arguments.keys} keys it reads "
                    f"failed: the server answered {statuses}"
                )
            run.latencies, run.statuses, run.errors = [], Counter(), 0
        ticker = None
        run.started = time.monotonic()
        if sys.stderr.isatty() and not arguments.quiet:
            ticker = LoopingCall(run.progress)
            ticker.clock = reactor
            ticker.start(0.25)
        await parallel_map(
            lambda operation: run.request(*operation),
            run.operations(),
            arguments.concurrency,
        )
        elapsed = time.monotonic() - run.started
        if ticker is not None:
            ticker.stop()
            run.progress()
            sys.stderr.write("\n")
        return run.report(elapsed)
    finally:
        await run.pool.closeCachedConnections()


def _print(report: dict[str, Any]) -> None:
    latency = report["latency_ms"]
    print(f"requests:    {report['requests']} in {report['seconds']} s")
    print(f"throughput:  {report['requests_per_second']:,.1f} requests/s")
    print(
        f"latency ms:  p50 {latency['p50']}  p90 {latency['p90']}  "
        f"p99 {latency['p99']}  max {latency['max']}"
    )
    print(f"errors:      {report['errors']}")
    statuses = ", ".join(f"{code}: {n}" for code, n in report["statuses"].items())
    print(f"statuses:    {statuses or 'none'}")


# Descriptors beyond the connections: standard streams, the reactor's own.
_SPARE_DESCRIPTORS = 32


def make_room_for(connections: int) -> str | None:
    """
    Raise the soft limit on open files, up to the hard one, to hold
    C{connections}; or say why it cannot (past the limit, connections would
    wait for descriptors and the run overrun its duration).
    """
    needed = connections + _SPARE_DESCRIPTORS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or needed <= soft:
        return None
    if hard != resource.RLIM_INFINITY and needed > hard:
        return (
            f"--concurrency {connections} needs {needed} open files, over this "
            f"process's limit of {hard} (see ulimit -n)"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ersid-bench", description="Benchmark an Ersid server."
    )
    parser.add_argument("--url", type=url_argument, default="http://localhost:8080")
    parser.add_argument("-c", "--concurrency", type=int, default=10)
    parser.add_argument("-n", "--requests", type=int, default=10000)
    parser.add_argument(
        "-d", "--duration", type=float, help="run for this many seconds instead of -n"
    )
    parser.add_argument("--keys", type=int, default=1000, help="distinct keys")
    parser.add_argument("--value-size", type=int, default=100, help="bytes a PUT")
    parser.add_argument(
        "--mix",
        type=parse_mix,
        default=parse_mix("get=90,put=10"),
        help="weights of the operations (default: get=90,put=10)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> None:
    arguments = _parser().parse_args(argv)
    for name in ("concurrency", "requests", "keys"):
        if getattr(arguments, name) < 1:
            _parser().error(f"--{name} must be at least 1")
    if arguments.duration is not None and arguments.duration <= 0:
        _parser().error("--duration must be more than 0 seconds")
    if arguments.value_size < 0:
        _parser().error("--value-size must not be negative")
    problem = make_room_for(arguments.concurrency)
    if problem is not None:
        _parser().error(problem)

    async def run(reactor: Any) -> None:
        report = await _benchmark(reactor, arguments)
        if arguments.json:
            print(json.dumps(report, indent=2))
        else:
            _print(report)

    react(lambda reactor: Deferred.fromCoroutine(run(reactor)))
