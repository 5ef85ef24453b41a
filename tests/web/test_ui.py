"""
The key browser at C{/_ui/}: its files and their headers, then the page
itself in a real headless Chromium (driven over the DevTools protocol,
tests/_chromium.py) against a store served on a loopback port: browsing
a tree of thousands of keys, reading text, JSON and binary values,
compare-and-set edits and deletes, live changes, tokens. The views are
photographed into docs/screenshots/.
"""

from __future__ import annotations

import json
import os
from urllib.parse import urlsplit

from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from ersid.auth import TokenAccess, add_token
from ersid.embedded.memory import DictStorage
from ersid.watch import History, Hub
from ersid.web import Service

from .._chromium import CHROMIUM, Chromium
from .._helpers import CHECKOUT, Daemon, http, require, serve

# The README's screenshots are refreshed by a run with
# ERSID_SCREENSHOTS=docs/screenshots; otherwise they go to the test's folder.
SCREENSHOTS = os.environ.get("ERSID_SCREENSHOTS")

# Waits in the page for a condition, as the page changes (no polling).
_UNTIL = """
((condition, what) => new Promise((resolve, reject) => {
  const check = () => {
    let value;
    try { value = condition(); } catch (e) { value = null; }
    if (value) { observer.disconnect(); clearTimeout(timer); resolve(value); }
  };
  const observer = new MutationObserver(check);
  observer.observe(document, {subtree: true, childList: true, characterData: true, attributes: true});
  const timer = setTimeout(() => {
    observer.disconnect();
    reject(new Error("timed out waiting for " + what + "; the page shows: " + document.body.innerText.slice(0, 2000)));
  }, 20000);
  check();
}))
"""


class UIFilesTests(TestCase):
    """The browser's files, served without a token, under a strict policy."""

    def setUp(self):
        self.treq = StubTreq(Service(DictStorage()).resource())

    def test_the_page_and_its_policy(self):
        async def check():
            response = await self.treq.get("http://x/_ui/")
            self.assertEqual(response.code, 200)
            body = await response.content()
            self.assertIn(b'<script type="module" src="ui.js">', body)
            headers = response.headers
            policy = headers.getRawHeaders(b"content-security-policy")[0]
            self.assertIn(b"default-src 'none'", policy)
            self.assertIn(b"script-src 'self';", policy)
            self.assertNotIn(b"unsafe", policy)
            self.assertEqual(
                headers.getRawHeaders(b"content-type"), [b"text/html; charset=utf-8"]
            )
            self.assertEqual(
                headers.getRawHeaders(b"x-content-type-options"), [b"nosniff"]
            )

        return Deferred.fromCoroutine(check())

    def test_ui_without_slash_goes_to_the_folder(self):
        async def check():
            response = await self.treq.get("http://x/_ui", allow_redirects=False)
            self.assertEqual(response.code, 308)
            self.assertEqual(response.headers.getRawHeaders(b"location"), [b"/_ui/"])

        return Deferred.fromCoroutine(check())

    def test_the_script_and_style(self):
        async def check():
            for name, kind in (("ui.js", b"text/javascript"), ("ui.css", b"text/css")):
                response = await self.treq.get(f"http://x/_ui/{name}")
                self.assertEqual(response.code, 200)
                content_type = response.headers.getRawHeaders(b"content-type")[0]
                self.assertTrue(content_type.startswith(kind), content_type)

        return Deferred.fromCoroutine(check())

    def test_no_writes_there(self):
        async def check():
            response = await self.treq.put("http://x/_ui/ui.js", data=b"x")
            self.assertEqual(response.code, 405)
            self.assertEqual(response.headers.getRawHeaders(b"allow"), [b"GET, HEAD"])
            response = await self.treq.get("http://x/_ui/ui.js")
            self.assertNotEqual(await response.content(), b"x")

        return Deferred.fromCoroutine(check())

    def test_nothing_else(self):
        async def check():
            for path in ("nope.js", "..%2Fopenapi.json", "%2E%2E/_health", "ui.js/x"):
                response = await self.treq.get(f"http://x/_ui/{path}")
                document = json.loads(await response.content())
                self.assertIn(response.code, (400, 404), path)
                self.assertIn("error", document)

        return Deferred.fromCoroutine(check())


