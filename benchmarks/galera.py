#!/usr/bin/env python3
"""
Ersid on a three-node MariaDB Galera cluster (ersid.testing.galera), on
this one machine: where writes should go, and what a node's death costs.
run.py calls L{benchmark_galera}; run alone, this file writes
results/galera.json.

  1. Where writes go: three Ersid daemons, each loaded by its own wrk
     (17 connections each), PUT then GET, in slices of a few seconds,
     in two layouts that alternate round by round: "one node", every
     daemon's --mysql-url naming node 0 first; "all nodes", daemon i naming
     node i first. Requests/s of the three added up, answers that were not
     2xx, and the conflicts Galera reported meanwhile (certification
     failures and brute-force aborts, added up over the nodes), which
     Ersid retried.
  2. A node's death: under PUT load through the three daemons (all
     nodes), node 2 is killed with SIGKILL, then restarted once the others
     have evicted it. A client of this file writes through each daemon in
     a loop and notes when each answer came: the longest time without an
     acknowledged write, through each daemon, the answers that were not
     2xx, and how long the node took to rejoin.

Nine servers and three loads share the machine's cores: the figures are
ratios between layouts, not what a cluster of three machines would do.

Usage: benchmarks/galera.py [--duration S] [--rounds N] [--output DIR]
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack

import run

from ersid.testing.galera import GaleraCluster
from ersid.testing.mariadb import PASSWORD

LAYOUTS = ("one node", "all nodes")
# Connections of each daemon's wrk: 51 in all, as run.py's 50.
CONNECTIONS = 17


def _daemons(stack: ExitStack, cluster: GaleraCluster, work: str, layout: str) -> list:
    """Three Ersid daemons on the cluster, in C{layout}; their targets."""
    targets = []
    for i in range(3):
        first = 0 if layout == "one node" else i
        order = [first] + [j for j in range(3) if j != first]
        target = run._ersid(
            f"{layout} {i}",
            os.path.join(work, f"{layout.replace(' ', '-')}-{i}"),
            *("--storage", "mysql", "--mysql-url", cluster.url(*order), "-i", "3600"),
        )
        log = os.path.join(work, f"{layout.replace(' ', '-')}-{i}.log")
        popen = stack.enter_context(run._server(target.processes[0], log))
        run._wait_until(lambda port=target.port: run._accepts(port), popen, log)
        targets.append(target)
    return targets


def _conflicts(cluster: GaleraCluster) -> int:
    return sum(
        int(cluster.status(i, name) or 0)
        for i in cluster.running()
        for name in ("wsrep_local_cert_failures", "wsrep_local_bf_aborts")
    )


def _together(targets: list, method: str, seconds: float) -> dict:
    """wrk on every target at once; the figures added up."""
    results: list[dict] = [{}] * len(targets)

    def load(index: int) -> None:
        results[index] = run._wrk(
            f"http://127.0.0.1:{targets[index].port}",
            method,
            seconds,
            CONNECTIONS,
            prefix=targets[index].prefix(method),
        )

    threads = [threading.Thread(target=load, args=(i,)) for i in range(len(targets))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {
        "requests_per_second": round(sum(r["requests_per_second"] for r in results)),
        "p99_ms": max(r["p99_ms"] for r in results),
        "non_2xx": sum(r["non_2xx"] + r["socket_errors"] for r in results),
    }


def layouts(cluster: GaleraCluster, work: str, seconds: float, rounds: int) -> dict:
    """Part 1: each layout's median round, and the ratio of all to one."""
    measured: dict[str, dict[str, list[dict]]] = {}
    with ExitStack() as stack:
        daemons = {layout: _daemons(stack, cluster, work, layout) for layout in LAYOUTS}
        for target in daemons["one node"]:
            target.create_keys()
        for number in range(rounds):
            print(f"  round {number + 1}/{rounds}", flush=True)
            order = LAYOUTS if number % 2 == 0 else LAYOUTS[::-1]
            for method in ("PUT", "GET"):
                for layout in order:
                    before = _conflicts(cluster)
                    figures = _together(daemons[layout], method, seconds)
                    figures["conflicts"] = _conflicts(cluster) - before
                    measured.setdefault(layout, {}).setdefault(method, []).append(
                        figures
                    )
    summary: dict = {}
    for layout, methods in measured.items():
        for method, figures in methods.items():
            median = sorted(figures, key=lambda f: f["requests_per_second"])[
                len(figures) // 2
            ]
            summary.setdefault(layout, {})[method] = {
                **median,
                "non_2xx": sum(f["non_2xx"] for f in figures),
                "conflicts_per_second": round(
                    statistics.median(f["conflicts"] for f in figures) / seconds
                ),
            }
    for method in ("PUT", "GET"):
        ratios = [
            a["requests_per_second"] / b["requests_per_second"]
            for a, b in zip(
                measured["all nodes"][method], measured["one node"][method], strict=True
            )
        ]
        summary.setdefault("all_to_one", {})[method] = round(
            statistics.median(ratios), 3
        )
    return summary


