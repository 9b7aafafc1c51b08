"""Headless Chromium (Debian's ``chromium``) driven over the DevTools protocol with aiohttp.

:func:`launch_chromium` starts the browser on loopback with a throw-away profile and no
network services of its own, reads the DevTools port from ``DevToolsActivePort`` and connects
to the browser's websocket. :class:`Page` is one tab attached in flat mode: navigate, evaluate
JavaScript, type text and click the way a user does (``Input.insertText`` and real mouse
events at an element's centre), wait for page loads, take screenshots.

A missing ``/usr/bin/chromium`` makes :func:`launch_chromium` raise, so browser tests fail
(never skip). The browser is stopped by PID: ``Browser.close`` first, then SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM = "/usr/bin/chromium"
START_TIMEOUT_SECONDS = 30.0
COMMAND_TIMEOUT_SECONDS = 30.0
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--window-size=1280,1000",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)


class BrowserError(RuntimeError):
    """Chromium did not start, or a DevTools command failed."""


class DevTools:
    """One websocket to the browser; commands by id, events to whoever waits for them."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self._socket = socket
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._waiters: list[tuple[str, str | None, asyncio.Future[dict[str, Any]]]] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self._socket:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(message.data)
            if "id" in data:
                future = self._pending.pop(data["id"], None)
                if future is not None and not future.done():
                    if "error" in data:
                        future.set_exception(BrowserError(json.dumps(data["error"])))
                    else:
                        future.set_result(data.get("result", {}))
                continue
            for waiter in list(self._waiters):
                method, session_id, future = waiter
                if data.get("method") == method and session_id in (None, data.get("sessionId")):
                    self._waiters.remove(waiter)
                    if not future.done():
                        future.set_result(data.get("params", {}))
        for future in self._pending.values():
            if not future.done():
                future.set_exception(BrowserError("the DevTools connection closed"))

    async def send(
        self, method: str, params: dict[str, Any] | None = None, *, session_id: str | None = None
    ) -> dict[str, Any]:
        command_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[command_id] = future
        message: dict[str, Any] = {"id": command_id, "method": method, "params": params or {}}
        if session_id is not None:
            message["sessionId"] = session_id
        await self._socket.send_str(json.dumps(message))
        async with asyncio.timeout(COMMAND_TIMEOUT_SECONDS):
            return await future

    def expect(
        self, method: str, *, session_id: str | None = None
    ) -> asyncio.Future[dict[str, Any]]:
        """A future for the next ``method`` event; create it *before* causing the event."""
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.append((method, session_id, future))
        return future

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self._socket.close()


class Page:
    """One tab, attached with ``flatten: true`` so commands carry its session id."""

    def __init__(self, devtools: DevTools, session_id: str) -> None:
        self.devtools = devtools
        self.session_id = session_id

    async def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self.devtools.send(method, params, session_id=self.session_id)

    def expect(self, method: str) -> asyncio.Future[dict[str, Any]]:
        return self.devtools.expect(method, session_id=self.session_id)

    async def goto(self, url: str) -> None:
        loaded = self.expect("Page.loadEventFired")
        await self.send("Page.navigate", {"url": url})
        async with asyncio.timeout(COMMAND_TIMEOUT_SECONDS):
            await loaded

    async def evaluate(self, expression: str) -> Any:
        result = await self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression!r} failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def url(self) -> str:
        value: str = await self.evaluate("location.href")
        return value

    async def click(self, selector: str) -> None:
        """A real left click at the centre of the element (scrolled into view first)."""
        box = await self.evaluate(
            f"""(() => {{
                const element = document.querySelector({json.dumps(selector)});
                element.scrollIntoView({{block: "center"}});
                const r = element.getBoundingClientRect();
                return {{x: r.left + r.width / 2, y: r.top + r.height / 2}};
            }})()"""
        )
        for event in ("mouseMoved", "mousePressed", "mouseReleased"):
            await self.send(
                "Input.dispatchMouseEvent",
                {"type": event, "x": box["x"], "y": box["y"], "button": "left", "clickCount": 1},
            )

    async def type_into(self, selector: str, text: str) -> None:
        """Focus the field by clicking it and type ``text`` as keyboard input."""
        await self.click(selector)
        await self.send("Input.insertText", {"text": text})

    async def screenshot(self, path: Path) -> Path:
        shot = await self.send("Page.captureScreenshot", {"format": "png"})
        await asyncio.to_thread(_write, path, base64.b64decode(shot["data"]))
        return path


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _start(user_data_dir: Path, log_path: Path) -> subprocess.Popen[bytes]:
    if shutil.which(CHROMIUM) is None:
        raise BrowserError(f"{CHROMIUM} is missing: apt-get install chromium")
    with log_path.open("wb") as log_file:
        return subprocess.Popen(
            [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={user_data_dir}", "about:blank"],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _devtools_path(user_data_dir: Path) -> tuple[int, str] | None:
    active = user_data_dir / "DevToolsActivePort"
    try:
        port, path = active.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return int(port), path


@contextlib.asynccontextmanager
async def launch_chromium(work_dir: Path) -> AsyncIterator[Page]:
    """Headless Chromium with one fresh tab; everything is stopped on exit."""
    user_data_dir = work_dir / "chromium-profile"
    user_data_dir.mkdir(parents=True)
    log_path = work_dir / "chromium.log"
    process = _start(user_data_dir, log_path)
    try:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while (found := _devtools_path(user_data_dir)) is None:
            if process.poll() is not None or time.monotonic() > deadline:
                raise BrowserError(f"chromium did not start: {log_path.read_text()[-3000:]}")
            await asyncio.sleep(0.05)
        port, path = found
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(f"ws://127.0.0.1:{port}{path}", max_msg_size=0) as socket,
        ):
            devtools = DevTools(socket)
            try:
                target = await devtools.send("Target.createTarget", {"url": "about:blank"})
                attached = await devtools.send(
                    "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
                )
                page = Page(devtools, attached["sessionId"])
                await page.send("Page.enable")
                await page.send("Runtime.enable")
                yield page
            finally:
                with contextlib.suppress(BrowserError, TimeoutError, ConnectionError):
                    await devtools.send("Browser.close")
                await devtools.close()
    finally:
        await asyncio.to_thread(_stop, process)
