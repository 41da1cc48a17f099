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


class DeafSource:
    """The second fetch waits until cancelled and loses that cancel (it returns as if it
    had finished), as a library's cancel scope can; every other fetch answers at once."""

    def __init__(self) -> None:
        self.fetches = 0
        self.waiting = asyncio.Event()
        self.lost = 0

    async def snapshot(self, pool: PoolConfig, engine_type: str | None = None) -> PoolSnapshot:
        self.fetches += 1
        if self.fetches == 2:
            self.waiting.set()
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                self.lost += 1
        return PoolSnapshot(pool=pool.name, partition=pool.partition,
                            engine_type=engine_type or pool.engine_type, source="workers",
                            members=[], fetched_at=time.time())

    def next_delay(self, pool: PoolConfig) -> float | None:
        return 0.01


async def _deaf_collector(nats_url: str, prefix: str) -> tuple[
        nats.NATS, Collector, DeafSource, list[PoolSnapshot], httpx.AsyncClient]:
    nc = await nats.connect(nats_url)
    subjects = Subjects(prefix)
    published: list[PoolSnapshot] = []

    async def on_snapshot(msg: Msg) -> None:
        published.append(msgspec.json.decode(msg.data, type=PoolSnapshot))
    await nc.subscribe(subjects.pool_snapshot_all, cb=on_snapshot)
    http = httpx.AsyncClient()
    collector = Collector(nc, subjects, MetricsScraper(http), Config())
    source = DeafSource()
    collector.apply_config(Config(), {"workers": source}, {"chat": "vllm"})
    collector.workers_changed()
    await asyncio.wait_for(source.waiting.wait(), 10)
    return nc, collector, source, published, http


async def test_close_ends_a_membership_loop_that_lost_its_cancel(nats_url: str) -> None:
    nc, collector, source, _published, http = await _deaf_collector(nats_url, "deaf-close")
    try:
        try:
            await asyncio.wait_for(collector.close(), 10)
        except TimeoutError:
            raise AssertionError(f"close() still waiting after 10 s; {source.fetches} fetches, "
                                 f"{source.lost} cancel(s) lost") from None
        assert source.lost == 1, source.lost
        fetches = source.fetches
        await asyncio.sleep(0.3)
        assert source.fetches == fetches, "the pool was fetched again after close()"
    finally:
        await http.aclose()
        await nc.drain()


async def test_a_removed_pool_is_not_published_by_a_loop_that_lost_its_cancel(
        nats_url: str) -> None:
    nc, collector, source, published, http = await _deaf_collector(nats_url, "deaf-remove")
    try:
        collector.apply_config(Config(), {"workers": source}, {})  # the alias is deleted
        async def announced() -> bool:
            return any(s.source == "removed" for s in published)
        await wait_until(announced, 10, "the removal announced")
        await asyncio.sleep(0.3)
        fetches = source.fetches
        await asyncio.sleep(0.3)
        assert source.lost == 1, source.lost
        assert source.fetches == fetches, (
            f"the removed pool's loop still fetches ({fetches} → {source.fetches})")
        after = [s.source for s in published[next(i for i, s in enumerate(published)
                                                   if s.source == "removed"):]]
        assert after == ["removed"], f"published after the removal: {after}"
        await asyncio.wait_for(collector.close(), 10)
    finally:
        await http.aclose()
        await nc.drain()
