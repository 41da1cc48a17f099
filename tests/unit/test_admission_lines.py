"""The gateway's admission line: one try at a time, and a gap after a request got a member.

With several scheduler replicas, the line's next try may reach a replica that has not yet
heard of the selection just made; the gap lets that selection arrive first
(bench/routing: two replicas with a 2 ms event lag lost 0.7-1.5 goodput points without it).
"""

from __future__ import annotations

import asyncio
import contextlib

from services.api.gateway.admission import AdmissionLines, LineSettings, Ticket

POOL = ("p", "Common")


async def _first_leaves_with_a_member(
        lines: AdmissionLines) -> tuple[Ticket, contextlib.AbstractContextManager[Ticket]]:
    """Two requests wait; the first tries and leaves with a member. The second's place."""
    first_place = lines.enter(POOL)
    first = first_place.__enter__()
    second_place = lines.enter(POOL)
    second = second_place.__enter__()
    await asyncio.wait_for(lines.wait_turn(POOL, first), 1.0)
    assert not second.turn.is_set(), "two requests tried at once"
    first_place.__exit__(None, None, None)
    return second, second_place


async def test_next_try_waits_the_gap_after_a_member_was_given() -> None:
    lines = AdmissionLines(lambda _pool: LineSettings(next_try_s=0.05), poll_s=10.0)
    second, place = await _first_leaves_with_a_member(lines)
    try:
        assert not second.turn.is_set(), "the next try started at once, before the gap"
        await asyncio.wait_for(second.turn.wait(), 1.0)  # ... and the timer starts it
    finally:
        place.__exit__(None, None, None)


async def test_without_a_gap_the_next_try_starts_at_once() -> None:
    lines = AdmissionLines(lambda _pool: LineSettings(next_try_s=0.0), poll_s=10.0)
    second, place = await _first_leaves_with_a_member(lines)
    try:
        assert second.turn.is_set(), "with next_try_s 0 the next request should try at once"
    finally:
        place.__exit__(None, None, None)


async def test_a_line_emptied_during_the_gap_is_left_alone() -> None:
    lines = AdmissionLines(lambda _pool: LineSettings(next_try_s=0.02), poll_s=10.0)
    second, place = await _first_leaves_with_a_member(lines)
    place.__exit__(None, None, None)  # the second gives up before the timer fires
    assert not second.turn.is_set() and not lines.busy
    await asyncio.sleep(0.05)  # the timer fires on a line that is gone: nothing happens
    assert not lines.busy and lines.waiting(POOL) == 0