class _Writer(threading.Thread):
    """PUTs of new keys through one daemon, noting when each answer came."""

    def __init__(self, port: int, name: str) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.name = name
        self.acknowledged: list[float] = []
        self.refused = 0
        self.stop = False

    def run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        number = 0
        while not self.stop:
            number += 1
            connection.request("PUT", f"/death/{self.name}/{number}", body=b"v" * 100)
            response = connection.getresponse()
            response.read()
            if response.status < 300:
                self.acknowledged.append(time.monotonic())
            else:
                self.refused += 1


def death(cluster: GaleraCluster, work: str, seconds: float) -> dict:
    """Part 2: node 2 killed under load, then restarted."""
    with ExitStack() as stack:
        targets = _daemons(stack, cluster, work, "all nodes")
        writers = [_Writer(t.port, str(i)) for i, t in enumerate(targets)]
        # Load beside the writers, as in part 1.
        loads = []
        for target in targets:
            command, env = run.wrk_invocation(
                f"http://127.0.0.1:{target.port}", "PUT", 4 * seconds, CONNECTIONS
            )
            loads.append(subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL))
        for writer in writers:
            writer.start()
        time.sleep(seconds)
        killed = time.monotonic()
        cluster.kill(2)
        cluster.wait_for(0, "wsrep_cluster_size", "2")
        evicted = time.monotonic() - killed
        started = time.monotonic()
        cluster.restart(2)
        cluster.wait_synced()
        rejoined = time.monotonic() - started
        time.sleep(seconds)
        for writer in writers:
            writer.stop = True
        for writer in writers:
            writer.join()
        for load in loads:
            load.kill()
            load.wait()
    gaps = {}
    for writer in writers:
        stamps = [killed - seconds, *writer.acknowledged]
        gaps[f"daemon {writer.name} (node {writer.name} first)"] = {
            "longest_gap_s": round(
                max(b - a for a, b in itertools.pairwise(stamps)), 2
            ),
            "acknowledged": len(writer.acknowledged),
            "refused": writer.refused,
        }
    return {
        "evicted_after_s": round(evicted, 2),
        "rejoined_in_s": round(rejoined, 2),
        "writers": gaps,
    }


def benchmark_galera(seconds: float, rounds: int) -> dict:
    work = tempfile.mkdtemp(prefix="ersid-galera-bench-", dir=run.WORK_ROOT)
    os.chmod(work, 0o755)  # for mariadbd, which runs as mysql
    os.environ["ERSID_MYSQL_PASSWORD"] = PASSWORD
    cluster = None
    try:
        os.mkdir(os.path.join(work, "cluster"))
        cluster = GaleraCluster(os.path.join(work, "cluster"))
        cluster.fresh_database()
        results = {"startup_seconds": round(cluster.startup_seconds, 1)}
        print("Galera: where writes go", flush=True)
        results["layouts"] = layouts(cluster, work, seconds, rounds)
        print("Galera: a node's death", flush=True)
        results["death"] = death(cluster, work, seconds)
        return results
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


def print_galera(results: dict) -> None:
    print(
        f"\nGalera, three nodes on one machine (started in {results['startup_seconds']} s):"
    )
    print(
        f"{'layout':10} {'method':6} {'req/s':>8} {'p99 ms':>7} {'conflicts/s':>11} {'errors':>6}"
    )
    for layout in LAYOUTS:
        for method in ("PUT", "GET"):
            f = results["layouts"][layout][method]
            print(
                f"{layout:10} {method:6} {f['requests_per_second']:8} {f['p99_ms']:7.2f} "
                f"{f['conflicts_per_second']:11} {f['non_2xx']:6}"
            )
    ratios = results["layouts"]["all_to_one"]
    print(f"all nodes / one node: PUT {ratios['PUT']}, GET {ratios['GET']}")
    d = results["death"]
    print(
        f"node 2 killed: evicted after {d['evicted_after_s']} s, rejoined in {d['rejoined_in_s']} s"
    )
    for name, f in d["writers"].items():
        print(f"  {name}: longest gap {f['longest_gap_s']} s, {f['refused']} refused")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=3, help="seconds a slice")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--output", default=os.path.join(run.HERE, "results"))
    arguments = parser.parse_args()
    results = benchmark_galera(arguments.duration, arguments.rounds)
    print_galera(results)
    os.makedirs(arguments.output, exist_ok=True)
    path = os.path.join(arguments.output, "galera.json")
    with open(path, "w") as f:
        json.dump({"machine": run.machine(), **results}, f, indent=2)
    print(f"\nWrote {path}")


if __name__ == "__main__":
    sys.exit(main())