class _BrowserTestCase(TestCase):
    """A store served on a loopback port, and a Chromium to look at it."""

    access = None

    def setUp(self):
        require(
            os.path.exists(CHROMIUM),
            f"{CHROMIUM}: install the Debian package chromium (bin/dev test "
            "installs it) to test the key browser",
        )
        self.hub = Hub(History(), reactor)
        self.storage = DictStorage(publish=self.hub.publish)
        self.http = http()

    async def start(self, path: str = "", pause: str | None = None, **service) -> None:
        """
        Serve the store, open the browser on C{/_ui/#path}, the page's
        requests to URLs matching C{pause} held (see L{paused}).
        """
        self.url = await serve(self, Service(self.storage, hub=self.hub, **service))
        self.browser = Chromium(os.path.abspath(self.mktemp()))
        self.addCleanup(lambda: Deferred.fromCoroutine(self.browser.stop()))
        self.paused: Deferred[dict] = Deferred()

        def on_event(message: dict) -> None:
            if (
                message.get("method") == "Fetch.requestPaused"
                and not self.paused.called
            ):
                self.paused.callback(message["params"])

        self.browser.listen(on_event)
        self.page = await self.browser.open(f"{self.url}/_ui/#{path}", pause)

    def put(self, key: str, value: bytes, content_type: str = "text/plain") -> None:
        self.successResultOf(self.storage.set(key, value, content_type))

    async def until(self, condition: str, what: str):
        """The value of the JavaScript C{condition} once truthy."""
        return await self.page.evaluate(f"{_UNTIL}(() => {condition}, {what!r})")

    async def click(self, selector: str) -> None:
        await self.page.evaluate(f"document.querySelector({selector!r}).click()")

    async def listed(self, name: str, present: bool = True) -> None:
        """Wait until the folder shown lists C{name}, or no longer does."""
        found = f"document.querySelector('#entries li[data-name={json.dumps(name)}]')"
        await self.until(
            found if present else f"!{found}",
            f"{name} {'listed' if present else 'gone'}",
        )

    async def click_entry(self, name: str) -> None:
        await self.until(
            f"document.querySelector('#entries li[data-name={json.dumps(name)}] button')",
            f"an entry {name}",
        )
        await self.click(f"#entries li[data-name={json.dumps(name)}] button")

    async def text(self, selector: str) -> str:
        return await self.page.evaluate(
            f"document.querySelector({selector!r}).textContent"
        )

    async def entries(self) -> list[str]:
        return await self.page.evaluate(
            "Array.from(document.querySelectorAll('#entries li'), li => li.dataset.name)"
        )

    async def screenshot(self, name: str) -> None:
        folder = os.path.join(CHECKOUT, SCREENSHOTS) if SCREENSHOTS else self.mktemp()
        os.makedirs(folder, exist_ok=True)
        await self.page.screenshot(os.path.join(folder, name))
        with open(os.path.join(folder, name), "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")

    async def download(self) -> bytes:
        """What clicking the download link saves."""
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        await self.browser.send(
            "Browser.setDownloadBehavior",
            behavior="allowAndName",
            downloadPath=folder,
            eventsEnabled=True,
        )
        done: Deferred[str] = Deferred()

        def on_event(message: dict) -> None:
            params = message.get("params", {})
            if (
                message.get("method") == "Browser.downloadProgress"
                and params.get("state") == "completed"
                and not done.called
            ):
                done.callback(params["guid"])

        self.browser.listen(on_event)
        await self.click("#download")
        with open(os.path.join(folder, await done), "rb") as f:
            return f.read()

    async def get(self, key: str):
        response = await self.http.get(f"{self.url}/{key}")
        return response, await response.content()


