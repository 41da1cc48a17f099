"""Fleet-wide events happen once: load events per pool come from one scheduler replica
(the holder of the ``load-publisher`` lease, replaced when it dies), and autoscaler actions
per alias from one autoscaler (the leader)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import nats
import pytest
import redis.asyncio as aioredis
from nats.aio.msg import Msg

from services.scheduler.main import LOAD_LEASE_TTL_S, LOAD_PERIOD_S
from shared.messages import LoadEvent
from shared.scaling import ActionRecord
from shared.subjects import Subjects
from tests.integration.fleet import FAKE, MakeFleet
from tests.integration.system import Bus, ChildProcess, wait_until, write_config

pytestmark = pytest.mark.integration

POOLS = ["once-a", "once-b", "once-c"]
MIN_GAP_S = 0.95 * LOAD_PERIOD_S
"""One publisher sleeps a whole tick between two events of a pool; two interleave."""


class LoadLog:
    """Every load event seen on the bus: pool → (arrival, event)."""

    def __init__(self) -> None:
        self.events: dict[str, list[tuple[float, LoadEvent]]] = {p: [] for p in POOLS}
        self._decode = msgspec.json.Decoder(LoadEvent).decode

    async def on_msg(self, msg: Msg) -> None:
        event = self._decode(msg.data)
        self.events.setdefault(event.name, []).append((time.monotonic(), event))

    def between(self, pool: str, since: float, until: float = float("inf")) -> list[float]:
        """The events' own timestamps (``at``) of ``pool`` that arrived in the window."""
        return [e.at for seen, e in self.events[pool] if since <= seen < until]


def _short_gaps(stamps: list[float]) -> list[float]:
    return [round(b - a, 3) for a, b in itertools.pairwise(stamps) if b - a < MIN_GAP_S]


async def _collector_stand_in(bus: Bus, stop: asyncio.Event) -> None:
    """Publish the pools' membership as a collector would, so every replica knows them."""
    while not stop.is_set():
        for i, pool in enumerate(POOLS):
            await bus.snapshot(pool, [f"10.9.0.{i + 1}:8000"])
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


@pytest.fixture
async def bus(nats_url: str, prefix: str) -> AsyncIterator[Bus]:
    connected = await Bus.connect(nats_url, prefix)
    yield connected
    await connected.close()


async def test_two_scheduler_replicas_publish_one_load_event_per_pool_per_tick(
        bus: Bus, nats_url: str, redis_url: str, prefix: str, tmp_path: Path) -> None:
    pools = [{"name": p, "source": "static", "engine_type": "vllm",
              "members": [f"10.9.0.{i + 1}:8000"]} for i, p in enumerate(POOLS)]
    config = write_config(tmp_path / "config.yaml", prefix, pools, log_level="INFO")
    load = LoadLog()
    sub = await bus.nc.subscribe(Subjects(prefix).load_all, cb=load.on_msg)
    stop = asyncio.Event()
    feeder = asyncio.create_task(_collector_stand_in(bus, stop))
    replicas = [ChildProcess("scheduler", config, nats_url, redis_url, tmp_path)
                for _ in range(2)]
    redis = aioredis.Redis.from_url(redis_url)
    key = f"{prefix}:scheduler:load-publisher"

    def logs() -> str:
        return "\n".join(f"--- scheduler pid {r.proc.pid}:\n{r.log()[-2500:]}"
                         for r in replicas)

    try:
        async def both_up() -> bool:
            return all("Scheduler replica" in r.log() for r in replicas)
        await wait_until(both_up, 40, "two scheduler replicas serving")

        async def publishing() -> bool:
            return all(len(load.events[p]) >= 2 for p in POOLS)
        await wait_until(publishing, 20, "load events for every pool")
        start = time.monotonic()
        await asyncio.sleep(5 * LOAD_PERIOD_S)
        end = time.monotonic()
        for pool in POOLS:
            stamps = load.between(pool, start, end)
            assert len(stamps) >= 3, (pool, stamps, logs())
            assert not _short_gaps(stamps), (f"{pool}: two publishers", _short_gaps(stamps),
                                             stamps, logs())

        # The holder dies without a goodbye; the other replica takes over within the lease.
        holder = (await redis.get(key)).decode()
        victim = next(r for r in replicas if f"-{r.proc.pid}-" in holder)
        survivor = next(r for r in replicas if r is not victim)
        victim.kill()
        killed = time.monotonic()
        last = {p: max(e.at for _s, e in load.events[p]) for p in POOLS}

        async def resumed() -> bool:
            return all(load.between(p, killed + 0.2) for p in POOLS)
        await wait_until(resumed, LOAD_LEASE_TTL_S + 15, "load events after the holder died")
        gaps = {p: min(load.between(p, killed + 0.2)) - last[p] for p in POOLS}
        assert all(g <= LOAD_LEASE_TTL_S + 3 * LOAD_PERIOD_S for g in gaps.values()), (
            gaps, logs())
        now_holder = (await redis.get(key)).decode()
        assert f"-{survivor.proc.pid}-" in now_holder, (holder, now_holder, logs())
        after = time.monotonic()
        await asyncio.sleep(4 * LOAD_PERIOD_S)
        for pool in POOLS:
            stamps = load.between(pool, after)
            assert len(stamps) >= 2 and not _short_gaps(stamps), (pool, stamps, logs())
    finally:
        stop.set()
        await feeder
        for replica in replicas:
            replica.terminate()
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        await redis.aclose()


async def test_two_autoscalers_act_once_per_alias(make_fleet: MakeFleet, nats_url: str,
                                                  redis_url: str, prefix: str) -> None:
    actions: list[ActionRecord] = []
    decode = msgspec.json.Decoder(ActionRecord).decode
    nc = await nats.connect(nats_url)

    async def on_action(msg: Msg) -> None:
        actions.append(decode(msg.data))

    await nc.subscribe(Subjects(prefix).autoscaler_action, cb=on_action)
    redis = aioredis.Redis.from_url(redis_url)
    try:
        fleet = await make_fleet(autoscalers=2, autoscaling={"min_replicas": 2,
                                                             "max_replicas": 4})
        await fleet.register({**FAKE, "fake_delay_ms": 0})
        await fleet.wait_states("fake-model",
                                lambda s: list(s.values()).count("ACTIVE") == 2, 40,
                                "two ACTIVE instances (min_replicas 2)")
        # A few more evaluation ticks (0.5 s each): two acting autoscalers would each have
        # started instances for min_replicas, four in all.
        await asyncio.sleep(3)
        states = await fleet.states("fake-model")
        starts = [a for a in actions if a.alias == "fake-model" and a.kind == "start"]
        assert len(states) == 2 and len(starts) == 2, (states, actions)
        leader = (await redis.get(f"{prefix}:autoscaler:leader")).decode()
        assert {a.autoscaler for a in actions} == {leader}, (leader, actions)
    finally:
        await nc.drain()
        await redis.aclose()
