"""
The benchmark script's own arithmetic: how it reads wrk's report and turns
rounds into the ratios the README quotes.
"""

from __future__ import annotations

import importlib.util
import os
import sys

from twisted.trial.unittest import TestCase

_RUN = os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks", "run.py")
_spec = importlib.util.spec_from_file_location("ersid_benchmarks_run", _RUN)
run = importlib.util.module_from_spec(_spec)
# Registered before it runs, as its dataclasses look their module up.
sys.modules[_spec.name] = run
_spec.loader.exec_module(run)
# watchers.py imports run.py as "run", from its own folder.
sys.path.insert(0, os.path.dirname(_RUN))
import watchers  # noqa: E402

# wrk 4.1.0's report, as Debian's package prints it with --latency.
WRK_REPORT = """\
Running 10s test @ http://127.0.0.1:41871
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.39ms  413.29us  14.19ms   93.12%
    Req/Sec    18.25k     1.02k   19.79k    84.00%
  Latency Distribution
     50%    2.68ms
     75%    2.75ms
     90%    2.90ms
     99%    4.07ms
  181557 requests in 10.00s, 16.62MB read
  Non-2xx or 3xx responses: 12
Requests/sec:  18155.78
Transfer/sec:      1.66MB
"""


class WrkReportTests(TestCase):
    def test_figures(self):
        self.assertEqual(
            run.parse_wrk(WRK_REPORT),
            {
                "requests_per_second": 18155.78,
                "p50_ms": 2.68,
                "p90_ms": 2.9,
                "p99_ms": 4.07,
                "max_ms": 14.19,
                "non_2xx": 12,
                "socket_errors": 0,
            },
        )

    def test_units(self):
        report = WRK_REPORT.replace("2.68ms", "980.00us").replace("14.19ms", "1.20s")
        figures = run.parse_wrk(report)
        self.assertAlmostEqual(figures["p50_ms"], 0.98)
        self.assertAlmostEqual(figures["max_ms"], 1200.0)

    def test_all_responses_2xx(self):
        report = WRK_REPORT.replace("  Non-2xx or 3xx responses: 12\n", "")
        self.assertEqual(run.parse_wrk(report)["non_2xx"], 0)

    def test_socket_errors_add_up(self):
        """wrk reports socket errors only when there are some."""
        report = WRK_REPORT.replace(
            "  Non-2xx",
            "  Socket errors: connect 1, read 20, write 300, timeout 4000\n  Non-2xx",
        )
        self.assertEqual(run.parse_wrk(report)["socket_errors"], 4321)


def _rounds(*requests_per_second: float, non_2xx: int = 0) -> list[dict[str, float]]:
    return [
        {"requests_per_second": r, "p99_ms": r / 1000, "non_2xx": non_2xx}
        for r in requests_per_second
    ]


class ScheduleTests(TestCase):
    def test_slices_alternate_the_order_of_the_pair_compared(self):
        """
        Each round measures every target once a method, side by side; the
        limit and the dict backend take turns to go first, and the MySQL
        target always follows them, so that each of the two comes right
        after it as often.
        """
        self.assertEqual(
            run.slices(["limit", "dict", "mysql"], 2),
            [
                [
                    ("PUT", "limit"),
                    ("PUT", "dict"),
                    ("PUT", "mysql"),
                    ("GET", "limit"),
                    ("GET", "dict"),
                    ("GET", "mysql"),
                ],
                [
                    ("PUT", "dict"),
                    ("PUT", "limit"),
                    ("PUT", "mysql"),
                    ("GET", "dict"),
                    ("GET", "limit"),
                    ("GET", "mysql"),
                ],
            ],
        )


