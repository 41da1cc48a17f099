"""The BIG-IP's REST API fails while selects run: 401, 5xx, and calls that time out.

The real chain: F5 emulator → collector → NATS → scheduler → API, members with live
metrics (stand-in /metrics endpoints).

Allowed: while the F5 fails, membership is the last good one (a member added on the
BIG-IP meanwhile is not known yet); the collector retries with a backoff capped at
``scheduler.pool_fetch_backoff_max`` (2 × the fetch interval by default). Not allowed: a
select answered with anything but a member, or membership still old RECOVERY_S after the
F5 answers again. (The backoff's own bound after a long outage: test_f5_recovery.py;
each error at the client: test_f5_client.py.)
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec
import nats
import pytest
from nats.aio.msg import Msg

from services.api.main import serve as serve_api
from services.collector.main import serve as serve_collector
from services.doubles.f5_emulator import F5Emulator
from services.doubles.metrics_server import MetricsDouble
from services.scheduler.main import serve as serve_scheduler
from shared.http_server import RunningServer, start_app
from shared.messages import PoolSnapshot
from shared.subjects import Subjects
from tests.integration.select_traffic import SelectTraffic
from tests.integration.system import InProcess, load, wait_until, write_config

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

PASSWORD_ENV = "LLMSCHED_TEST_F5_PASSWORD"
FETCH_INTERVAL = 0.3
F5_TIMEOUT_S = 1.0
FAILED_FETCHES = 3
"""Failed fetches in a row the fault lasts for (with backoff: a few seconds)."""
RECOVERY_S = 15.0
"""Membership current again after the F5 recovers: backoff cap 0.6 s, generous for a busy box."""
STALE_AFTER_INTERVALS = 25
"""Metrics stay fresh for 5 s here (25 scrapes of 200 ms; default 3): all services share
this test's event loop, and a stall of a busy box's past 0.6 s would make every member's
metrics stale, so selects would answer ``none`` by design (test_scraper.py covers that).
This test is about the F5's faults, not the metrics'."""


@dataclass
class F5Rig:
    emulator: F5Emulator
    keys: list[str]
    spare: str
    """A member added on the BIG-IP during the fault."""
    api: str
    failed: Callable[[], int]
    current: Callable[[], list[str]]
    errors: Callable[[], list[str]]


@pytest.fixture
async def rig(tmp_path: Path, nats_url: str, redis_url: str, prefix: str,
              monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[F5Rig]:
    monkeypatch.setenv(PASSWORD_ENV, "s3cret")
    servers: list[RunningServer] = [
        await start_app(MetricsDouble(engine="vllm", model="m", waiting=0, running=1,
                                      kv_usage=0.2)) for _ in range(3)]
    keys = [f"127.0.0.1:{s.port}" for s in servers]
    emulator = F5Emulator(users={"admin": "s3cret"})
    emulator.set_pool("llm-pool", keys[:2])
    f5 = await start_app(emulator)
    path = write_config(tmp_path / "config.yaml", prefix, [
        {"name": "llm-pool", "engine_type": "vllm", "metrics": {"timeout": 1}}],
        log_level="INFO", extra={
            "scheduler": {"pool_fetch_interval": FETCH_INTERVAL, "metrics_fetch_interval": 200,
                          "stale_after_intervals": STALE_AFTER_INTERVALS},
            "f5": {"host": "127.0.0.1", "port": f5.port, "scheme": "http",
                   "username": "admin", "password_env": PASSWORD_ENV,
                   "timeout": F5_TIMEOUT_S}})
    loaded = load(path)
    port = loaded.config.global_.api_port
    snapshots: list[PoolSnapshot] = []
    decode = msgspec.json.Decoder(PoolSnapshot).decode

    async def on_snapshot(msg: Msg) -> None:
        snapshots.append(decode(msg.data))

    nc = await nats.connect(nats_url)
    await nc.subscribe(Subjects(prefix).pool_snapshot("Common", "llm-pool"), cb=on_snapshot)
    kw = {"nats_url": nats_url, "redis_url": redis_url}
    services = [InProcess(serve_scheduler, loaded, **kw), InProcess(serve_collector, loaded, **kw),
                InProcess(serve_api, loaded, port=port, **kw)]

    def failed() -> int:
        count = 0
        for snap in reversed(snapshots):
            if snap.error is None:
                break
            count += 1
        return count

    def current() -> list[str]:
        good = [s for s in snapshots if s.error is None]
        return sorted(m.key for m in good[-1].members) if good else []

    def errors() -> list[str]:
        return sorted({s.error for s in snapshots if s.error})

    try:
        yield F5Rig(emulator=emulator, keys=keys[:2], spare=keys[2],
                    api=f"http://127.0.0.1:{port}", failed=failed, current=current,
                    errors=errors)
    finally:
        emulator.clear_faults()
        for svc in reversed(services):
            await svc.stop()
        with contextlib.suppress(Exception):
            await nc.drain()
        await f5.stop()
        for server in servers:
            await server.stop()


def _break(rig: F5Rig, fault: str) -> None:
    if fault == "401":  # the password was changed on the BIG-IP, every token revoked
        rig.emulator.users["admin"] = "rotated"
        rig.emulator.expire_tokens()
    elif fault == "5xx":
        rig.emulator.inject_fault("mcpd_lost", None, path_prefix="/mgmt/tm/")
    else:  # calls hang past the client's timeout
        rig.emulator.inject_fault("hang", None, path_prefix="/mgmt/tm/")


def _repair(rig: F5Rig, fault: str) -> None:
    if fault == "401":
        rig.emulator.users["admin"] = "s3cret"
    else:
        rig.emulator.clear_faults()


@pytest.mark.parametrize("fault", ["401", "5xx", "timeout"])
async def test_an_f5_fault_keeps_the_last_members_and_costs_no_select(
        rig: F5Rig, fault: str) -> None:
    body = {"pool_name": "llm-pool", "members": [*rig.keys, rig.spare]}
    warm = SelectTraffic(rig.api, body, concurrency=1, answers=frozenset(rig.keys)).start()
    try:
        await wait_until(_at_least(warm, 20), 30, "selects answered from F5 membership")
    finally:
        await warm.stop()
    selects = SelectTraffic(rig.api, body, concurrency=4,
                            answers=frozenset([*rig.keys, rig.spare])).start()
    try:
        broken_at = time.monotonic()
        _break(rig, fault)
        rig.emulator.add_member("llm-pool", rig.spare)
        await wait_until(_holds(lambda: rig.failed() >= FAILED_FETCHES), 60,
                         f"{FAILED_FETCHES} failed F5 fetches in a row")
        during = list(selects.results)
        _repair(rig, fault)
        started = time.monotonic()
        await wait_until(_holds(lambda: rig.spare in rig.current()), RECOVERY_S,
                         "membership with the member added during the fault")
        took = time.monotonic() - started

        async def spare_selected() -> bool:
            return any(text == rig.spare for _, text in selects.results[-200:])
        await wait_until(spare_selected, RECOVERY_S, "the new member selected")
    finally:
        await selects.stop()
    seen = (f"{fault}: membership current {took:.1f}s after the repair; selects during the "
            f"fault {len(during)}, all: {selects.summary().most_common(6)}; F5 errors seen: "
            f"{rig.errors()}; failures at (s after the fault began; repaired at "
            f"{started - broken_at:.1f}): "
            f"{[round(t - broken_at, 2) for t in selects.failed_at[:20]]}")
    print(seen)
    assert len(during) >= 50, seen
    assert not [r for r in during if r[1] == rig.spare], f"spare known during the fault; {seen}"
    assert not selects.failures, f"{len(selects.failures)} failed selects; {seen}"


def _at_least(traffic: SelectTraffic, n: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return traffic.ok >= n
    return check


def _holds(condition: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return condition()
    return check
