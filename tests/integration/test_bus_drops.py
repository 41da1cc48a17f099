"""A subscription past its pending limits on a real NATS: nats-py drops messages, and
``connect_nats`` counts every one and logs them in a line, not a line each."""

from __future__ import annotations

import asyncio
import logging

import nats
import pytest
from nats.aio.msg import Msg

from shared.bus import connect_nats
from tests.integration.system import wait_until

pytestmark = pytest.mark.integration

SENT = 200
LIMIT = 5


async def test_every_message_is_handled_or_counted_as_dropped(
        nats_url: str, prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="llmsched.bus")
    dropped: list[str] = []
    handled: list[Msg] = []
    release = asyncio.Event()
    nc = await connect_nats("slow", nats_url, on_dropped=dropped.append)
    publisher = await nats.connect(nats_url)
    pattern = f"{prefix}.events.>"

    async def slow(msg: Msg) -> None:  # stuck on its first message until released
        handled.append(msg)
        await release.wait()

    try:
        sub = await nc.subscribe(pattern, cb=slow, pending_msgs_limit=LIMIT)
        await nc.flush()
        for i in range(SENT):
            await publisher.publish(f"{prefix}.events.{i % 3}", b"x")
        await publisher.flush()

        async def all_arrived() -> bool:
            return len(handled) + sub.pending_msgs + len(dropped) == SENT
        await wait_until(all_arrived, 30, f"{SENT} messages handled, held or dropped")
        release.set()

        async def settled() -> bool:
            return len(handled) + len(dropped) == SENT
        await wait_until(settled, 30, "the held messages handled")
    finally:
        release.set()
        await publisher.drain()
        await nc.drain()
    lines = [r.getMessage() for r in caplog.records if r.name == "llmsched.bus"]
    seen = f"{len(handled)} handled, {len(dropped)} dropped; log: {lines}"
    print(seen)
    assert len(dropped) >= SENT - 2 * LIMIT, seen  # the callback held on to the first one
    assert set(dropped) == {pattern}, seen  # the subscription's subject, not each message's
    slow_lines = [line for line in lines if "slow consumer" in line]
    assert 1 <= len(slow_lines) <= 2, seen  # the first at once; one more per 10 s at most
    assert f"pending limit {LIMIT} messages" in slow_lines[0], seen
    assert not [line for line in lines if line.startswith("NATS error")], seen