class SummaryTests(TestCase):
    def test_ratio_is_the_median_of_paired_rounds(self):
        """
        Each round's target is compared with the same round's limit: a
        lucky limit round does not make the target look slow.
        """
        summary = run.summarize(
            {
                "limit": {"GET": _rounds(100, 200, 100)},
                "target": {"GET": _rounds(90, 190, 80)},
            },
            {"limit": "limit"},
        )
        target = summary["target"]["GET"]
        self.assertEqual(target["round_ratios_to_limit"], [0.9, 0.95, 0.8])
        self.assertEqual(target["ratio_to_limit"], 0.9)
        self.assertEqual(target["requests_per_second"], 90)
        self.assertEqual(target["p99_ms"], 0.09)
        self.assertEqual(summary["limit"]["GET"]["ratio_to_limit"], 1.0)

    def test_a_ratio_to_each_reference(self):
        """
        Every target, the references included, has a ratio to each
        reference, per method, each against the reference's own rounds.
        """
        summary = run.summarize(
            {
                "limit": {"GET": _rounds(100, 100, 100), "PUT": _rounds(100, 100, 100)},
                "etcd": {"GET": _rounds(50, 40, 60), "PUT": _rounds(10, 20, 40)},
                "target": {"GET": _rounds(80, 60, 90), "PUT": _rounds(40, 60, 40)},
            },
            {"limit": "limit", "etcd": "etcd"},
        )
        target = summary["target"]
        self.assertEqual(target["GET"]["round_ratios_to_etcd"], [1.6, 1.5, 1.5])
        self.assertEqual(target["GET"]["ratio_to_etcd"], 1.5)
        self.assertEqual(target["PUT"]["round_ratios_to_etcd"], [4.0, 3.0, 1.0])
        self.assertEqual(target["PUT"]["ratio_to_etcd"], 3.0)
        self.assertEqual(target["PUT"]["ratio_to_limit"], 0.4)
        self.assertEqual(summary["etcd"]["PUT"]["ratio_to_limit"], 0.2)
        self.assertEqual(summary["etcd"]["PUT"]["ratio_to_etcd"], 1.0)

    def test_a_reference_not_measured_gives_no_ratio(self):
        summary = run.summarize(
            {"limit": {"GET": _rounds(100)}, "target": {"GET": _rounds(50)}},
            {"limit": "limit", "etcd": "etcd"},
        )
        self.assertEqual(summary["target"]["GET"]["ratio_to_limit"], 0.5)
        self.assertNotIn("ratio_to_etcd", summary["target"]["GET"])

    def test_errors_of_every_round_count(self):
        """
        The figures are those of the median round, but the errors are
        those of all rounds: one in another round is no less a bug.
        """
        summary = run.summarize(
            {"limit": {"GET": _rounds(100, 300, 200, non_2xx=2)}},
            {"limit": "limit"},
        )
        self.assertEqual(summary["limit"]["GET"]["requests_per_second"], 200)
        self.assertEqual(summary["limit"]["GET"]["non_2xx"], 6)
        self.assertEqual(summary["limit"]["GET"]["socket_errors"], 0)


class WatchEventsTests(TestCase):
    STREAM = (
        b"retry: 1000\nid: 0\n\n"
        + b'id: 1\nevent: put\ndata: {"key":"event: put"}\n\n'
        + b"id: 2\nevent: progress\ndata: {}\n\n"
        + b'id: 3\nevent: put\ndata: {"key":"a"}\n\n'
    )

    def test_reads_cut_anywhere(self):
        """
        A put event counts once, however the stream is cut into reads; a
        key that looks like the marker does not count (it has no newline).
        """
        for cut in range(len(self.STREAM) + 1):
            first, tail = watchers.count_events(b"", self.STREAM[:cut])
            second, _ = watchers.count_events(tail, self.STREAM[cut:])
            self.assertEqual(first + second, 2, cut)

    def test_byte_by_byte(self):
        total, tail = 0, b""
        for byte in self.STREAM:
            found, tail = watchers.count_events(tail, bytes([byte]))
            total += found
        self.assertEqual(total, 2)
