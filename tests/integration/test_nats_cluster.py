"""A three-node NATS cluster: killing a node while selects and gateway requests run costs none.

Every service gets ``NATS_URL`` listing the three nodes and connects to one of them; the
node killed first is the API's, the second one a node a scheduler replica is on (each
found through the nodes' /connz). Allowed: the requests caught in the gap take longer
(nats-py reconnects to another node; the API's select/route retry asks again). Not
allowed: a failed select or gateway request.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from shared.embedded import NatsCluster
from tests.integration.fleet import FAKE, Fleet, MakeFleet
from tests.integration.load_helpers import Traffic
from tests.integration.select_traffic import SelectTraffic
from tests.integration.system import edit_config, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

SELECT_BUDGET_MS = 3000
"""The API's select budget: a busy box's event loop must not be what fails a request."""


@pytest.fixture
def cluster() -> Iterator[NatsCluster]:
    nodes = NatsCluster(3).start()
    try:
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture
def nats_url(cluster: NatsCluster) -> str:
    """Every service of the fleet gets the cluster's three URLs."""
    return cluster.url


def placement(cluster: NatsCluster) -> dict[int, list[str]]:
    """Node index → names of the clients connected to it."""
    return {i: sorted(cluster.client_names(i)) for i, node in enumerate(cluster.nodes)
            if node.running}


async def member_keys(fleet: Fleet, alias: str, count: int) -> list[str]:
    """The instance keys of ``alias``'s pool once the scheduler knows ``count`` of them."""
    keys: list[str] = []

    async def known() -> bool:
        r = await fleet.http.get(f"{fleet.api}/pools/{alias}/@models/status")
        if r.status_code != 200:
            return False
        keys[:] = [m["key"] for m in r.json()["members"] if m["available"]]
        return len(keys) >= count

    await wait_until(known, 60, f"{count} members of {alias} in the scheduler's view")
    return keys


@pytest.mark.parametrize("schedulers", [1, 2], ids=["one-replica", "two-replicas"])
async def test_a_killed_nats_node_costs_no_select_and_no_gateway_request(
        make_fleet: MakeFleet, cluster: NatsCluster, schedulers: int) -> None:
    # One replica: the second node killed holds every replica (the server answers "no
    # responders" until it has reconnected elsewhere). Two: the usual deployment.
    fleet = await make_fleet(schedulers=schedulers, autoscaling={
        "min_replicas": 2, "max_replicas": 2, "down_after_s": 600})
    edit_config(fleet.config_path,
                lambda doc: doc["global"].update(select_timeout_ms=SELECT_BUDGET_MS))
    await fleet.register({**FAKE, "fake_delay_ms": 20, "fake_capacity": 16})
    await fleet.wait_states("fake-model", lambda s: list(s.values()) == ["ACTIVE", "ACTIVE"],
                            90, "two ACTIVE instances")
    keys = await member_keys(fleet, "fake-model", 2)
    selects = SelectTraffic(fleet.api, {"pool_name": "fake-model", "partition": "@models",
                                        "members": keys},
                            concurrency=4, answers=frozenset(keys)).start()
    gateway = Traffic(fleet.api, "fake-model", concurrency=4).start()
    rounds: list[dict[str, Any]] = []

    async def flowing(selects_from: int, gateway_from: int) -> None:
        async def enough() -> bool:
            return selects.ok >= selects_from and gateway.ok >= gateway_from
        await wait_until(enough, 180, f"{selects_from} selects and {gateway_from} gateway "
                                      f"requests answered (now {selects.ok}, {gateway.ok})")

    async def kill_and_restart(pick: str) -> None:
        where = placement(cluster)
        victim = next((i for i, names in where.items()
                       if any(n.startswith(pick) for n in names)), None)
        assert victim is not None, f"no node holds a {pick!r} client: {where}"
        rounds.append({"killed": cluster.nodes[victim].url, "placement": where})
        cluster.nodes[victim].kill()
        # The traffic goes on while the node is down, then once it is back.
        await flowing(selects.ok + 300, gateway.ok + 60)
        cluster.nodes[victim].start()
        cluster.wait_routed(60)

    try:
        await flowing(200, 40)
        await kill_and_restart("api")
        await kill_and_restart("scheduler-")
        await flowing(max(1000, selects.ok + 100), gateway.ok + 20)
    finally:
        await selects.stop()
        await gateway.stop()
    seen = (f"rounds: {rounds}; selects: {selects.summary().most_common(8)}; gateway "
            f"failures: {gateway.failures[:5]}")
    print(seen)
    assert len(rounds) == 2, seen
    assert len(selects.results) >= 1000, seen
    assert not selects.failures, f"{len(selects.failures)} failed selects; {seen}"
    assert not gateway.failures, (f"{len(gateway.failures)} of {len(gateway.results)} "
                                  f"gateway requests failed; {seen}")
