"""
The benchmark script's own arithmetic: how it reads wrk's report and turns
rounds into the ratios the README quotes.
"""

from __future__ import annotations

import importlib.util
import os

from twisted.trial.unittest import TestCase

_RUN = os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks", "run.py")
_spec = importlib.util.spec_from_file_location("ersid_benchmarks_run", _RUN)
run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run)

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


def _rounds(*requests_per_second: float) -> list[dict[str, float]]:
    return [{"requests_per_second": r, "p99_ms": r / 1000} for r in requests_per_second]


class ScheduleTests(TestCase):
    def test_slices_alternate_the_order_of_the_pair_compared(self):
        """
        Each round measures every target once a method, side by side; the
        ceiling and the dict backend take turns to go first, and the MySQL
        target always follows them, so that each of the two comes right
        after it as often.
        """
        self.assertEqual(
            run.slices(["ceiling", "dict", "mysql"], 2),
            [
                [
                    ("PUT", "ceiling"),
                    ("PUT", "dict"),
                    ("PUT", "mysql"),
                    ("GET", "ceiling"),
                    ("GET", "dict"),
                    ("GET", "mysql"),
                ],
                [
                    ("PUT", "dict"),
                    ("PUT", "ceiling"),
                    ("PUT", "mysql"),
                    ("GET", "dict"),
                    ("GET", "ceiling"),
                    ("GET", "mysql"),
                ],
            ],
        )


class SummaryTests(TestCase):
    def test_ratio_is_the_median_of_paired_rounds(self):
        """
        Each round's target is compared with the same round's ceiling: a
        lucky ceiling round does not make the target look slow.
        """
        summary = run.summarize(
            {
                "ceiling": {"GET": _rounds(100, 200, 100)},
                "target": {"GET": _rounds(90, 190, 80)},
            },
            "ceiling",
        )
        target = summary["target"]["GET"]
        self.assertEqual(target["round_ratios"], [0.9, 0.95, 0.8])
        self.assertEqual(target["ratio"], 0.9)
        self.assertEqual(target["requests_per_second"], 90)
        self.assertEqual(target["p99_ms"], 0.09)
        self.assertEqual(summary["ceiling"]["GET"]["ratio"], 1.0)
