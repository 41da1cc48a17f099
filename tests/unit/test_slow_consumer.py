"""Slow-consumer drops: counted per subscription, logged once at once, then sparingly."""

from __future__ import annotations

import asyncio
import logging

import pytest
from nats.aio.subscription import Subscription
from nats.errors import SlowConsumerError

from shared.slow_consumer import DroppedMessages

SNAPSHOTS = "p.pool.snapshot.>"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def drop(report: DroppedMessages, pattern: str = SNAPSHOTS, subject: str = "p.pool.snapshot.a",
         limit: int = 50, times: int = 1) -> None:
    sub = Subscription(None, 1, pattern, pending_msgs_limit=limit)
    for _ in range(times):
        report.dropped(SlowConsumerError(subject=subject, reply="", sid=1, sub=sub))


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "llmsched.bus" and r.levelno == logging.WARNING]


async def test_a_burst_is_one_line_at_once_and_every_drop_is_counted(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="llmsched.bus")
    counted: list[str] = []
    report = DroppedMessages("scheduler-r1", on_dropped=counted.append, clock=Clock())
    drop(report, times=10_000)
    report.close()
    seen = lines(caplog)
    assert len(seen) == 1, seen
    assert "scheduler-r1" in seen[0] and SNAPSHOTS in seen[0], seen
    assert "this process reads slower than they arrive; pending limit 50 messages" in seen[0], \
        seen
    assert report.totals() == {SNAPSHOTS: 10_000}
    assert counted == [SNAPSHOTS] * 10_000, counted[:3]  # the pattern, not each pool's subject


async def test_drops_after_the_interval_get_one_line_with_the_count_since_the_last(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="llmsched.bus")
    clock = Clock()
    report = DroppedMessages("api", clock=clock, every_s=10.0)
    drop(report)
    clock.now += 4
    drop(report, times=300)
    clock.now += 6  # 10 s after the first line: the next drop reports the 300 and itself
    drop(report)
    drop(report, times=5)
    report.close()
    seen = lines(caplog)
    assert len(seen) == 2, seen
    assert "301 more message(s) dropped on p.pool.snapshot.> in the last 10 s (302 in all)" \
        in seen[1], seen
    assert report.totals() == {SNAPSHOTS: 307}


async def test_the_end_of_a_burst_is_reported_without_a_later_drop(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="llmsched.bus")
    report = DroppedMessages("collector", clock=Clock(), every_s=0.05)
    drop(report, times=40)
    for _ in range(200):  # a wait for the timer, not a measure of it
        if len(lines(caplog)) >= 2:
            break
        await asyncio.sleep(0.05)
    report.close()
    seen = lines(caplog)
    assert len(seen) == 2, seen
    assert "39 more message(s) dropped" in seen[1] and "(40 in all)" in seen[1], seen


async def test_each_subscription_has_its_own_count_and_first_line(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="llmsched.bus")
    report = DroppedMessages("scheduler-r1", clock=Clock())
    drop(report, times=3)
    drop(report, pattern="p.selection", subject="p.selection", limit=7, times=2)
    report.flush()
    report.close()
    seen = lines(caplog)
    assert report.totals() == {SNAPSHOTS: 3, "p.selection": 2}
    assert len(seen) == 4, seen  # a first line each, then what the flush found
    assert any("p.selection" in line and "pending limit 7 messages" in line
               for line in seen), seen
    assert any("2 more message(s) dropped on p.pool.snapshot.>" in line for line in seen), seen
    assert any("1 more message(s) dropped on p.selection" in line for line in seen), seen
