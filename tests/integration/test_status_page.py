"""The live status page in a real headless Chromium (Debian's, driven by Playwright).

It loads from the API alone (no CDN), shows the pool of simulated engines and the alias's
instances, and an engine put to sleep shows up as asleep, then awake, without a reload.
Chromium is installed by scripts/test.sh; when it is missing these tests fail, never skip.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.enginesim.config import EngineConfig
from services.enginesim.launcher import RunningEngine
from tests.integration.conftest import StackFactory
from tests.integration.fleet import FAKE, MakeFleet
from tests.integration.system import engines_running, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

CHROMIUM = Path(os.environ.get("LLMSCHED_CHROMIUM", "/usr/bin/chromium"))
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ENGINE = EngineConfig(model="/models/tiny", served_model_name=("tiny",), max_model_len=512,
                      max_num_seqs=8, num_gpu_blocks=1024, speed=20.0, seed=7)
SCREENSHOT_ENV = "LLMSCHED_STATUS_SCREENSHOT"
"""Set to a path to save a PNG of the page (how docs/status-page.png is made)."""


@pytest.fixture
def chromium() -> Path:
    """Debian's Chromium; the test fails (never skips) when it is missing."""
    if not CHROMIUM.is_file():
        pytest.fail(f"Chromium is not installed at {CHROMIUM}: scripts/test.sh installs "
                    "Debian's package (apt-get install -y chromium); the status page tests "
                    "need it", pytrace=False)
    return CHROMIUM


@pytest.fixture
async def browser(tmp_path: Path, chromium: Path) -> AsyncIterator[Any]:
    """A fresh Chromium profile driven by Playwright (which never downloads a browser here)."""
    try:
        from playwright.async_api import async_playwright
    except ImportError as err:
        pytest.fail(f"Playwright's Python package is missing ({err}): pip install -e .[test]",
                    pytrace=False)
    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=str(chromium), headless=True,
            args=ARGS, viewport={"width": 1400, "height": 1000})
        try:
            yield context
        finally:
            await context.close()


async def wait_text(page: Any, selector: str, want: str, timeout_s: float, what: str,
                    section: str = "main") -> str:
    """Poll the text of ``selector`` until it equals ``want``; fail with what the page shows."""
    deadline = time.monotonic() + timeout_s
    seen = "<absent>"
    while time.monotonic() < deadline:
        node = await page.query_selector(selector)
        if node is not None:
            seen = (await node.inner_text()).strip()
            if seen == want:
                return seen
        await page.wait_for_timeout(200)
    shown = await page.inner_text(section)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}: {selector} shows "
                         f"{seen!r}, want {want!r}; the page shows:\n{shown[:3000]}")


@pytest.fixture
async def engines() -> AsyncIterator[list[RunningEngine]]:
    async with engines_running(ENGINE, 2) as running:
        yield running


async def test_the_page_shows_pools_and_aliases_and_follows_a_sleeping_engine_live(
        make_fleet: MakeFleet, engines: list[RunningEngine], browser: Any) -> None:
    keys = [e.url.split("//", 1)[1] for e in engines]
    fleet = await make_fleet(pools=[{"name": "demo-pool", "engine_type": "vllm",
                                     "source": "static", "members": keys,
                                     "metrics": {"timeout": 1}}],
                             # Stale after 2 s rather than 3 x 200 ms: the services share
                             # this test's loop with the browser's driver, and one late
                             # scrape round left both members without fresh metrics for a
                             # moment (a select answered none in a full-suite run).
                             stale_after_intervals=10)
    await fleet.register({**FAKE, "autoscaling": {"min_replicas": 1, "max_replicas": 1}})
    page = await browser.new_page()
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    r = await page.goto(f"{fleet.api}/status")
    assert r is not None and r.status == 200, r
    pool = 'article[data-pool="demo-pool:Common"]'
    sleeper = f'{pool} tr[data-member="{keys[0]}"]'
    for key in keys:
        await wait_text(page, f'{pool} tr[data-member="{key}"] td[data-col="state"]', "ok", 30,
                        f"{key} shown ok")
    alias = 'article[data-alias="fake-model"] tr[data-instance="fake-model"] td[data-col="state"]'
    await wait_text(page, alias, "ACTIVE", 60, "the alias's instance ACTIVE")
    await page.evaluate("window.__sameDocument = true")
    async with httpx.AsyncClient(timeout=10) as http:
        for _ in range(20):
            r2 = await http.post(f"{fleet.api}/scheduler/select", json={
                "pool_name": "demo-pool", "partition": "Common", "members": keys})
            assert r2.status_code == 200 and r2.text in keys, r2.text
        shares = [f'{pool} tr[data-member="{key}"] td[data-col="share"]' for key in keys]

        async def shares_shown() -> bool:
            texts = [await page.inner_text(s) for s in shares]
            return sum(int(t.rsplit("(", 1)[1].rstrip(")")) for t in texts) >= 20
        await wait_until(shares_shown, 60, "20 selections shown in the share column")
        r2 = await http.post(f"{engines[0].url}/sleep", params={"level": "1"})
        assert r2.status_code == 200, r2.text
        await wait_text(page, f'{sleeper} td[data-col="state"]', "asleep", 60,
                        "the sleeping engine shown asleep")
        why = await page.inner_text(f'{sleeper} td[data-col="why"]')
        assert "vllm:engine_sleep_state" in why, why
        if os.environ.get(SCREENSHOT_ENV):
            await page.screenshot(path=os.environ[SCREENSHOT_ENV], full_page=True)
        r2 = await http.post(f"{engines[0].url}/wake_up")
        assert r2.status_code == 200, r2.text
    await wait_text(page, f'{sleeper} td[data-col="state"]', "ok", 60, "the engine back ok")
    assert await page.evaluate("window.__sameDocument === true"), "the page was reloaded"
    polls = int(await page.evaluate("document.body.dataset.polls || '0'"))
    assert polls >= 3, f"the page polled {polls} times"
    foreign = [url for url in requests if not url.startswith(fleet.api)]
    assert not foreign, f"the page loaded from elsewhere than the API: {foreign}"
    assert not errors, f"the page logged errors: {errors}"


async def test_the_admin_section_asks_for_the_key_and_keeps_it_for_the_tab(
        make_stack: StackFactory, browser: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMSCHED_ADMIN_KEY", "s3cret-key")
    stack = await make_stack([{"name": "p1", "engine_type": "vllm", "source": "static",
                               "members": ["10.0.0.1:8001"]}])
    page = await browser.new_page()
    await page.goto(f"{stack.api_url}/status")
    asks = '#aliases-body [data-state="needs-key"]'
    await page.wait_for_selector(asks, timeout=30_000)
    await wait_text(page, 'article[data-pool="p1:Common"] h3', "p1:Common", 30,
                    "the pool shown without a key")
    await page.fill("#admin-key", "s3cret-key")
    await page.click("#key-use")
    await wait_text(page, "#aliases-body > p:nth-of-type(2)", "No model alias registered.",
                    30, "the admin section with the key")
    assert await page.evaluate("sessionStorage.getItem('llmsched.adminKey')") == "s3cret-key"
    assert await page.input_value("#admin-key") == "", "the typed key stays on screen"
    await page.reload()
    await wait_text(page, "#aliases-body > p:nth-of-type(2)", "No model alias registered.",
                    30, "the key kept across a reload of the tab")
    await page.click("#key-forget")
    await page.wait_for_selector(asks, timeout=30_000)
