"""Redis hangs (the server stops answering; connections stay open) while traffic runs.

A hung Redis is the slow kind of outage: every call waits for its socket timeout instead
of being refused. (Redis stopped and started: test_resilience.py; a Sentinel failover:
test_redis_failover.py.)

Allowed: while Redis hangs, writes fail — heartbeats and admin calls get 503 with
``Retry-After``, the scheduler's durable copy lags — and readers keep their last copy.
Not allowed: a failed select or gateway request, a member leaving its alias's pool, a
worker marked lost because the registry could not take its heartbeats, or a registry
entry missing afterwards.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from redis.exceptions import RedisError

from shared.embedded import EmbeddedServer
from shared.state import connect_redis
from shared.workers import RegisterRequest, WorkerRegistry
from tests.integration.fleet import FAKE, Fleet, MakeFleet
from tests.integration.load_helpers import Traffic
from tests.integration.select_traffic import SelectTraffic
from tests.integration.system import wait_until
from tests.servers import private_valkey

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

LOST_AFTER_S = 2.0
HANG_S = 4.0
"""Longer than LOST_AFTER_S: a worker silent only because Redis hung must stay active."""


@pytest.fixture
def valkey() -> Iterator[EmbeddedServer]:
    server = private_valkey().start()
    try:
        yield server
    finally:
        if server.proc is not None and server.running:
            os.kill(server.proc.pid, signal.SIGCONT)
        server.stop()


@pytest.fixture
def redis_url(valkey: EmbeddedServer) -> str:
    """The fleet's services use the Redis this test hangs."""
    return valkey.url


def hang(server: EmbeddedServer) -> None:
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)


def resume(server: EmbeddedServer) -> None:
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGCONT)


async def test_silence_while_the_registry_hung_does_not_make_a_worker_lost(
        valkey: EmbeddedServer, prefix: str) -> None:
    now = [1000.0]
    client = connect_redis(valkey.url, socket_timeout=0.5, socket_connect_timeout=0.5)
    registry = WorkerRegistry(client, prefix=prefix, lost_after_s=LOST_AFTER_S,
                              clock=lambda: now[0])
    try:
        await registry.register(RegisterRequest(worker_id="w1",
                                                worker_url="http://127.0.0.1:9",
                                                heartbeat_interval_s=0.5))
        hang(valkey)
        now[0] += 10 * LOST_AFTER_S  # heartbeats refused all along
        with pytest.raises((RedisError, OSError)):
            await registry.check()
        resume(valkey)
        assert await registry.check() == [], "lost for silence the registry caused"
        now[0] += LOST_AFTER_S / 2
        assert await registry.check() == []
        # Silence since the registry came back does count: the detector still works.
        now[0] += LOST_AFTER_S
        assert await registry.check() == ["w1"]
    finally:
        resume(valkey)
        await client.aclose()


async def _state(fleet: Fleet) -> dict[str, Any]:
    async def get(path: str) -> Any:
        r = await fleet.http.get(f"{fleet.api}{path}")
        assert r.status_code == 200, f"GET {path}: {r.status_code} {r.text[:300]}"
        return r.json()

    return {"models": sorted(m["alias"] for m in (await get("/admin/models"))["models"]),
            "workers": {w["worker_id"]: (w["state"], sorted(i["url"] for i in w["instances"]))
                        for w in (await get("/admin/workers"))["workers"]},
            "members": sorted(m["key"] for m in
                              (await get("/pools/fake-model/@models/status"))["members"]
                              if m["available"])}


async def test_a_hung_redis_costs_no_select_no_gateway_request_and_no_member(
        make_fleet: MakeFleet, valkey: EmbeddedServer,
        changes: list[tuple[str, str, str]]) -> None:
    fleet = await make_fleet(autoscaling={"min_replicas": 2, "max_replicas": 2,
                                          "down_after_s": 600},
                             global_={"select_timeout_ms": 3000,
                                      "worker_lost_after_s": LOST_AFTER_S})
    await fleet.register({**FAKE, "fake_delay_ms": 20, "fake_capacity": 16})
    await fleet.wait_states("fake-model", lambda s: list(s.values()) == ["ACTIVE", "ACTIVE"],
                            90, "two ACTIVE instances")
    before: dict[str, Any] = {}

    async def settled() -> bool:
        before.update(await _state(fleet))
        return len(before["members"]) == 2
    await wait_until(settled, 60, "both instances in the pool's status")
    keys = before["members"]
    selects = SelectTraffic(fleet.api, {"pool_name": "fake-model", "partition": "@models",
                                        "members": keys},
                            concurrency=4, answers=frozenset(keys)).start()
    gateway = Traffic(fleet.api, "fake-model", concurrency=4).start()

    async def flowing(selects_from: int, gateway_from: int) -> None:
        async def enough() -> bool:
            return selects.ok >= selects_from and gateway.ok >= gateway_from
        await wait_until(enough, 120, f"{selects_from} selects and {gateway_from} gateway "
                                      f"requests answered (now {selects.ok}, {gateway.ok})")

    try:
        await flowing(200, 40)
        hang(valkey)
        during = (selects.ok, gateway.ok)
        await asyncio.sleep(HANG_S)  # the outage's length, not an assertion
        resume(valkey)
        served = (selects.ok - during[0], gateway.ok - during[1])
        await flowing(selects.ok + 300, gateway.ok + 60)
    finally:
        resume(valkey)
        await selects.stop()
        await gateway.stop()
    after = await _state(fleet)
    seen = (f"served during the hang: {served}; selects: {selects.summary().most_common(6)}; "
            f"gateway failures: {gateway.failures[:5]}")
    print(seen)
    assert not selects.failures, f"{len(selects.failures)} failed selects; {seen}"
    assert not gateway.failures, (f"{len(gateway.failures)} of {len(gateway.results)} "
                                  f"gateway requests failed; {seen}")
    assert after == before, f"before: {before}\nafter: {after}\n{seen}"
    lost = [c for c in changes if c[2] == "lost"]
    assert not lost, f"marked lost while the registry could not take heartbeats: {lost}; {seen}"

