"""Several collector processes split the pools: each pool scraped by exactly one, a killed
collector's pools taken over by a survivor within 3 scrape intervals, none scraped twice.

The engines tell who scrapes them: every collector sends ``User-Agent:
llmsched-collector/<host>-<pid>-<id>``, and each engine here records the time and agent
of every ``GET /metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from services.collector.main import serve as serve_collector
from services.collector.rendezvous import owner
from shared.http_server import RunningServer, free_port, start_app
from tests.integration.system import (
    REPO,
    ChildProcess,
    InProcess,
    load,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.integration

INTERVAL_S = 1.0
"""metrics_fetch_interval of the test: the default lease is then 2 s."""
POOLS = 6
COLLECTORS = 3
METRICS = (REPO / "tests/fixtures/metrics/vllm-0.32.0-idle.txt").read_bytes()

Message = MutableMapping[str, Any]


@dataclass
class Engine:
    """A /metrics endpoint that records who scraped it and when (monotonic seconds)."""

    hits: list[tuple[float, str]] = field(default_factory=list)

    async def __call__(self, scope: Message, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        agent = dict(scope["headers"]).get(b"user-agent", b"").decode()
        if scope["path"] == "/metrics":
            self.hits.append((time.monotonic(), agent))
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain; version=0.0.4")]})
        await send({"type": "http.response.body", "body": METRICS})

    def scrapers(self, since: float = 0.0, until: float = float("inf")) -> list[str]:
        return [agent for at, agent in self.hits if since <= at < until]


def collector_id(agent: str) -> str:
    return agent.removeprefix("llmsched-collector/")


def pid_of(agent: str) -> int:
    """The pid inside ``llmsched-collector/<host>-<pid>-<hex>``."""
    return int(collector_id(agent).rsplit("-", 2)[-2])


def doubled(hits: list[tuple[float, str]]) -> list[tuple[float, str]]:
    """Scrapes made while another collector was scraping the same pool.

    A scrape by X is doubled when some other collector Y scraped the pool just before
    and just after it, those two within 1.5 intervals (Y was on its regular cadence).
    A clean hand-over doubles nothing; one overlapping round doubles two scrapes (the old
    owner's extra one and the new owner's first).
    """
    out = []
    for at, agent in hits:
        for other in {a for _t, a in hits if a != agent}:
            before = [t for t, a in hits if a == other and t < at]
            after = [t for t, a in hits if a == other and t > at]
            if before and after and min(after) - max(before) <= 1.5 * INTERVAL_S:
                out.append((at, agent))
                break
    return out


@pytest.fixture
async def engines() -> AsyncIterator[list[tuple[Engine, RunningServer]]]:
    running = []
    for _ in range(POOLS):
        engine = Engine()
        running.append((engine, await start_app(engine)))
    yield running
    for _engine, server in running:
        await server.stop()


def _owners(engines: list[tuple[Engine, RunningServer]], since: float, until: float
            ) -> dict[int, set[str]]:
    return {i: set(e.scrapers(since, until)) for i, (e, _s) in enumerate(engines)}


async def test_collectors_split_pools_and_take_over_a_killed_ones(
        engines: list[tuple[Engine, RunningServer]], nats_url: str, redis_url: str,
        prefix: str, tmp_path: Path) -> None:
    pools = [{"name": f"split-{i}", "source": "static", "engine_type": "vllm",
              "members": [f"127.0.0.1:{server.port}"]}
             for i, (_engine, server) in enumerate(engines)]
    config = write_config(tmp_path / "config.yaml", prefix, pools, metrics_ms=INTERVAL_S * 1000,
                          log_level="INFO")
    redis = aioredis.Redis.from_url(redis_url)
    children = [ChildProcess("collector", config, nats_url, redis_url, tmp_path)
                for _ in range(COLLECTORS)]
    by_pid = {child.proc.pid: child for child in children}

    def logs() -> str:
        return "\n".join(f"--- collector pid {c.proc.pid}:\n{c.log()[-3000:]}" for c in children)

    try:
        async def all_joined() -> bool:
            return await redis.zcard(f"{prefix}:collector:members") == COLLECTORS
        await wait_until(all_joined, 40, f"{COLLECTORS} collectors in the membership")
        live = sorted(m.decode() for m in await redis.zrange(f"{prefix}:collector:members",
                                                             0, -1))
        expected = {i: owner((f"split-{i}", "Common"), live) for i in range(POOLS)}

        async def settled() -> bool:
            now = time.monotonic()
            seen = _owners(engines, now - 2 * INTERVAL_S, now)
            return all({collector_id(a) for a in seen[i]} == {expected[i]} for i in seen)
        await wait_until(settled, 30, f"each pool scraped by its rendezvous owner only "
                                      f"(expected {expected})")

        # Steady state: exactly one collector per pool, every pool scraped.
        window_start = time.monotonic()
        await asyncio.sleep(4 * INTERVAL_S)
        steady = _owners(engines, window_start, time.monotonic())
        assert all(len(agents) == 1 for agents in steady.values()), (steady, logs())
        for i, (engine, _server) in enumerate(engines):
            assert len(engine.scrapers(window_start)) >= 2, (i, engine.hits[-10:], logs())
            assert collector_id(next(iter(steady[i]))) == expected[i], (i, steady, expected)

        # Kill the collector serving the most pools, without a goodbye.
        serving: dict[str, list[int]] = {}
        for i, agents in steady.items():
            serving.setdefault(next(iter(agents)), []).append(i)
        victim_agent = max(serving, key=lambda a: len(serving[a]))
        orphaned = serving[victim_agent]
        victim = by_pid[pid_of(victim_agent)]
        victim.kill()
        killed_at = time.monotonic()

        async def taken_over() -> bool:
            return all(engines[i][0].scrapers(killed_at) for i in orphaned)
        await wait_until(taken_over, 6 * INTERVAL_S + 10,
                         f"pools {orphaned} scraped again after collector "
                         f"{victim.proc.pid} was killed")
        gaps = {i: min(at for at, a in engines[i][0].hits if at >= killed_at) - killed_at
                for i in orphaned}
        print(f"take-over after the kill, seconds per pool: {gaps}")
        assert all(gap <= 3 * INTERVAL_S for gap in gaps.values()), (
            f"take-over later than 3 intervals: {gaps}", logs())

        # After the take-over: again exactly one survivor per pool; survivors kept theirs.
        survivors = sorted(collector_id(a) for a in serving if a != victim_agent)
        expected_after = {i: owner((f"split-{i}", "Common"), sorted(
            set(live) - {collector_id(victim_agent)})) for i in range(POOLS)}
        await asyncio.sleep(INTERVAL_S)  # the hand-over round(s) out of the window
        after_start = time.monotonic()
        await asyncio.sleep(4 * INTERVAL_S)
        after = _owners(engines, after_start, time.monotonic())
        for i in range(POOLS):
            assert {collector_id(a) for a in after[i]} == {expected_after[i]}, (
                i, after, expected_after, survivors, logs())
            if i not in orphaned:
                assert after[i] == steady[i], (i, steady, after)

        # Never two collectors on one pool, but for one overlapping round at a hand-over.
        for i, (engine, _server) in enumerate(engines):
            assert len(doubled(engine.hits)) <= 2, (i, doubled(engine.hits), engine.hits,
                                                    logs())
    finally:
        for child in children:
            child.terminate()
        with contextlib.suppress(Exception):
            await redis.aclose()


async def test_a_lone_collector_without_redis_scrapes_every_pool_and_says_so_once(
        engines: list[tuple[Engine, RunningServer]], nats_url: str, prefix: str,
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="llmsched.collector.ownership")
    pools = [{"name": f"alone-{i}", "source": "static", "engine_type": "vllm",
              "members": [f"127.0.0.1:{server.port}"]}
             for i, (_engine, server) in enumerate(engines)]
    loaded = load(write_config(tmp_path / "config.yaml", prefix, pools, metrics_ms=200))
    nobody = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    started = time.monotonic()
    collector = InProcess(serve_collector, loaded, nats_url=nats_url, redis_url=nobody)
    try:
        async def all_scraped() -> bool:
            if collector.task.done():
                collector.task.result()
            return all(len(e.scrapers(started)) >= 3 for e, _s in engines)
        await wait_until(all_scraped, 20, "every pool scraped by the lone collector")
        agents = {a for e, _s in engines for a in e.scrapers(started)}
        assert len(agents) == 1, agents
    finally:
        await collector.stop()
    fail_open = [r.getMessage() for r in caplog.records
                 if r.name == "llmsched.collector.ownership"]
    assert len(fail_open) == 1, fail_open
    assert "fail open" in fail_open[0], fail_open
