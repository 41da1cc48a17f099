"""The gateway's disconnect watcher: no task for a short request, a gone client still seen."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

from services.api.gateway.deadlines import Deadlines
from services.api.gateway.proxy import WATCH_AFTER_S, _DisconnectWatch


def _exchange(answered: bool = False) -> Any:
    return SimpleNamespace(answered=answered)


async def _never() -> dict[str, Any]:
    await asyncio.Event().wait()
    return {"type": "http.request"}


async def _gone() -> dict[str, Any]:
    return {"type": "http.disconnect"}


async def test_a_request_shorter_than_the_watch_delay_starts_no_task() -> None:
    this = asyncio.current_task()
    assert this is not None
    before = asyncio.all_tasks()
    watch = _DisconnectWatch(_never, this, _exchange(), Deadlines())
    await asyncio.sleep(0.05)
    started = asyncio.all_tasks() - before
    watch.stop()
    assert not started, f"tasks started for a short request: {started}"
    assert not watch.gone


async def test_a_client_gone_before_the_watch_arms_is_seen_when_it_arms() -> None:
    async def request(watch_box: list[_DisconnectWatch]) -> None:
        this = asyncio.current_task()
        assert this is not None
        watch_box.append(_DisconnectWatch(_gone, this, _exchange(), Deadlines()))
        try:
            await asyncio.sleep(30)
        finally:
            watch_box[0].stop()

    box: list[_DisconnectWatch] = []
    started = time.monotonic()
    task = asyncio.create_task(request(box))
    await asyncio.wait({task}, timeout=WATCH_AFTER_S + 10)
    waited = time.monotonic() - started
    assert task.cancelled(), f"the request was not cancelled (done={task.done()})"
    assert box[0].gone, "the watch did not say the client left"
    assert waited >= WATCH_AFTER_S * 0.9, f"cancelled after {waited:.3f}s, before the delay"


async def test_an_answered_request_is_not_cancelled_by_the_closing_disconnect() -> None:
    this = asyncio.current_task()
    assert this is not None
    watch = _DisconnectWatch(_gone, this, _exchange(answered=True), Deadlines())
    await asyncio.sleep(WATCH_AFTER_S + 0.3)  # armed: sees the end-of-response disconnect
    watch.stop()
    assert not watch.gone
