"""
Conditional requests against a table of cases derived from RFC 9110,
section 13: If-Match (strong comparison), If-None-Match (weak comparison),
their order, several field lines as one list, entity tags as opaque
strings, and the rule that preconditions are ignored where the request
without them would not succeed (13.2.1).
"""

from __future__ import annotations

import json
import signal

from treq.testing import StubTreq
from twisted.trial.unittest import TestCase

from ersid.embedded.memory import DictStorage
from ersid.storage import Record

# The key "k" holds version 38 in every case; "absent" holds nothing.
V = '"38"'
OTHER = '"39"'

# (method, key, conditions: [(field, value), ...], expected status)
CASES = [
    # 13.1.1 If-Match: strong comparison; * when the key exists.
    ("PUT", "k", [("If-Match", V)], 204),
    ("PUT", "k", [("If-Match", OTHER)], 412),
    ("PUT", "k", [("If-Match", "W/" + V)], 412),
    ("PUT", "k", [("If-Match", '"038"')], 412),  # opaque: not a number
    ("PUT", "k", [("If-Match", '"38 "')], 400),  # no space in a tag
    ("PUT", "k", [("If-Match", f"{OTHER}, {V}")], 204),
    ("PUT", "k", [("If-Match", OTHER), ("If-Match", V)], 204),  # lines combine
    ("PUT", "k", [("If-Match", "*")], 204),
    ("PUT", "absent", [("If-Match", "*")], 412),
    ("PUT", "absent", [("If-Match", V)], 412),
    ("DELETE", "k", [("If-Match", V)], 204),
    ("DELETE", "k", [("If-Match", OTHER)], 412),
    ("DELETE", "absent", [("If-Match", V)], 404),  # 13.2.1: would be 404
    ("GET", "k", [("If-Match", V)], 200),
    ("GET", "k", [("If-Match", OTHER)], 412),
    ("GET", "k", [("If-Match", "W/" + V)], 412),
    ("HEAD", "k", [("If-Match", OTHER)], 412),
    ("GET", "absent", [("If-Match", V)], 404),  # 13.2.1
    # 13.1.2 If-None-Match: weak comparison; * when the key exists.
    ("PUT", "absent", [("If-None-Match", "*")], 201),
    ("PUT", "k", [("If-None-Match", "*")], 412),
    ("PUT", "k", [("If-None-Match", "*, *")], 412),
    ("PUT", "k", [("If-None-Match", "*"), ("If-None-Match", "*")], 412),
    ("PUT", "k", [("If-None-Match", V)], 412),
    ("PUT", "k", [("If-None-Match", "W/" + V)], 412),
    ("PUT", "k", [("If-None-Match", OTHER)], 204),
    ("PUT", "absent", [("If-None-Match", V)], 201),
    ("DELETE", "k", [("If-None-Match", "*")], 412),
    ("DELETE", "absent", [("If-None-Match", "*")], 404),
    ("GET", "k", [("If-None-Match", V)], 304),
    ("GET", "k", [("If-None-Match", "W/" + V)], 304),
    ("GET", "k", [("If-None-Match", f"{OTHER}, W/{V}")], 304),
    ("GET", "k", [("If-None-Match", "*")], 304),
    ("GET", "k", [("If-None-Match", OTHER)], 200),
    ("GET", "k", [("If-None-Match", '"038"')], 200),
    ("HEAD", "k", [("If-None-Match", V)], 304),
    ("GET", "absent", [("If-None-Match", "*")], 404),
    # 13.2.2: If-Match first, then If-None-Match.
    ("GET", "k", [("If-Match", OTHER), ("If-None-Match", V)], 412),
    ("GET", "k", [("If-Match", V), ("If-None-Match", V)], 304),
    ("GET", "k", [("If-Match", V), ("If-None-Match", OTHER)], 200),
    ("PUT", "k", [("If-Match", V), ("If-None-Match", OTHER)], 204),
    ("PUT", "k", [("If-Match", V), ("If-None-Match", V)], 412),
    ("PUT", "k", [("If-Match", "*"), ("If-None-Match", "*")], 412),
    ("PUT", "absent", [("If-Match", "*"), ("If-None-Match", "*")], 412),
    # Lists: empty elements are allowed; anything else is a clear 400.
    ("PUT", "k", [("If-Match", f" , {V} ,")], 204),
    ("PUT", "k", [("If-Match", "38")], 400),
    ("PUT", "k", [("If-Match", f"{V}, *")], 400),
    ("PUT", "k", [("If-Match", 'W/"38')], 400),
    ("GET", "k", [("If-None-Match", "W/*")], 400),
    ("DELETE", "k", [("If-Match", "garbage")], 400),
]


class ConditionalRequestTableTests(TestCase):
    def test_rfc_9110_cases(self):
        wrong = []
        for case in CASES:
            try:
                self.check(*case)
            except self.failureException as e:
                wrong.append(f"{case}: {e}")
        self.assertEqual(wrong, [])

    def check(self, method, key, conditions, expected):
        storage = DictStorage([("k", Record(b"old", "text/plain", 38))], 38)
        http = StubTreq(_service(storage).resource())
        headers = {}
        for name, value in conditions:
            headers.setdefault(name, []).append(value)
        response = self.successResultOf(
            http.request(
                method, f"http://ersid.test/{key}", data=b"new", headers=headers
            )
        )
        body = self.successResultOf(response.content())
        self.assertEqual(response.code, expected, body)
        current = self.successResultOf(storage.get("k"))
        if expected == 412:
            etags = [V] if key == "k" else None
            self.assertEqual(response.headers.getRawHeaders("ETag"), etags)
        if expected >= 400:
            self.assertEqual(current.value, b"old")
            self.assertIsNone(self.successResultOf(storage.get("absent")))
            if method != "HEAD":
                self.assertIn("error", json.loads(body))
        if expected == 304:
            self.assertEqual(response.headers.getRawHeaders("ETag"), [V])
            self.assertEqual(body, b"")


def _service(storage):
    from ersid.web.app import Service

    return Service(storage)


class PathologicalHeaderTests(TestCase):
    def test_a_header_of_spaces_is_refused_at_once(self):
        """
        With backtracking, a list of 16,000 spaces took seconds to refuse,
        holding up every other client; an alarm of one second guards it.
        """
        storage = DictStorage([("k", Record(b"old", version=38))], 38)
        http = StubTreq(_service(storage).resource())

        def too_slow(signum, frame):
            raise AssertionError("the header took over a second to parse")

        previous = signal.signal(signal.SIGALRM, too_slow)
        self.addCleanup(signal.signal, signal.SIGALRM, previous)
        signal.setitimer(signal.ITIMER_REAL, 1)
        try:
            response = self.successResultOf(
                http.put(
                    "http://ersid.test/k",
                    data=b"new",
                    headers={"If-Match": '"1",' + " " * 16_000 + "x"},
                )
            )
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        self.assertEqual(response.code, 400)
