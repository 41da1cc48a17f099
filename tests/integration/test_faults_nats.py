"""The only NATS server stopped and started again (same port) while selects and gateway
requests run. (A node of a cluster killed: test_nats_cluster.py.)

Allowed, for a request answered after the server stopped and sent until RECOVER_S after it
is back (one in flight at the stop loses its reply too): a select answers
``503 scheduler_unavailable`` with ``Retry-After`` (the iRule then uses the pool's own
load balancing). A gateway request deciding in the API (``gateway.decide: local``, the
default) is served throughout from the API's own view; one deciding in the scheduler is
refused the same way as a select (``503 scheduler_unavailable`` + ``Retry-After``: that
gateway cannot route without a scheduler). Each answer comes within the select budget. Not
allowed: any other error (no 500, no connection error, no hang past the budget), a 503
outside that window (or at all for a local gateway), a registered model, worker or pool
member missing afterwards, or a service that does not come back (selects answer members,
the collector's metrics reach the scheduler again).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from shared.embedded import EmbeddedServer, nats_server
from tests.integration.fleet import FAKE, Fleet, MakeFleet
from tests.integration.system import wait_until
from tests.integration.timed_traffic import Answer, TimedTraffic, chat_sender, select_sender

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

BUDGET_S = 2.0
"""The API's select budget (``select_timeout_ms``); a route call has the same one."""
SLACK_S = 5.0
"""What a busy 2-core box may add to an answer on top of its budget (not a hang)."""
DOWN_S = 3.0
"""How long the bus stays down."""
RECOVER_S = 10.0
"""After the server is back, selects answer members again within this."""


@pytest.fixture
def bus() -> Iterator[EmbeddedServer]:
    """A NATS server of this test's own: it is stopped, never the session's shared one."""
    server = nats_server().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def nats_url(bus: EmbeddedServer) -> str:
    return bus.url


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


def _refused(a: Answer) -> bool:
    """The documented answer while no scheduler can be reached."""
    return a.status == 503 and a.code == "scheduler_unavailable" and bool(a.retry_after)


@pytest.mark.parametrize("decide", ["local", "scheduler"])
async def test_the_only_nats_server_restarted_costs_only_documented_fallbacks(
        make_fleet: MakeFleet, bus: EmbeddedServer, decide: str) -> None:
    local = decide == "local"
    fleet = await make_fleet(autoscaling={"min_replicas": 2, "max_replicas": 2,
                                          "down_after_s": 600},
                             global_={"select_timeout_ms": BUDGET_S * 1000},
                             gateway={"decide": decide})
    await fleet.register({**FAKE, "fake_delay_ms": 20, "fake_capacity": 16})
    await fleet.wait_states("fake-model", lambda s: list(s.values()) == ["ACTIVE", "ACTIVE"],
                            90, "two ACTIVE instances")
    before: dict[str, Any] = {}

    async def settled() -> bool:
        before.update(await _state(fleet))
        return len(before["members"]) == 2
    await wait_until(settled, 60, "both instances in the pool's status")
    keys: list[str] = before["members"]
    selects = TimedTraffic(select_sender(fleet.api, {
        "pool_name": "fake-model", "partition": "@models", "members": keys}),
        concurrency=4).start()
    gateway = TimedTraffic(chat_sender(fleet.api, "fake-model"), concurrency=4).start()

    def member(a: Answer) -> bool:
        return a.status == 200 and a.text in keys

    def served(a: Answer) -> bool:
        return a.status == 200

    async def flowing(since: float, n_selects: int, n_gateway: int, timeout_s: float,
                      what: str) -> None:
        async def enough() -> bool:
            return (selects.count(member, since) >= n_selects
                    and gateway.count(served, since) >= n_gateway)
        await wait_until(enough, timeout_s, f"{what}: {n_selects} selects answered with a "
                         f"member and {n_gateway} gateway requests served")

    try:
        await flowing(0, 100, 20, 60, "before the fault")
        down = time.monotonic()
        await asyncio.to_thread(bus.stop)

        async def refusing() -> bool:
            return (time.monotonic() - down >= DOWN_S
                    and selects.count(_refused, down) >= 1
                    and gateway.count(served if local else _refused, down) >= 1)
        await wait_until(refusing, DOWN_S + 30, "selects refused and gateway requests "
                         + ("served" if local else "refused"))
        await asyncio.to_thread(bus.start)
        up = time.monotonic()
        await flowing(up, 1, 1, RECOVER_S + SLACK_S, "after the server is back")
        back = time.monotonic()
        await flowing(up + RECOVER_S, 200, 40, 60, "well after the server is back")

        async def fresh() -> bool:
            r = await fleet.http.get(f"{fleet.api}/pools/fake-model/@models/status")
            members = r.json()["members"]
            return len(members) == 2 and not any(m["stale"] for m in members)
        await wait_until(fresh, RECOVER_S, "fresh metrics of both members (the collector's "
                         "scrapes reach the scheduler again)")
    finally:
        await selects.stop()
        await gateway.stop()
    after = await _state(fleet)
    end_of_window = up + RECOVER_S
    seen = (f"down {up - down:.1f}s, members again {back - up:.1f}s after the restart; "
            f"selects: {selects.summary().most_common(6)}; "
            f"gateway: {gateway.summary().most_common(6)}")
    print(seen)
    for name, traffic in (("select", selects), ("gateway", gateway)):
        may_refuse = name == "select" or not local
        wrong = [a for a in traffic.answers
                 if not (a.status == 200 or (may_refuse and _refused(a) and a.at + a.took >= down
                                             and a.at <= end_of_window))]
        assert not wrong, f"{len(wrong)} {name} answers not allowed: {wrong[:5]}; {seen}"
        slow = [a for a in traffic.answers if a.took > BUDGET_S + SLACK_S]
        assert not slow, f"{len(slow)} {name} answers past the budget: {slow[:5]}; {seen}"
    bad = [a for a in selects.answers if a.status == 200 and a.text not in keys]
    assert not bad, f"selects answered without a member: {bad[:5]}; {seen}"
    assert after == before, f"before: {before}\nafter: {after}\n{seen}"
