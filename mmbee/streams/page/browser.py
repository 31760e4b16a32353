"""Headless Chromium driven over the DevTools protocol: open a page, keep it open, read values
from it, collect its console errors, take screenshots. Used by `make demo` (a screenshot of the
live page next to `report.md`), the browser test and `bench/page.py`.

Chromium runs with a fresh profile, no sandbox (containers), no GPU and no background
networking of its own: the machines here have no network, and the page needs none. Nothing is
downloaded: the browser is the system's (Debian's `chromium`; `find_chromium`).

Example:
    >>> with HeadlessPage("http://127.0.0.1:6066/") as page:  # doctest: +SKIP
    ...     page.wait_for("document.body.dataset.loaded >= 1", timeout_s=30)
    ...     page.screenshot(Path("page.png"))
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["CHROMIUM_FLAGS", "HOW_TO_GET_CHROMIUM", "BrowserError", "HeadlessPage", "find_chromium"]

T = TypeVar("T")

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--mute-audio",
    "--hide-scrollbars",
    "--disable-dev-shm-usage",  # containers often give /dev/shm 64 MiB
)
"""Flags every Chromium started here gets (besides a fresh --user-data-dir)."""

HOW_TO_GET_CHROMIUM = (
    "no headless Chromium found (looked for chromium, chromium-browser, google-chrome): "
    "install Debian's with `apt-get install chromium` (CI: .ci/system-packages), or set "
    "MMBEE_CHROMIUM to its path"
)


class BrowserError(RuntimeError):
    """Chromium did not start, or the page did not do what was waited for."""


def find_chromium() -> str | None:
    """The Chromium executable to use: `$MMBEE_CHROMIUM`, else the first of chromium,
    chromium-browser, google-chrome on PATH; None when there is none."""
    explicit = os.environ.get("MMBEE_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class HeadlessPage:
    """One page in a headless Chromium, open until `close()` (a context manager).

    The DevTools session runs on its own event loop in a thread, so callers stay synchronous.
    Console errors, uncaught exceptions and failed loads the browser logs are collected in
    `errors` from the moment the page opens.

    Args:
        url: the page to open.
        width, height: the window (CSS pixels).
        chromium: the executable (default `find_chromium()`).
        timeout_s: how long starting Chromium and loading the page may take.
    """

    def __init__(
        self, url: str, width: int = 1440, height: int = 1000, chromium: str | None = None,
        timeout_s: float = 30.0,
    ) -> None:  # fmt: skip
        exe = chromium or find_chromium()
        if exe is None:
            raise BrowserError(HOW_TO_GET_CHROMIUM)
        self.url, self.width, self.height = url, width, height
        self.errors: list[str] = []
        self._profile = tempfile.mkdtemp(prefix="mmbee-chromium-")
        self._proc = subprocess.Popen(
            [exe, *CHROMIUM_FLAGS, f"--user-data-dir={self._profile}",
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
             f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._session: Any = None
        self._ws: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._loaded: asyncio.Event | None = None
        try:
            self._run(self._open(timeout_s), timeout_s + 5)
        except BaseException:
            self.close()
            raise

    # --- the synchronous surface ----------------------------------------------------------
    def evaluate(self, expression: str, timeout_s: float = 10.0) -> Any:
        """The value of a JavaScript expression in the page (awaited when it is a promise)."""
        return self._run(self._evaluate(expression), timeout_s)

    def wait_for(self, expression: str, timeout_s: float = 30.0, poll_s: float = 0.2) -> Any:
        """Evaluate `expression` until it is truthy; its value (BrowserError on timeout)."""
        deadline = time.monotonic() + timeout_s
        last: Any = None
        while time.monotonic() < deadline:
            last = self.evaluate(expression)
            if last:
                return last
            time.sleep(poll_s)
        raise BrowserError(f"{expression!r} still {last!r} after {timeout_s} s; errors {self.errors}")

    def screenshot(self, path: Path, full_page: bool = True) -> Path:
        """Save a PNG of the page (the whole page, not only the window, by default)."""
        data = self._run(self._screenshot(full_page), 30.0)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def close(self) -> None:
        """Close the session and the browser, delete the profile."""
        if self._loop.is_running():
            with contextlib.suppress(Exception):  # noqa: BLE001 (closing whatever is left)
                self._run(self._close(), 10.0)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> HeadlessPage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the DevTools session -------------------------------------------------------------
    def _run(self, coro: Coroutine[Any, Any, T], timeout_s: float) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    async def _devtools_port(self, timeout_s: float) -> int:
        marker = Path(self._profile) / "DevToolsActivePort"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrowserError(f"chromium exited with {self._proc.returncode} at start")
            with contextlib.suppress(OSError, ValueError, IndexError):
                return int(marker.read_text().split()[0])
            await asyncio.sleep(0.05)
        raise BrowserError(f"chromium gave no DevTools port in {timeout_s} s")

    async def _open(self, timeout_s: float) -> None:
        import aiohttp

        port = await self._devtools_port(timeout_s)
        self._session = aiohttp.ClientSession()
        deadline = time.monotonic() + timeout_s
        target = None
        while target is None:
            async with self._session.get(f"http://127.0.0.1:{port}/json/list") as resp:
                pages = [t for t in await resp.json() if t.get("type") == "page"]
            if pages:
                target = pages[0]
            elif time.monotonic() > deadline:
                raise BrowserError("chromium opened no page")
            else:
                await asyncio.sleep(0.05)
        self._ws = await self._session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0)
        self._loaded = asyncio.Event()
        self._reader = asyncio.create_task(self._read())
        for method in ("Runtime.enable", "Log.enable", "Page.enable"):
            await self._call(method)
        await self._call("Emulation.setDeviceMetricsOverride", width=self.width,
                         height=self.height, deviceScaleFactor=1, mobile=False)  # fmt: skip
        self._loaded.clear()
        nav = await self._call("Page.navigate", url=self.url)
        if nav.get("errorText"):
            raise BrowserError(f"{self.url}: {nav['errorText']}")
        await asyncio.wait_for(self._loaded.wait(), timeout_s)

    async def _call(self, method: str, **params: Any) -> dict[str, Any]:
        i = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[i] = fut
        await self._ws.send_str(json.dumps({"id": i, "method": method, "params": params}))
        got: dict[str, Any] = await fut
        if "error" in got:
            raise BrowserError(f"{method}: {got['error']}")
        return dict(got.get("result", {}))

    async def _read(self) -> None:
        async for msg in self._ws:
            data = json.loads(msg.data)
            if "id" in data:
                fut = self._pending.pop(data["id"], None)
                if fut is not None and not fut.done():
                    fut.set_result(data)
                continue
            self._event(data.get("method", ""), data.get("params", {}))

    def _event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Page.loadEventFired" and self._loaded is not None:
            self._loaded.set()
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = params.get("args", [])
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in args)
            self.errors.append(f"console.{params['type']}: {text}")
        elif method == "Runtime.exceptionThrown":
            d = params.get("exceptionDetails", {})
            text = d.get("exception", {}).get("description") or d.get("text", "")
            self.errors.append(f"uncaught: {text}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            e = params["entry"]
            self.errors.append(f"{e.get('source', 'log')}: {e.get('text', '')} {e.get('url', '')}".strip())

    async def _evaluate(self, expression: str) -> Any:
        got = await self._call("Runtime.evaluate", expression=expression, returnByValue=True,
                               awaitPromise=True)  # fmt: skip
        if "exceptionDetails" in got:
            raise BrowserError(f"{expression!r}: {got['exceptionDetails'].get('text')}")
        return got.get("result", {}).get("value")

    async def _screenshot(self, full_page: bool) -> bytes:
        import base64

        params: dict[str, Any] = {"format": "png"}
        if full_page:
            metrics = await self._call("Page.getLayoutMetrics")
            size = metrics.get("cssContentSize") or metrics.get("contentSize", {})
            height = max(self.height, int(size.get("height", self.height)))
            params["clip"] = {"x": 0, "y": 0, "width": self.width, "height": height, "scale": 1}
            params["captureBeyondViewport"] = True
        got = await self._call("Page.captureScreenshot", **params)
        return base64.b64decode(got["data"])

    async def _close(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(BrowserError, asyncio.TimeoutError):
                await asyncio.wait_for(self._call("Browser.close"), 5)
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
        if self._session is not None:
            await self._session.close()
