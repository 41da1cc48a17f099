"""Restarting the API, a scheduler or the autoscaler loses no model, worker or instance."""

from __future__ import annotations

import pytest

from tests.integration.fleet import FAKE, Fleet, MakeFleet
from tests.integration.system import wait_until

pytestmark = pytest.mark.integration


async def _snapshot(fleet: Fleet) -> tuple[list[str], list[str], dict[str, str]]:
    models = (await fleet.http.get(f"{fleet.api}/admin/models")).json()["models"]
    workers = (await fleet.http.get(f"{fleet.api}/admin/workers")).json()["workers"]
    return (sorted(m["alias"] for m in models), sorted(w["worker_id"] for w in workers),
            await fleet.states("fake-model"))


async def _serves(fleet: Fleet) -> bool:
    r = await fleet.http.post(f"{fleet.api}/v1/chat/completions", json={
        "model": "fake-model", "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 3})
    return r.status_code == 200


@pytest.mark.parametrize("service", ["api", "scheduler-1", "autoscaler-1", "collector"])
async def test_restart_loses_nothing(make_fleet: MakeFleet, service: str) -> None:
    fleet = await make_fleet(autoscaling={"min_replicas": 1, "down_after_s": 600})
    await fleet.register({**FAKE, "fake_delay_ms": 0})
    await fleet.register({**FAKE, "alias": "other-model", "fake_delay_ms": 0})
    await fleet.wait_states("fake-model", lambda s: list(s.values()) == ["ACTIVE"], 30,
                            "one ACTIVE instance")
    await wait_until(lambda: _serves(fleet), 20, "the gateway serving")
    before = await _snapshot(fleet)
    await fleet.stop(service)
    await fleet.start(service)

    async def healthy() -> bool:
        return (await fleet.http.get(f"{fleet.api}/health")).status_code == 200
    await wait_until(healthy, 30, f"healthy after restarting {service}")
    await wait_until(lambda: _serves(fleet), 30, f"the gateway serving after {service} restart")
    after = await _snapshot(fleet)
    actions = [(a["alias"], a["kind"], a["instance"], a["reason"]) for a in
               (await fleet.http.get(f"{fleet.api}/admin/status")).json()["actions"]]
    assert after == before, (before, after, actions)
