"""A scheduler replica that starts before the collector still routes its static pools."""

from __future__ import annotations

import random

from shared.config import Config, ModeConfig, PoolConfig, SchedulerConfig
from shared.messages import MemberInfo, PoolSnapshot
from shared.routing import RouteRequest
from shared.scheduling.core import SchedulerCore
from shared.scheduling.plugins.registry import default_registry

KEYS = ["10.0.0.1:8000", "10.0.0.2:8000"]


def make_core() -> SchedulerCore:
    config = Config(scheduler=SchedulerConfig(metrics_fetch_interval=1000),
                    modes=[ModeConfig(name="ll", type="least_load")],
                    pools=[PoolConfig(name="chat", engine_type="vllm", source="static",
                                      members=KEYS, mode="ll"),
                           PoolConfig(name="edge", engine_type="vllm", source="f5",
                                      mode="ll")])
    return SchedulerCore(config, default_registry(), rng=random.Random(0),
                         clock=lambda: 1000.0, replica="r1")


def route(core: SchedulerCore, pool: str) -> tuple[str, str]:
    reply, _event = core.route(RouteRequest(pool=pool, partition="Common", request_id="x",
                                            prompt_chars=40))
    return reply.answer, reply.reason


def test_static_pools_are_served_from_the_config_until_a_snapshot_comes() -> None:
    core = make_core()
    assert route(core, "chat") == ("none", "pool_empty"), "nothing known yet"
    assert core.seed_static_pools() == ["chat:Common"], "F5 pools have no members to seed"
    answer, _reason = route(core, "chat")
    assert answer in KEYS, answer
    assert route(core, "edge")[0] == "none"
    # The collector's first snapshot (any date after 0) replaces the seed: here one member
    # is down.
    core.view.apply_snapshot(PoolSnapshot(
        pool="chat", partition="Common", engine_type="vllm", source="static",
        members=[MemberInfo(key=KEYS[0], host="10.0.0.1", port=8000, available=False),
                 MemberInfo(key=KEYS[1], host="10.0.0.2", port=8000)], fetched_at=999.0))
    assert {route(core, "chat")[0] for _ in range(5)} == {KEYS[1]}
    assert core.seed_static_pools() == [], "a pool with a snapshot is never seeded again"


def test_a_pool_without_source_is_static_when_no_f5_is_configured() -> None:
    """The collector serves it from its members list, so the seed must too."""
    config = Config(modes=[ModeConfig(name="ll", type="least_load")],
                    pools=[PoolConfig(name="chat", engine_type="vllm", members=KEYS,
                                      mode="ll")])
    assert config.pool_source(config.pools[0]) == "static"
    core = SchedulerCore(config, default_registry(), rng=random.Random(0),
                         clock=lambda: 1000.0, replica="r1")
    assert core.seed_static_pools() == ["chat:Common"]
    assert route(core, "chat")[0] in KEYS