class BrowseTests(_BrowserTestCase):
    def seed(self) -> None:
        for i in range(3000):
            self.put(f"app/service{i % 30:02d}/key{i:04d}", b"v%d" % i)
        self.put("app/motd", b"Hello <b>world</b>")
        self.put(
            "app/config.json", b'{"replicas":3,"tags":["a","b"]}', "application/json"
        )
        self.put("app/blob", bytes(range(256)), "application/octet-stream")
        self.put("top", b"a key at the top")

    def test_folders_one_page_at_a_time(self):
        async def check():
            self.seed()
            await self.start()
            await self.until("document.querySelector('#entries li')", "the root folder")
            self.assertEqual(await self.entries(), ["app/", "top"])
            await self.click_entry("app/")
            await self.until(
                "document.querySelectorAll('#entries li').length > 30", "app/"
            )
            names = await self.entries()
            self.assertEqual(names[0], "")  # ..
            self.assertEqual(
                names[1:],
                ["app/blob", "app/config.json", "app/motd"]
                + [f"app/service{i:02d}/" for i in range(30)],
            )
            await self.screenshot("folders.png")
            await self.click_entry("app/service07/")
            await self.until(
                "document.querySelectorAll('#entries li').length === 101",
                "a first page",
            )
            self.assertFalse(
                await self.page.evaluate("document.getElementById('more').hidden")
            )
            await self.click("#more")
            await self.until(
                "document.querySelectorAll('#entries li').length === 101 && "
                "document.getElementById('more').hidden",
                "the second and last page",
            )
            # Every request of the page asked for a page of keys, never all.
            listed = await self.page.evaluate(
                "performance.getEntriesByType('resource').map(e => e.name)"
                ".filter(n => n.includes('/_keys'))"
            )
            self.assertTrue(listed)
            for url in listed:
                self.assertIn("limit=100", url)
            self.assertLess(len(listed), 60)

        return Deferred.fromCoroutine(check())

    def test_text_json_and_binary_values(self):
        async def check():
            self.seed()
            await self.start("app/")
            await self.click_entry("app/motd")
            await self.until("document.getElementById('view').textContent", "the value")
            self.assertEqual(await self.text("#view"), "Hello <b>world</b>")
            self.assertEqual(
                await self.page.evaluate("document.querySelectorAll('b').length"), 0
            )
            self.assertEqual(await self.text("#size"), "18 bytes")
            await self.click_entry("app/config.json")
            await self.until(
                "document.getElementById('view').dataset.kind === 'json'", "JSON"
            )
            self.assertEqual(
                await self.text("#view"),
                json.dumps({"replicas": 3, "tags": ["a", "b"]}, indent=2),
            )
            await self.screenshot("json.png")
            await self.click_entry("app/blob")
            await self.until(
                "document.getElementById('view').dataset.kind === 'binary'", "hex"
            )
            view = await self.text("#view")
            self.assertTrue(view.startswith("00000000  00 01 02 03"), view[:80])
            self.assertIn("000000f0  f0 f1 f2", view)
            self.assertEqual(await self.download(), bytes(range(256)))
            self.assertTrue(
                await self.page.evaluate(
                    "document.getElementById('edit-value').disabled"
                )
            )

        return Deferred.fromCoroutine(check())

    def test_jump_to_a_key_or_filter_by_a_prefix(self):
        async def check():
            self.seed()
            await self.start()
            await self.until("document.querySelector('#entries li')", "the root folder")
            await self.page.evaluate(
                "document.getElementById('path').value = 'app/config.json';"
                "document.querySelector('#jump button').click()"
            )
            await self.until(
                "document.getElementById('view').dataset.kind === 'json'", "JSON"
            )
            self.assertEqual(await self.text("#key"), "app/config.json")
            await self.page.evaluate(
                "document.getElementById('path').value = 'app/service1';"
                "document.querySelector('#jump button').click()"
            )
            await self.until(
                "document.querySelectorAll('#entries li').length === 11",
                "the filtered folder",
            )
            self.assertEqual(
                await self.entries(),
                ["app/"] + [f"app/service1{i}/" for i in range(10)],
            )
            self.assertEqual(
                await self.page.evaluate(
                    "Array.from(document.querySelectorAll('#entries li button'), b => b.textContent)"
                ),
                [".."] + [f"service1{i}/" for i in range(10)],
            )
            self.assertTrue(
                await self.page.evaluate("document.getElementById('value').hidden")
            )

        return Deferred.fromCoroutine(check())

    def test_a_folder_after_any_character(self):
        """A key with U+10FFFF after its folder's "/" is past the cursor too."""

        async def check():
            self.put("x/a", b"1")
            self.put("x/\U0010ffffz", b"2")
            self.put("y", b"3")
            await self.start()
            await self.until(
                "document.querySelectorAll('#entries li').length === 2", "x/, y"
            )
            self.assertEqual(await self.entries(), ["x/", "y"])

        return Deferred.fromCoroutine(check())

    def test_a_value_opened_as_a_page_runs_nothing(self):
        """A stored page is sandboxed: no script, no origin, no token to read."""

        async def check():
            self.put(
                "evil.html",
                b"<title>t</title><script>document.title ="
                b" 'ran:' + sessionStorage.getItem('ersid-token')</script>",
                "text/html",
            )
            await self.start()
            await self.page.evaluate("sessionStorage.setItem('ersid-token', 'secret')")
            page = await self.browser.open(f"{self.url}/evil.html")
            self.assertEqual(await page.evaluate("document.title"), "t")

        return Deferred.fromCoroutine(check())

    def test_a_value_with_script_is_only_text(self):
        async def check():
            evil = b'<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'
            self.put("evil", evil, "text/html")
            await self.start("evil")
            await self.until("document.getElementById('view').textContent", "the value")
            self.assertEqual(await self.text("#view"), evil.decode())
            self.assertIsNone(await self.page.evaluate("window.pwned ?? null"))
            self.assertEqual(await self.page.evaluate("document.scripts.length"), 1)
            self.assertEqual(await self.page.evaluate("document.images.length"), 0)

        return Deferred.fromCoroutine(check())


