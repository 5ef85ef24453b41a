"""
Headless Chromium driven over its DevTools protocol for the browser tests,
without a driver to install: Chromium started with
C{--remote-debugging-pipe} reads commands on its file descriptor 3 and
writes answers and events on 4, each a JSON object ended by a NUL byte
(as Puppeteer's pipe transport does). Twisted's C{spawnProcess} maps the
two descriptors; a command's answer comes back as a Deferred.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

__all__ = ["CHROMIUM", "Chromium", "DevToolsError", "Page"]

CHROMIUM = "/usr/bin/chromium"
_TO_BROWSER, _FROM_BROWSER = 3, 4


class DevToolsError(Exception):
    """A command Chromium refused, or the browser gone before answering."""


class _Pipe(ProcessProtocol):
    def __init__(self) -> None:
        self._buffer = b""
        self._ids = itertools.count(1)
        self._waiting: dict[int, Deferred[dict]] = {}
        self.listeners: list[Callable[[dict], None]] = []
        self.output = b""
        self.ended: Deferred[None] = Deferred()

    def send(self, method: str, params: dict, session: str | None) -> Deferred[dict]:
        number = next(self._ids)
        message: dict[str, Any] = {"id": number, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        answer: Deferred[dict] = Deferred()
        self._waiting[number] = answer
        self.transport.writeToChild(_TO_BROWSER, json.dumps(message).encode() + b"\0")
        return answer

    def childDataReceived(self, fd: int, data: bytes) -> None:
        if fd != _FROM_BROWSER:
            self.output = (self.output + data)[-20_000:]
            return
        self._buffer += data
        *messages, self._buffer = self._buffer.split(b"\0")
        for raw in messages:
            message = json.loads(raw)
            answer = self._waiting.pop(message.get("id"), None)
            if answer is None:
                for listener in list(self.listeners):
                    listener(message)
            elif "error" in message:
                answer.errback(DevToolsError(message["error"].get("message")))
            else:
                answer.callback(message.get("result", {}))

    def processEnded(self, reason: Failure) -> None:
        waiting, self._waiting = self._waiting, {}
        for answer in waiting.values():
            answer.errback(DevToolsError("Chromium exited"))
        self.ended.callback(None)


class Page:
    """One tab, attached to in its own session."""

    def __init__(self, browser: Chromium, session: str) -> None:
        self._browser = browser
        self.session = session

    def send(self, method: str, **params: Any) -> Deferred[dict]:
        return self._browser.send(method, session=self.session, **params)

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript C{expression}, awaited if a promise."""
        result = await self.send(
            "Runtime.evaluate",
            expression=expression,
            awaitPromise=True,
            returnByValue=True,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details["text"]
            raise DevToolsError(f"{expression[:80]!r} threw: {text}")
        return result["result"].get("value")

    async def screenshot(self, path: str) -> None:
        """A PNG of what the tab shows, written to C{path}."""
        result = await self.send("Page.captureScreenshot", format="png")
        import base64

        with open(path, "wb") as f:
            f.write(base64.b64decode(result["data"]))


class Chromium:
    """A headless Chromium for one test, stopped by L{stop}."""

    def __init__(self, profile: str, width: int = 1200, height: int = 800) -> None:
        os.makedirs(profile, exist_ok=True)
        self._pipe = _Pipe()
        args = [
            CHROMIUM,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--remote-debugging-pipe",
            f"--window-size={width},{height}",
            f"--user-data-dir={profile}",
            "about:blank",
        ]
        self._process = reactor.spawnProcess(
            self._pipe,
            CHROMIUM,
            args,
            env={**os.environ},
            childFDs={0: "w", 1: "r", 2: "r", _TO_BROWSER: "w", _FROM_BROWSER: "r"},
        )
        self.ended = self._pipe.ended

    @property
    def output(self) -> str:
        """What Chromium wrote on its standard output and error, the end of it."""
        return self._pipe.output.decode("utf-8", "replace")

    def send(
        self, method: str, session: str | None = None, **params: Any
    ) -> Deferred[dict]:
        return self._pipe.send(method, params, session)

    def listen(self, listener: Callable[[dict], None]) -> None:
        """Have C{listener} told every event Chromium sends."""
        self._pipe.listeners.append(listener)

    async def open(self, url: str, pause: str | None = None) -> Page:
        """
        A new tab showing C{url}, once loaded; its requests to URLs that
        match C{pause} (a pattern with C{*}) held until the test continues
        them (the DevTools protocol's C{Fetch.requestPaused} events).
        """
        target = await self.send("Target.createTarget", url="about:blank")
        attached = await self.send(
            "Target.attachToTarget", targetId=target["targetId"], flatten=True
        )
        page = Page(self, attached["sessionId"])
        await page.send("Page.enable")
        await page.send("Runtime.enable")
        if pause is not None:
            await page.send("Fetch.enable", patterns=[{"urlPattern": pause}])
        loaded: Deferred[None] = Deferred()

        def on_event(message: dict) -> None:
            if (
                message.get("sessionId") == page.session
                and message.get("method") == "Page.loadEventFired"
                and not loaded.called
            ):
                loaded.callback(None)

        self.listen(on_event)
        await page.send("Page.navigate", url=url)
        await loaded
        self._pipe.listeners.remove(on_event)
        return page

    async def stop(self) -> None:
        """Close the browser, and kill it if it does not go."""
        if self.ended.called:
            return
        try:
            await self.send("Browser.close")
        except DevToolsError:
            pass
        if not self.ended.called:
            self._process.signalProcess("KILL")
        await self.ended
