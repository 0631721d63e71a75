"""Headless Chromium driven over the DevTools protocol, for UI tests that must click (a form behind a button).

``open_and_click(binary, url, ...)`` loads a page, waits for a button with the given text to render, clicks it,
waits for text that the click reveals, and saves a full-page screenshot. Only the page's own JavaScript runs; the
test reads back the page's visible text.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from brandtune import services

_CLICK = """(() => {{
  const want = {text};
  const found = [...document.querySelectorAll('button, [role=button]')]
    .find(el => el.innerText && el.innerText.trim() === want);
  if (!found) return false;
  found.click();
  return true;
}})()"""


def open_and_click(
    binary: str, url: str, button: str, reveals: str, shot: Path, profile: Path, timeout: float = 120
) -> str:
    """Open ``url``, click the button whose text is ``button``, wait until the page shows ``reveals``, save a
    screenshot to ``shot``; return the page's visible text then.

    Raises:
        AssertionError: the button or the revealed text did not appear within ``timeout`` (with the page text).
    """
    port = services.free_port()
    proc = subprocess.Popen(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
         "--window-size=1400,1800", f"--remote-debugging-port={port}", f"--user-data-dir={profile}",
         "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        ws_url = _page_socket(port, timeout=60)
        return asyncio.run(_drive(ws_url, url, button, reveals, shot, timeout))
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _page_socket(port: int, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                pages = [t for t in json.load(r) if t.get("type") == "page"]
            if pages:
                return pages[0]["webSocketDebuggerUrl"]
        except OSError:
            pass
        assert time.monotonic() < deadline, "chromium's DevTools endpoint did not come up"
        time.sleep(0.5)


async def _drive(ws_url: str, url: str, button: str, reveals: str, shot: Path, timeout: float) -> str:
    import websockets

    async with websockets.connect(ws_url, max_size=64 * 1024 * 1024) as ws:
        counter = 0

        async def send(method: str, **params: Any) -> dict[str, Any]:
            nonlocal counter
            counter += 1
            await ws.send(json.dumps({"id": counter, "method": method, "params": params}))
            while True:
                message = json.loads(await ws.recv())
                if message.get("id") == counter:
                    assert "error" not in message, message["error"]
                    return message.get("result", {})

        async def evaluate(expression: str) -> Any:
            result = await send("Runtime.evaluate", expression=expression, returnByValue=True)
            return result.get("result", {}).get("value")

        await send("Page.enable")
        await send("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        while not await evaluate(_CLICK.format(text=json.dumps(button))):
            assert time.monotonic() < deadline, f"no {button!r} button on {url}:\n{await evaluate(_TEXT)}"
            await asyncio.sleep(1)
        text = ""
        while reveals not in text:
            assert time.monotonic() < deadline, f"{reveals!r} never appeared after the click:\n{text[:3000]}"
            await asyncio.sleep(1)
            text = await evaluate(_TEXT) or ""
        await asyncio.sleep(1)  # let the form finish rendering
        image = await send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        shot.write_bytes(base64.b64decode(image["data"]))
        return text


_TEXT = "document.body ? document.body.innerText : ''"
