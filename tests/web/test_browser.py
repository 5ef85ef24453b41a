"""
C{/_watch} as a browser uses it: a script in a real headless Chromium
follows a prefix with its own C{EventSource}, and goes on without a gap
and without a duplicate after the daemon is restarted, the browser
resuming with C{Last-Event-ID} as it reconnects.
"""

from __future__ import annotations

import json
import os
import signal
from urllib.parse import urlsplit

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from .._chromium import CHROMIUM, Chromium
from .._helpers import Daemon, http, require

# The longest the page may take to report what it was asked to.
DEADLINE = 60.0

# The script follows t/ and writes back every event it receives, in the
# order received, under browser/seen/, retrying a write until the daemon
# takes it; it also counts the EventSource's opens and errors, and says
# whether it gave up (a reconnect answered other than 200 is final).
SCRIPT = """
"use strict";
let received = 0, opens = 0, errors = 0;
let reports = Promise.resolve();
function report(key, body) {
  reports = reports.then(async () => {
    for (;;) {
      try {
        const response = await fetch("/browser/" + key, {method: "PUT", body});
        if (response.ok) return;
      } catch (e) {
        // The daemon is down for a moment.
      }
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  });
}
const source = new EventSource("/_watch?prefix=t/");
source.addEventListener("open", () => report("opens", String(++opens)));
source.addEventListener("error", () => {
  report("errors", String(++errors));
  if (source.readyState === EventSource.CLOSED) {
    report("closed", "the EventSource gave up after error " + errors);
  }
});
source.addEventListener("compacted", (e) => report("compacted", e.data));
for (const name of ["put", "delete"]) {
  source.addEventListener(name, (e) => {
    received += 1;
    const number = String(received).padStart(6, "0");
    report("seen/" + number, e.lastEventId + " " + e.data);
  });
}
"""


def revision_of(response) -> int:
    """The revision a write got, from its ETag."""
    return int(response.headers.getRawHeaders(b"etag")[0].strip(b'"'))


