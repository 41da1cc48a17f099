"""A Redis Sentinel failover while selects and gateway requests run loses nothing.

Every service gets ``REDIS_URL`` = the ``redis+sentinel://`` URL of a Valkey set (one
primary, one replica, three sentinels). The primary is SIGKILLed mid-traffic; the
sentinels promote the replica (``down-after`` 1 s plus an election); the killed server is
started again and the sentinels turn it into a replica of the new primary.

Allowed: while no primary answers (a few seconds), Redis writes fail — a worker's
heartbeat or an admin write gets a 503 with ``Retry-After`` and is retried by its sender;
readers keep their last good copy. Not allowed: a failed select or gateway request, a
registered model, worker, instance or PD member missing after the failover, or the
worker marked lost.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from shared.embedded import SentinelSet
from tests.integration.fleet import FAKE, Fleet, MakeFleet
from tests.integration.load_helpers import Traffic
from tests.integration.select_traffic import SelectTraffic
from tests.integration.system import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

DOWN_AFTER_MS = 3000
"""Sentinels call the primary down after this much silence (production default: 30 s)."""
LOST_AFTER_S = 2.0
"""Shorter than the outage, as a 30 s down-after is longer than the default 15 s: a worker
whose heartbeats the registry could not take is not lost for that."""
FAILOVER_S = 30.0
"""Sentinels' promotion on a busy box: down-after 1 s, election, reconfiguration."""
SELECT_BUDGET_MS = 3000
"""The API's select budget: a busy box's event loop must not be what fails a request."""
PD_POOL = {"name": "chat", "engine_type": "vllm", "served_model_name": "tiny",
           "roles": {"prefill": [], "decode": []}}
PD_MEMBER = {"id": "p1", "role": "prefill", "host": "127.0.0.1", "port": 1}
"""Registered through the admin API (kept in Redis); never healthy, which does not matter."""


@pytest.fixture
def sentinels() -> Iterator[SentinelSet]:
    valkeys = SentinelSet(replicas=1, sentinels=3, down_after_ms=DOWN_AFTER_MS).start()
    try:
        yield valkeys
    finally:
        valkeys.stop()


@pytest.fixture
def redis_url(sentinels: SentinelSet) -> str:
    """Every service of the fleet reaches Redis through the sentinels."""
    return sentinels.url


async def _state(fleet: Fleet) -> dict[str, Any]:
    """What must survive: registrations, workers and their instances, PD members."""
    async def get(path: str) -> Any:
        r = await fleet.http.get(f"{fleet.api}{path}")
        assert r.status_code == 200, f"GET {path}: {r.status_code} {r.text[:300]}"
        return r.json()

    models = {m["alias"]: {k: v for k, v in m.items() if k != "updated_at"}
              for m in (await get("/admin/models"))["models"]}
    workers = {w["worker_id"]: (w["state"], w["worker_url"],
                                sorted(i["url"] for i in w["instances"]))
               for w in (await get("/admin/workers"))["workers"]}
    pool = await get("/pools/fake-model/@models/status")
    pd = await get("/admin/pd/chat/instances")
    return {"models": models, "workers": workers,
            "members": sorted(m["key"] for m in pool["members"] if m["available"]),
            "pd": sorted(i["id"] for i in pd["instances"])}


async def test_a_primary_failover_loses_no_registry_entry_and_no_request(
        make_fleet: MakeFleet, sentinels: SentinelSet,
        changes: list[tuple[str, str, str]]) -> None:
    fleet = await make_fleet(schedulers=2, pools=[PD_POOL], autoscaling={
        "min_replicas": 2, "max_replicas": 2, "down_after_s": 600}, global_={
        "select_timeout_ms": SELECT_BUDGET_MS, "worker_lost_after_s": LOST_AFTER_S})
    await fleet.register({**FAKE, "fake_delay_ms": 20, "fake_capacity": 16})
    await fleet.register({**FAKE, "alias": "idle-model", "autoscaling": {"min_replicas": 0}})
    r = await fleet.http.post(f"{fleet.api}/admin/pd/chat/instances", json=PD_MEMBER)
    assert r.status_code in (200, 201), r.text
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

    old = sentinels.primary_now()
    promoted: tuple[str, int] | None = None
    took = 0.0
    try:
        await flowing(200, 40)
        # A write acknowledged just before the crash: it must survive the failover.
        await fleet.register({**FAKE, "alias": "late-model", "autoscaling": {
            "min_replicas": 0}})
        sentinels.primary.kill()
        started = time.monotonic()
        while time.monotonic() - started < FAILOVER_S:
            now = await asyncio.to_thread(sentinels.primary_now)
            if now is not None and now != old:
                promoted = now
                break
            await asyncio.sleep(0.2)
        took = time.monotonic() - started
        assert promoted is not None, (f"no promotion within {FAILOVER_S}s:\n"
                                      + "\n".join(s.log_tail(800) for s in sentinels.sentinels))
        await flowing(selects.ok + 300, gateway.ok + 60)
        # The old primary comes back empty; the sentinels make it a replica of the new one.
        sentinels.primary.start()
        await flowing(selects.ok + 200, gateway.ok + 40)
    finally:
        await selects.stop()
        await gateway.stop()
    after = await _state(fleet)
    seen = (f"failover {old} → {promoted} in {took:.1f}s; selects: "
            f"{selects.summary().most_common(6)}; gateway failures: {gateway.failures[:5]}")
    print(seen)
    assert not selects.failures, f"{len(selects.failures)} failed selects; {seen}"
    assert not gateway.failures, (f"{len(gateway.failures)} of {len(gateway.results)} "
                                  f"gateway requests failed; {seen}")
    assert "late-model" in after["models"], (after["models"].keys(), seen)
    del after["models"]["late-model"]
    assert after == before, f"before: {before}\nafter: {after}\n{seen}"
    lost = [c for c in changes if c[2] == "lost"]
    assert not lost, f"marked lost while the registry could not take heartbeats: {lost}; {seen}"
