"""The collector re-reads pools drawn from workers when the worker registry changes.

A worker's heartbeat that changes its instances makes the API announce
``registry.changed``; the collector must then fetch those pools at once rather than at
its next poll, so a new instance is routable (and a dead one leaves) within a heartbeat.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import msgspec
import nats
from nats.aio.msg import Msg

from services.collector.loops import Collector
from services.collector.scraper import MetricsScraper
from shared.config import Config, PoolConfig
from shared.messages import PoolSnapshot
from shared.subjects import MODELS_PARTITION, Subjects
from tests.integration.system import wait_until


class CountingSource:
    """A membership source that counts its fetches and never asks to be polled soon."""

    def __init__(self) -> None:
        self.fetches = 0

    async def snapshot(self, pool: PoolConfig, engine_type: str | None = None) -> PoolSnapshot:
        self.fetches += 1
        return PoolSnapshot(pool=pool.name, partition=pool.partition,
                            engine_type=engine_type or pool.engine_type, source="workers",
                            members=[], fetched_at=time.time())

    def next_delay(self, pool: PoolConfig) -> float | None:
        return 3600.0  # only a registry change can bring the next fetch within the test


async def test_a_worker_registry_change_refetches_worker_pools_at_once(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    subjects = Subjects("refresh-test")
    published: list[PoolSnapshot] = []

    async def on_snapshot(msg: Msg) -> None:
        published.append(msgspec.json.decode(msg.data, type=PoolSnapshot))
    await nc.subscribe(subjects.pool_snapshot_all, cb=on_snapshot)
    source = CountingSource()
    async with httpx.AsyncClient() as http:
        collector = Collector(nc, subjects, MetricsScraper(http), Config())
        try:
            collector.apply_config(Config(), {"workers": source}, {"chat": "vllm"})
            async def fetched(n: int) -> bool:
                return source.fetches == n and len(published) == n
            await wait_until(lambda: fetched(1), 10, "the first fetch of the alias's pool")
            assert published[0].partition == MODELS_PARTITION, published
            collector.workers_changed()
            await wait_until(lambda: fetched(2), 10, "a fetch after a registry change")
            collector.workers_changed()
            await wait_until(lambda: fetched(3), 10, "a fetch after a second change")
            await asyncio.sleep(0.3)
            assert source.fetches == 3, f"fetched {source.fetches} times for 2 changes"
        finally:
            collector.apply_config(Config(), {"workers": source}, {})
            await nc.drain()
