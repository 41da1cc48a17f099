"""Coarse deadlines: due callbacks run, cleared ones never, one failure stops no other."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from services.api.gateway.deadlines import Deadlines

TICK_S = 0.02


async def _until(check: Callable[[], object], what: str, timeout_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while not check():
        assert loop.time() < end, f"{what}: not within {timeout_s}s"
        await asyncio.sleep(TICK_S / 2)


async def test_a_callback_runs_once_its_time_has_come_and_not_before() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(tick_s=TICK_S)
    ran: list[float] = []
    at = loop.time() + 0.1
    deadlines.set("a", at, lambda: ran.append(loop.time()))
    await _until(lambda: ran, "the due callback")
    assert ran[0] >= at, f"ran {at - ran[0]:.3f}s early"
    assert len(deadlines) == 0
    await asyncio.sleep(3 * TICK_S)
    assert len(ran) == 1, ran


async def test_a_cleared_or_replaced_deadline_does_not_run() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(tick_s=TICK_S)
    ran: list[str] = []
    deadlines.set("cleared", loop.time() + 0.05, lambda: ran.append("cleared"))
    deadlines.set("replaced", loop.time() + 0.05, lambda: ran.append("first"))
    deadlines.set("replaced", loop.time() + 0.05, lambda: ran.append("second"))
    deadlines.clear("cleared")
    deadlines.clear("never set")
    await _until(lambda: ran, "the replacing callback")
    await asyncio.sleep(3 * TICK_S)
    assert ran == ["second"], ran


async def test_a_failing_callback_stops_no_other_and_ticking_goes_on() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(tick_s=TICK_S)
    ran: list[str] = []

    def broken() -> None:
        raise RuntimeError("broken callback")

    deadlines.set("broken", loop.time(), broken)
    deadlines.set("fine", loop.time(), lambda: ran.append("fine"))
    deadlines.set("later", loop.time() + 0.1, lambda: ran.append("later"))
    await _until(lambda: len(ran) == 2, "both healthy callbacks")
    assert ran == ["fine", "later"], ran
    # Empty: the ticking stopped; a new deadline starts it again.
    deadlines.set("again", loop.time(), lambda: ran.append("again"))
    await _until(lambda: len(ran) == 3, "a deadline set after the ticking stopped")
