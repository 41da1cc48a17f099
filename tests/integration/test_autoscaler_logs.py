"""The autoscaler logs load at DEBUG; INFO only when a pool becomes available or unavailable."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import msgspec
import nats
import pytest

from services.autoscaler.main import serve as serve_autoscaler
from shared.messages import LoadEvent
from shared.subjects import Subjects
from tests.integration.system import InProcess, load, wait_until, write_config

pytestmark = pytest.mark.integration

LOGGER = "llmsched.autoscaler"


async def test_changing_load_is_debug_availability_changes_are_info(
        tmp_path: Path, nats_url: str, redis_url: str, prefix: str,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    path = write_config(tmp_path / "config.yaml", prefix, [
        {"name": "p1", "engine_type": "vllm", "source": "static", "members": ["127.0.0.1:1"]}])
    autoscaler = InProcess(serve_autoscaler, load(path), nats_url=nats_url, redis_url=redis_url)
    nc = await nats.connect(nats_url)
    subject = Subjects(prefix).load("p1")
    # What the scheduler publishes each tick: available 2, 2, 0, 0, 2 with the load moving.
    plan = [(2, 3.0, 1.0), (2, 5.0, 0.0), (2, 7.0, 2.0), (0, 0.0, 4.0), (0, 0.0, 6.0),
            (2, 1.0, 0.0), (2, 2.0, 1.0)]

    def records(level: int) -> list[str]:
        return [r.getMessage() for r in caplog.records
                if r.name == LOGGER and r.levelno == level]

    def load_lines() -> list[tuple[str, str]]:
        return [(r.levelname, r.getMessage()) for r in caplog.records
                if r.name == LOGGER and r.getMessage().startswith("Load p1:Common")]

    try:
        async def listening() -> bool:  # its start-up line comes after it subscribed
            return bool(records(logging.INFO))
        await wait_until(listening, 30, "the autoscaler to subscribe")
        for index, (available, running, waiting) in enumerate(plan):
            event = LoadEvent(name="p1", partition="Common", members=2, available=available,
                              waiting_queue=waiting, running_req=running, cache_usage_avg=0.1,
                              at=time.time())
            await nc.publish(subject, msgspec.json.encode(event))
            await nc.flush()

            async def seen(count: int = index + 1) -> bool:
                return len(load_lines()) >= count
            await wait_until(seen, 30, f"load event {index + 1} handled")
    finally:
        await nc.drain()
        await autoscaler.stop()
    assert [level for level, _ in load_lines()] == ["DEBUG"] * len(plan), caplog.text
    pool_lines = [m for m in records(logging.INFO) if "p1:Common" in m]
    assert pool_lines == ["Pool p1:Common available: 2 of 2 members available",
                          "Pool p1:Common unavailable: 0 of 2 members available",
                          "Pool p1:Common available: 2 of 2 members available"], caplog.text
    assert all(r.levelno < logging.WARNING for r in caplog.records if r.name == LOGGER), \
        caplog.text