class BrowserReconnectTests(TestCase):
    def setUp(self):
        require(
            os.path.exists(CHROMIUM),
            f"{CHROMIUM}: install the Debian package chromium (bin/dev test "
            "installs it) to watch from a real browser",
        )
        self.data_dir = os.path.abspath(self.mktemp())
        self.http = http()

    async def start_browser(self, url: str) -> Chromium:
        """
        Headless Chromium running L{SCRIPT} in a document of the daemon's
        origin (its OpenAPI description: values are sandboxed, and run
        nothing), stopped after the test.
        """
        browser = Chromium(os.path.abspath(self.mktemp()))
        self.addCleanup(lambda: Deferred.fromCoroutine(browser.stop()))
        page = await browser.open(f"{url}/_openapi.json")
        await page.evaluate(SCRIPT)
        return browser

    async def put(self, url: str, key: str, value: bytes, content_type: str) -> int:
        """Write C{key}; the revision it got."""
        response = await self.http.put(
            f"{url}/{key}", data=value, headers={"Content-Type": content_type}
        )
        await response.content()
        self.assertEqual(response.code, 201, key)
        return revision_of(response)

    async def reports(self, url: str) -> tuple[dict[str, str], int]:
        """What the page wrote under browser/, and the revision listed at."""
        response = await self.http.get(f"{url}/_keys?prefix=browser/")
        listing = json.loads(await response.content())
        self.assertIsNone(listing["next"])
        reported = {}
        for key in listing["keys"]:
            value = await (await self.http.get(f"{url}/{key}")).content()
            reported[key.removeprefix("browser/")] = value.decode("utf-8")
        return reported, listing["revision"]

    async def wait_for_page(self, url: str, browser: Chromium, done, what: str):
        """
        What the page reported, once C{done} of it: between two looks, a
        long poll for its next report. Fails at the deadline, or as soon as
        the browser exits or its EventSource gives up.
        """
        deadline = reactor.seconds() + DEADLINE
        while True:
            reported, revision = await self.reports(url)
            if done(reported):
                return reported
            if browser.ended.called:
                self.fail(
                    f"Chromium exited while waiting for {what}; the page "
                    f"reported {reported}; Chromium said:\n{browser.output[-3000:]}"
                )
            if "closed" in reported:
                self.fail(
                    f"the page's EventSource gave up while waiting for {what}: "
                    f"{reported}; {await self.resuming(url, reported)}"
                )
            left = deadline - reactor.seconds()
            if left <= 0:
                self.fail(
                    f"no {what} after {DEADLINE:.0f} s; the page reported {reported}"
                )
            poll = await self.http.get(
                f"{url}/_watch?prefix=browser/&since={revision}&wait={min(5, left):.3f}"
            )
            answer = await poll.content()
            self.assertEqual(poll.code, 200, answer)

    async def resuming(self, url: str, reported: dict[str, str]) -> str:
        """What a reconnect from the last event the page saw is answered."""
        seen = sorted(key for key in reported if key.startswith("seen/"))
        last = reported[seen[-1]].split(" ", 1)[0] if seen else "0"
        response = await self.http.get(
            f"{url}/_watch?prefix=t/&wait=0", headers={"Last-Event-ID": last}
        )
        body = (await response.content()).decode("utf-8", "replace")
        return f"Last-Event-ID: {last} is answered {response.code}: {body}"

    async def watchers(self, url: str) -> int:
        """How many watchers the daemon holds."""
        health = json.loads(await (await self.http.get(f"{url}/_health")).content())
        return health["watch"]["watchers"]

    def test_restart_resumes_without_gap_or_duplicate(self):
        async def check():
            daemon = Daemon.ersid(self, self.data_dir)
            url = await daemon.rest_url()
            port = urlsplit(url).port
            browser = await self.start_browser(url)
            reported = await self.wait_for_page(
                url, browser, lambda reported: "opens" in reported, "open stream"
            )
            keys = ["t/1", "t/2", "t/3"]
            revisions = [await self.put(url, key, b"v", "text/plain") for key in keys]
            await self.wait_for_page(url, browser, seen(keys[-1]), "3 events")

            opens = int(reported["opens"])
            for _ in range(3):
                self.assertEqual(await daemon.stop(), -signal.SIGTERM, daemon.output)
                # Back on the same port, for the browser reconnects to its
                # URL; the writes come at once, while it waits to reconnect
                # (it tries every second), to be had from the history.
                daemon = Daemon.ersid(
                    self, self.data_dir, "-p", f"tcp:{port}:interface=127.0.0.1"
                )
                self.assertEqual(await daemon.rest_url(), url)
                written = [f"t/{len(keys) + n}" for n in (1, 2, 3)]
                for key in written:
                    revisions.append(await self.put(url, key, b"v", "text/plain"))
                keys += written
                if not await self.watchers(url):
                    break
                # Rarely, it was back before the writes: once more.
                reported = await self.wait_for_page(
                    url, browser, opened_again(opens), "the stream to open again"
                )
                opens = int(reported["opens"])
            else:
                self.fail("the browser reconnected before the writes, three times")
            await self.wait_for_page(
                url, browser, opened_again(opens), "the stream to open again"
            )
            # A last write once it is back, so that whatever it missed of
            # the history shows at once, as a gap before this one.
            keys.append(f"t/{len(keys) + 1}")
            revisions.append(await self.put(url, keys[-1], b"v", "text/plain"))
            reported = await self.wait_for_page(
                url, browser, seen(keys[-1]), f"{len(keys)} events"
            )

            expected = [
                (str(revision), "put", key, revision)
                for key, revision in zip(keys, revisions, strict=True)
            ]
            self.assertEqual(received(reported), expected, reported)
            self.assertGreaterEqual(int(reported["errors"]), 1, reported)
            self.assertNotIn("compacted", reported)

        return Deferred.fromCoroutine(check())


def received(reported: dict[str, str]) -> list[tuple[str, str, str, int]]:
    """
    The events the page reported, in the order received: their ids,
    types, keys and revisions.
    """
    events = []
    for key in sorted(key for key in reported if key.startswith("seen/")):
        last_id, data = reported[key].split(" ", 1)
        document = json.loads(data)
        events.append(
            (last_id, document["type"], document["key"], document["revision"])
        )
    return events


def opened_again(opens: int):
    """Whether the page's stream opened more than C{opens} times."""
    return lambda reported: int(reported["opens"]) > opens


def seen(key: str):
    """Whether the page's last report is of an event for C{key}."""

    def done(reported: dict[str, str]) -> bool:
        events = received(reported)
        return bool(events) and events[-1][2] == key

    return done
