"""F5 recovery: after a long outage the real collector sees the F5's members again within a
few fetch intervals (its backoff is capped by ``scheduler.pool_fetch_backoff_max``)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import nats
import pytest
from nats.aio.msg import Msg

from services.collector.main import serve as serve_collector
from services.doubles.f5_emulator import F5Emulator
from shared.http_server import start_app
from shared.messages import PoolSnapshot
from shared.subjects import Subjects
from tests.integration.system import InProcess, load, write_config

pytestmark = pytest.mark.integration

PASSWORD_ENV = "LLMSCHED_TEST_F5_PASSWORD"
FETCH_INTERVAL = 0.3
FAILURES = 8
"""Consecutive failed fetches: doubling from 1 s uncapped, the next wait would be 128 s."""
RECOVERY_S = 10.0
"""Generous for a busy machine, and well under the minute the old 60 s cap allowed."""


class Snapshots:
    """Every snapshot the collector publishes for one pool, in order."""

    def __init__(self) -> None:
        self.seen: list[PoolSnapshot] = []
        self._decoder = msgspec.json.Decoder(PoolSnapshot)
        self._arrived = asyncio.Event()

    async def on_msg(self, msg: Msg) -> None:
        self.seen.append(self._decoder.decode(msg.data))
        self._arrived.set()

    def failures_in_a_row(self) -> int:
        count = 0
        for snap in reversed(self.seen):
            if snap.error is None:
                break
            count += 1
        return count

    def describe(self) -> str:
        return "; ".join(f"{s.error or 'ok'} ({len(s.members)} members)" for s in self.seen[-12:])

    async def wait_for(self, what: str, timeout_s: float, check: Callable[[], bool]) -> float:
        """Seconds until ``check()`` holds, polled at each new snapshot."""
        started = time.monotonic()
        deadline = started + timeout_s
        while not check():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {what} within {timeout_s}s; last snapshots: "
                                     f"{self.describe()}")
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), left)
        return time.monotonic() - started


async def test_membership_is_current_soon_after_a_long_f5_outage(
        tmp_path: Path, nats_url: str, redis_url: str, prefix: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "s3cret")
    emulator = F5Emulator(users={"admin": "s3cret"})
    emulator.set_pool("llm-pool", ["127.0.0.1:9001", "127.0.0.1:9002"])
    f5 = await start_app(emulator)
    path = write_config(tmp_path / "config.yaml", prefix, [
        {"name": "llm-pool", "engine_type": "vllm", "metrics": {"timeout": 1}}],
        extra={"scheduler": {"pool_fetch_interval": FETCH_INTERVAL,
                             "metrics_fetch_interval": 5000},
               "f5": {"host": "127.0.0.1", "port": f5.port, "scheme": "http",
                      "username": "admin", "password_env": PASSWORD_ENV}})
    loaded = load(path)
    assert loaded.config.scheduler.effective_pool_fetch_backoff_max == 2 * FETCH_INTERVAL
    snapshots = Snapshots()
    nc = await nats.connect(nats_url)
    sub = await nc.subscribe(Subjects(prefix).pool_snapshot("Common", "llm-pool"),
                             cb=snapshots.on_msg)
    collector = InProcess(serve_collector, loaded, nats_url=nats_url, redis_url=redis_url)
    try:
        await snapshots.wait_for("first good snapshot", 30, lambda: any(
            s.error is None and len(s.members) == 2 for s in snapshots.seen))
        emulator.inject_fault("mcpd_lost", None, path_prefix="/mgmt/tm/")
        await snapshots.wait_for(f"{FAILURES} failed fetches in a row", 60,
                                 lambda: snapshots.failures_in_a_row() >= FAILURES)
        stale = snapshots.seen[-1]
        assert stale.error and "mcpd" in stale.error and len(stale.members) == 2, stale
        # The BIG-IP answers again, with a member brought back up.
        emulator.clear_faults()
        emulator.add_member("llm-pool", "127.0.0.1:9003")
        took = await snapshots.wait_for("fresh snapshot after recovery", RECOVERY_S, lambda: (
            snapshots.seen[-1].error is None and len(snapshots.seen[-1].members) == 3))
        fresh = snapshots.seen[-1]
        assert fresh.stale_since is None, fresh
        print(f"membership current {took:.2f}s after the F5 recovered "
              f"(backoff cap {2 * FETCH_INTERVAL}s)")
    finally:
        await collector.stop()
        await sub.unsubscribe()
        await nc.drain()
        await f5.stop()
