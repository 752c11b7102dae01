"""The dashboard in a real headless Chromium, driven over the DevTools protocol (a websocket,
aiohttp's client): the page loads with no console error, lists the replicas, its numbers move
while load runs and end equal to the gateway's /metrics, and it fits a phone-wide screen.

Needs ``chromium`` on PATH (Debian's package; ``make test`` installs it when run as root). A
missing browser FAILS the test with that instruction: it is never skipped.
``KVGATE_UPDATE_SCREENSHOT=1`` also writes the screenshot taken under load to
docs/img/dashboard.png (README.md shows it).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from support.procs import Proc, free_port, kvgate_cmd
from support.sim import start_sim

REPO = Path(__file__).resolve().parents[2]
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
MODEL = "sim-model"


def find_browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(
        "no Chromium on PATH (looked for chromium, chromium-browser, google-chrome): "
        "install it with `apt-get install -y chromium` (make test does this when run as root)"
    )


class DevTools:
    """One page's DevTools session: commands by id, events gathered as they come."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            future = self.pending.pop(data.get("id", -1), None)
            if future is not None:
                future.set_result(data)
            else:
                self.events.append(data)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        ident = next(self.ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[ident] = future
        await self.ws.send_json({"id": ident, "method": method, "params": params})
        reply = await asyncio.wait_for(future, 30)
        assert "error" not in reply, f"{method}: {reply['error']}"
        return dict(reply.get("result", {}))

    async def eval(self, expression: str) -> Any:
        reply = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in reply, reply
        return reply["result"].get("value")

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and failed loads the page reported."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(json.dumps(params["exceptionDetails"])[:300])
            elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
                found.append(json.dumps(params.get("args"))[:300])
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(params["entry"].get("text", "")[:300])
        return found


@contextlib.asynccontextmanager
async def browser_page(tmp: Path) -> AsyncIterator[DevTools]:
    """A headless Chromium with one blank page, its DevTools session open."""
    log = (tmp / "chromium.log").open("w+b")
    proc = subprocess.Popen(
        [
            find_browser(),
            "--headless=new",
            "--no-sandbox",  # tests run as root in CI containers
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            "--remote-debugging-port=0",
            f"--user-data-dir={tmp / 'profile'}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        match = None
        while match is None:
            log.seek(0)
            match = re.search(rb"DevTools listening on (ws://\S+)", log.read())
            assert proc.poll() is None, f"chromium exited: {(tmp / 'chromium.log').read_text()}"
            assert loop.time() < deadline, "chromium never printed its DevTools address"
            await asyncio.sleep(0.05)
        port = int(match.group(1).decode().split(":")[2].split("/")[0])
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as resp:
                pages = [t for t in await resp.json() if t["type"] == "page"]
            async with session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                tools = DevTools(ws)
                try:
                    yield tools
                finally:
                    tools.reader.cancel()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    procs: list[Proc] = []

    def spawn(args: list[str], name: str = "proc", env: dict[str, str] | None = None) -> Proc:
        proc = Proc(args, tmp_path / f"{name}-{len(procs)}.log", env=env)
        procs.append(proc)
        return proc

    try:
        sims = [start_sim(spawn, "--speed", "20", model=MODEL, name=f"sim{i}") for i in range(2)]
        port = free_port()
        args = ["serve", "--port", str(port), "--seed", "3", "--no-request-log"]
        for sim in sims:
            args += ["--endpoint", sim.url]
        gw = spawn(kvgate_cmd(*args), name="gw")
        url = f"http://127.0.0.1:{port}"
        gw.wait_http(url + "/ready", timeout_s=30)
        yield url, [s.url.removeprefix("http://") for s in sims]
    finally:
        for proc in reversed(procs):
            proc.stop()


async def until(check: Any, what: str, timeout_s: float = 20.0) -> Any:
    """Poll the async ``check`` until it returns something truthy (deadline: fail naming it)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        value = await check()
        if value:
            return value
        assert loop.time() < deadline, f"the page never showed {what}"
        await asyncio.sleep(0.1)


async def load(url: str, stop: asyncio.Event) -> int:
    """Chat requests four at a time until ``stop``: a few shared prefixes, so hits happen."""
    sent = 0
    async with aiohttp.ClientSession() as session:

        async def one(i: int) -> None:
            prefix = f"Group {i % 3}: " + "shared context about the fox and the dog. " * 20
            body = {
                "model": MODEL,
                "max_tokens": 8,
                "stream": True,
                "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": prefix + f"question {i}"}],
            }
            async with session.post(url + "/v1/chat/completions", json=body) as resp:
                assert resp.status == 200
                await resp.read()

        while not stop.is_set():
            await asyncio.gather(*(one(sent + k) for k in range(4)))
            sent += 4
    return sent


async def test_dashboard_in_chromium(cluster: tuple[str, list[str]], tmp_path: Path) -> None:
    url, replicas = cluster
    async with browser_page(tmp_path) as page:
        for domain in ("Runtime", "Log", "Page"):
            await page.send(f"{domain}.enable")
        await page.send(
            "Emulation.setDeviceMetricsOverride",
            width=1280,
            height=1500,
            deviceScaleFactor=1,
            mobile=False,
        )
        await page.send("Page.navigate", url=url + "/dashboard")
        rows_js = (
            "[...document.querySelectorAll('#endpoints tbody tr')].map(r => r.dataset.endpoint)"
        )
        listed = await until(lambda: page.eval(rows_js), "the replicas")
        assert sorted(listed) == sorted(replicas)
        total_js = "Number(document.getElementById('total-requests').textContent)"
        assert await page.eval(total_js) == 0

        stop = asyncio.Event()
        driver = asyncio.ensure_future(load(url, stop))
        try:
            await until(lambda: page.eval(f"{total_js} >= 12"), "requests counted under load")
            picks_js = (
                "[...document.querySelectorAll('#endpoints .picks-total')]"
                ".reduce((n, td) => n + Number(td.textContent), 0)"
            )
            first = await page.eval(picks_js)
            await until(lambda: page.eval(f"{picks_js} > {first}"), "the picks growing")
            await until(
                lambda: page.eval("document.querySelectorAll('#requests details').length >= 8"),
                "the last requests",
            )
            await until(
                lambda: page.eval("document.querySelectorAll('#chart-rps polyline').length > 0"),
                "a chart",
            )
            if os.environ.get("KVGATE_UPDATE_SCREENSHOT") == "1":  # charts worth a look
                await until(
                    lambda: page.eval(
                        "document.querySelector('#chart-rps polyline').points.length >= 10"
                    ),
                    "10 s of charts",
                    timeout_s=30,
                )
            # show why: the newest request's scores per candidate, opened
            await page.eval("document.querySelector('#requests details').open = true")
            shot = await page.send("Page.captureScreenshot", format="png")
        finally:
            stop.set()
            sent = await driver
        png = base64.b64decode(shot["data"])
        assert png.startswith(b"\x89PNG")
        (tmp_path / "dashboard.png").write_bytes(png)
        if os.environ.get("KVGATE_UPDATE_SCREENSHOT") == "1":
            target = REPO / "docs" / "img" / "dashboard.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(png)

        # once the load is over, the page's numbers equal the gateway's /metrics
        async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as resp:
            text = await resp.text()
        served = sum(
            float(v) for v in re.findall(r"^kvgate_requests_total\{[^}]*\} (\S+)$", text, re.M)
        )
        assert served == sent
        await until(lambda: page.eval(f"{total_js} === {sent}"), f"{sent} requests in total")
        picks = {
            m[0]: float(m[1])
            for m in re.findall(
                r'^kvgate_endpoint_picks_total\{endpoint="([^"]+)"\} (\S+)$', text, re.M
            )
        }
        shown = await page.eval(
            "Object.fromEntries([...document.querySelectorAll('#endpoints tbody tr')]"
            ".map(r => [r.dataset.endpoint, Number(r.querySelector('.picks-total').textContent)]))"
        )
        assert shown == {name: picks.get(name, 0.0) for name in replicas}

        # the scores table of a request: every candidate, the winner marked
        # (the newest request's; one opened before the screenshot may be further down now)
        cells = await page.eval(
            "(() => { const d = document.querySelector('#requests details'); d.open = true;"
            " return d.querySelectorAll('table.scores tbody tr').length; })()"
        )
        assert cells == len(replicas)

        # a phone-wide screen: nothing wider than the viewport but the tables' own scrollers
        await page.send(
            "Emulation.setDeviceMetricsOverride",
            width=390,
            height=844,
            deviceScaleFactor=2,
            mobile=True,
        )
        wide = (
            "[...document.querySelectorAll('body *')].filter(e => !e.closest('.scroll, #requests')"
            " && e.getBoundingClientRect().right > 391).map(e => e.tagName + '.' + e.className)"
        )
        try:
            await until(
                lambda: page.eval("document.documentElement.scrollWidth <= 391"),
                "a page fitting 390 px",
                timeout_s=5,
            )
        except AssertionError:
            pytest.fail(f"wider than 390 px: {await page.eval(wide)}")
        assert page.errors() == []