class EditTests(_BrowserTestCase):
    async def edit(self, value: str) -> None:
        await self.page.evaluate(
            f"document.getElementById('edit-value').value = {json.dumps(value)}"
        )
        await self.click("#save")

    def test_an_edit_over_another_change_is_refused_and_reload_shows_it(self):
        async def check():
            self.put("app/mode", b"blue")
            await self.start("app/mode")
            await self.until(
                "document.getElementById('view').textContent === 'blue'", "blue"
            )
            await self.until(
                "document.getElementById('live').textContent === 'live'", "live"
            )
            # Someone else writes meanwhile; the page sees it, and says so.
            response = await self.http.put(f"{self.url}/app/mode", data=b"green")
            await response.content()
            await self.until(
                "!document.getElementById('changed').hidden", "the change noticed"
            )
            await self.edit("red")
            await self.until(
                "!document.getElementById('conflict').hidden", "a conflict"
            )
            self.assertIn("your edit was not saved", await self.text("#conflict"))
            await self.screenshot("conflict.png")
            _, body = await self.get("app/mode")
            self.assertEqual(body, b"green")
            await self.click("#reload")
            await self.until(
                "document.getElementById('view').textContent === 'green'", "green"
            )
            await self.edit("red")
            await self.until(
                "document.getElementById('view').textContent === 'red'", "saved"
            )
            response, body = await self.get("app/mode")
            self.assertEqual(body, b"red")
            self.assertEqual(
                await self.text("#version"),
                response.headers.getRawHeaders(b"etag")[0].decode(),
            )

        return Deferred.fromCoroutine(check())

    def test_create_with_a_ttl_then_delete(self):
        async def check():
            await self.start("app/")
            await self.until(
                "document.getElementById('folder').textContent === 'app/'", "app/"
            )
            await self.click("#new")
            await self.page.evaluate(
                "document.getElementById('edit-key').value = 'app/new';"
                "document.getElementById('edit-ttl').value = '3600';"
            )
            await self.edit("fresh")
            await self.until(
                "document.getElementById('view').textContent === 'fresh'", "created"
            )
            self.assertIn("s left", await self.text("#expires"))
            response, body = await self.get("app/new")
            self.assertEqual(body, b"fresh")
            self.assertTrue(response.headers.getRawHeaders(b"ersid-ttl"))
            # A second "new" of the same name is refused: create only.
            await self.click("#new")
            await self.page.evaluate(
                "document.getElementById('edit-key').value = 'app/new'"
            )
            await self.edit("again")
            await self.until("!document.getElementById('conflict').hidden", "a refusal")
            self.assertIn("exists already", await self.text("#conflict"))
            await self.click_entry("app/new")
            await self.until(
                "document.getElementById('view').textContent === 'fresh'", "fresh"
            )
            # The TTL cleared: the key lasts.
            await self.page.evaluate("document.getElementById('edit-ttl').value = ''")
            await self.edit("fresh")
            await self.until(
                "document.getElementById('expires').textContent === 'never'", "no TTL"
            )
            await self.click("#delete")
            await self.until("document.getElementById('value').hidden", "deleted")
            response, _ = await self.get("app/new")
            self.assertEqual(response.code, 404)

        return Deferred.fromCoroutine(check())

    def test_a_delete_after_another_change_is_refused(self):
        async def check():
            self.put("k", b"one")
            await self.start("k")
            await self.until(
                "document.getElementById('view').textContent === 'one'", "one"
            )
            self.put("k", b"two")
            await self.click("#delete")
            await self.until(
                "!document.getElementById('conflict').hidden", "a conflict"
            )
            _, body = await self.get("k")
            self.assertEqual(body, b"two")

        return Deferred.fromCoroutine(check())


class SaveTests(_BrowserTestCase):
    """What the page writes back is what it loaded, unless edited."""

    async def save_with_ttl(self, key: str) -> None:
        await self.start(key)
        await self.until("document.getElementById('version').textContent", "the key")
        await self.page.evaluate("document.getElementById('edit-ttl').value = '3600'")
        await self.click("#save")
        await self.until(
            "document.getElementById('expires').textContent !== 'never'", "saved"
        )

    def test_a_binary_value_kept_when_its_ttl_is_set(self):
        async def check():
            value = bytes(range(256)) * 4
            self.put("bin", value, "application/octet-stream")
            await self.save_with_ttl("bin")
            response, body = await self.get("bin")
            self.assertEqual(body, value)
            self.assertTrue(response.headers.getRawHeaders(b"ersid-ttl"))

        return Deferred.fromCoroutine(check())

    def test_line_ends_and_a_byte_order_mark_kept(self):
        async def check():
            value = b"\xef\xbb\xbfone\r\ntwo\r\n"
            self.put("crlf", value)
            await self.save_with_ttl("crlf")
            _, body = await self.get("crlf")
            self.assertEqual(body, value)
            # A text area would turn CR LF into LF: not edited there.
            self.assertTrue(
                await self.page.evaluate(
                    "document.getElementById('edit-value').disabled"
                )
            )

        return Deferred.fromCoroutine(check())


class LiveTests(_BrowserTestCase):
    def test_changes_through_the_api_appear(self):
        async def check():
            self.put("app/a", b"1")
            await self.start("app/")
            await self.until(
                "document.getElementById('live').textContent === 'live'", "live"
            )
            self.put("app/b", b"2")
            await self.listed("app/b")
            self.successResultOf(self.storage.delete("app/a"))
            await self.listed("app/a", present=False)
            await self.screenshot("live.png")

        return Deferred.fromCoroutine(check())

    def test_a_change_before_the_watch_begins_is_not_missed(self):
        """The folder is followed from the revision its listing showed."""

        async def check():
            self.put("app/a", b"1")
            await self.start("app/", pause="*/_watch*")
            request = await self.paused
            self.put("app/b", b"2")  # after the listing, before the watch
            await self.page.send(
                "Fetch.continueRequest", requestId=request["requestId"]
            )
            await self.listed("app/b")

        return Deferred.fromCoroutine(check())


class NavigationTests(_BrowserTestCase):
    def test_a_folder_left_before_its_listing_came_is_not_shown(self):
        """An answer for a folder the page has left is dropped, and not followed."""

        async def check():
            self.put("f1/k", b"1")
            self.put("f2/k", b"2")
            await self.start("", pause="*prefix=f1%2F*")
            await self.click_entry("f1/")
            request = await self.paused  # f1/'s listing, held
            await self.click_entry("f2/")
            await self.listed("f2/k")
            await self.page.send(
                "Fetch.continueRequest", requestId=request["requestId"]
            )
            await self.until(
                "performance.getEntriesByType('resource')"
                ".some(e => e.name.includes('prefix=f1%2F') && e.responseEnd > 0)",
                "f1/'s listing answered",
            )
            # Its body read and handled: a few turns of the page's loop.
            await self.page.evaluate(
                "new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))"
            )
            self.assertEqual(await self.entries(), ["", "f2/k"])
            self.put("f2/new", b"3")
            await self.listed("f2/new")
            self.assertEqual(await self.entries(), ["", "f2/k", "f2/new"])
            self.assertEqual(await self.text("#folder"), "f2/")

        return Deferred.fromCoroutine(check())


class RestartTests(_BrowserTestCase):
    def test_shows_the_daemon_gone_and_follows_again_when_back(self):
        """
        The daemon stopped: the page says it is disconnected; back on the
        same port, it follows again, with what was written meanwhile.
        """

        async def check():
            data_dir = os.path.abspath(self.mktemp())
            daemon = Daemon.ersid(self, data_dir)
            self.url = url = await daemon.rest_url()
            response = await self.http.put(f"{url}/app/a", data=b"1")
            await response.content()
            self.browser = Chromium(os.path.abspath(self.mktemp()))
            self.addCleanup(lambda: Deferred.fromCoroutine(self.browser.stop()))
            self.page = await self.browser.open(f"{url}/_ui/#app/")
            await self.until(
                "document.getElementById('live').textContent === 'live'", "live"
            )
            await daemon.stop()
            await self.until(
                "document.getElementById('live').textContent.startsWith('disconnected')",
                "disconnected",
            )
            await self.screenshot("disconnected.png")
            port = urlsplit(url).port
            daemon = Daemon.ersid(
                self, data_dir, "-p", f"tcp:{port}:interface=127.0.0.1"
            )
            self.assertEqual(await daemon.rest_url(), url)
            response = await self.http.put(f"{url}/app/b", data=b"2")
            await response.content()
            await self.until(
                "document.getElementById('live').textContent === 'live'", "live again"
            )
            await self.listed("app/b")

        return Deferred.fromCoroutine(check())


class TokenTests(_BrowserTestCase):
    def test_asks_for_a_token_and_shows_only_what_it_may_read(self):
        async def check():
            tokens = os.path.abspath(self.mktemp())
            token = add_token(tokens, "reader", read=("app/",))
            self.put("app/a", b"1")
            self.put("secret/b", b"2")
            await self.start("", access=TokenAccess(tokens))
            await self.until(
                "!document.getElementById('login').hidden", "a token asked for"
            )
            await self.screenshot("token.png")
            await self.page.evaluate(
                f"document.getElementById('token').value = {token!r}"
            )
            await self.click("#login button")
            await self.until("document.querySelector('#entries li')", "the keys")
            self.assertEqual(await self.entries(), ["app/"])
            self.assertFalse(
                await self.page.evaluate("document.getElementById('filtered').hidden")
            )
            self.assertEqual(
                await self.page.evaluate("sessionStorage.getItem('ersid-token')"), token
            )
            self.assertIsNone(
                await self.page.evaluate("localStorage.getItem('ersid-token')")
            )
            # Live with a token too (long polls: EventSource cannot send it).
            await self.click_entry("app/")
            await self.until(
                "document.getElementById('live').textContent === 'live'", "live"
            )
            self.put("app/c", b"3")
            await self.listed("app/c")

        return Deferred.fromCoroutine(check())
