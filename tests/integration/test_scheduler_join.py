"""A scheduler replica that joins late, or comes back from a NATS outage, knows every
pool at once: it asks the collectors for a resync and they republish what they hold,
instead of the replica answering ``none`` until the next membership fetch
(``pool_fetch_interval``, a minute here).

Real collector, scheduler replicas, NATS and Valkey; the members are small HTTP servers
serving a vLLM ``/metrics`` page.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
import redis.asyncio as aioredis
from nats.aio.msg import Msg

from services.collector.main import serve as serve_collector
from services.scheduler.main import serve as serve_scheduler
from shared.embedded import NatsCluster
from shared.http_server import RunningServer, start_app
from shared.messages import PoolSnapshot, SelectReply, SelectRequest
from shared.subjects import RedisKeys, Subjects
from tests.integration.system import (
    REPO,
    InProcess,
    edit_config,
    load,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.integration

FETCH_S = 60.0
"""pool_fetch_interval: the collector publishes the pool once at start, then not again
during the test."""
JOIN_DEADLINE_S = 10.0
"""From starting the new replica to its first member answer (connect and warm-up
included): generous for a busy machine, far below ``FETCH_S``."""
POOL = "join"
POOL_PARTITION = "Common"
METRICS = (REPO / "tests/fixtures/metrics/vllm-0.32.0-idle.txt").read_bytes()

Message = MutableMapping[str, Any]


async def _engine(scope: Message, receive: Callable[[], Awaitable[Message]],
                  send: Callable[[Message], Awaitable[None]]) -> None:
    """An idle vLLM: every path answers its metrics page."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain; version=0.0.4")]})
    await send({"type": "http.response.body", "body": METRICS})


@pytest.fixture
async def members() -> AsyncIterator[list[str]]:
    servers: list[RunningServer] = [await start_app(_engine) for _ in range(2)]
    yield [f"127.0.0.1:{s.port}" for s in servers]
    for server in servers:
        await server.stop()


def _config(tmp_path: Path, prefix: str, members: list[str]) -> Path:
    """One static pool of ``members``, fetched once a minute, scraped twice a second."""
    pool = {"name": POOL, "engine_type": "vllm", "source": "static", "members": members}
    path = write_config(tmp_path / "config.yaml", prefix, [pool], metrics_ms=500,
                        log_level="INFO")
    edit_config(path, lambda doc: doc["scheduler"].update(pool_fetch_interval=FETCH_S))
    return path


async def _select(nc: Any, subjects: Subjects, members: list[str]) -> str:
    """One select straight on the bus: the answer and its reason, or the error."""
    body = msgspec.json.encode(SelectRequest(pool_name=POOL, members=members))
    try:
        msg = await nc.request(subjects.select, body, timeout=2.0)
    except Exception as err:  # no replica serving yet, or a time-out on a busy machine
        return f"error: {type(err).__name__}"
    reply = msgspec.json.decode(msg.data, type=SelectReply)
    return reply.answer if reply.answer in members else f"{reply.answer} ({reply.reason})"


async def _first_member(nc: Any, subjects: Subjects, members: list[str], timeout_s: float
                        ) -> tuple[float | None, list[tuple[float, str]]]:
    """Poll selects until one answers a member: (seconds it took or None, what was seen)."""
    started = time.monotonic()
    seen: list[tuple[float, str]] = []
    while (elapsed := time.monotonic() - started) < timeout_s:
        answer = await _select(nc, subjects, members)
        if answer in members:
            return elapsed, seen
        if not seen or seen[-1][1] != answer:
            seen.append((round(elapsed, 2), answer))
        await asyncio.sleep(0.1)
    return None, seen


async def test_a_replica_started_after_the_snapshot_answers_members_at_once(
        tmp_path: Path, nats_url: str, redis_url: str, prefix: str, members: list[str],
        nc: Any) -> None:
    loaded = load(_config(tmp_path, prefix, members))
    subjects = Subjects(prefix)
    kw = {"nats_url": nats_url, "redis_url": redis_url}
    collector = InProcess(serve_collector, loaded, **kw)
    first = InProcess(serve_scheduler, loaded, **kw)
    second: InProcess | None = None
    redis = aioredis.from_url(redis_url)
    try:
        took, seen = await _first_member(nc, subjects, members, 30)
        assert took is not None, f"the first replica never answered a member: {seen}"
        await first.stop()
        # Nothing left to warm up from, as with a fresh Redis (or a copy past its TTL, or
        # replicas started together before any of them wrote one).
        keys = RedisKeys(prefix)
        stored = [k for pattern in (keys.snapshot_pattern, keys.metrics_pattern)
                  async for k in redis.scan_iter(pattern)]
        if stored:
            await redis.delete(*stored)
        second = InProcess(serve_scheduler, loaded, **kw)
        took, seen = await _first_member(nc, subjects, members, JOIN_DEADLINE_S)
        assert took is not None, (
            f"the replica started after the collector's snapshot answered no member within "
            f"{JOIN_DEADLINE_S}s (next membership fetch in {FETCH_S:g}s); it answered "
            f"(seconds after its start, answer): {seen}")
    finally:
        for svc in (second, first, collector):
            if svc is not None:
                await svc.stop()
        await redis.aclose()


async def test_resync_requests_are_answered_at_most_once_a_second(
        tmp_path: Path, nats_url: str, redis_url: str, prefix: str, members: list[str],
        nc: Any) -> None:
    loaded = load(_config(tmp_path, prefix, members))
    subjects = Subjects(prefix)
    snapshots: list[float] = []
    decode = msgspec.json.Decoder(PoolSnapshot).decode

    async def on_snapshot(msg: Msg) -> None:
        decode(msg.data)
        snapshots.append(time.monotonic())

    sub = await nc.subscribe(subjects.pool_snapshot(POOL_PARTITION, POOL), cb=on_snapshot)
    collector = InProcess(serve_collector, loaded, nats_url=nats_url, redis_url=redis_url)
    try:
        async def published() -> bool:
            return bool(snapshots)

        await wait_until(published, 30, "the collector's first snapshot")
        # A burst of replicas asking (20 requests in about 2 s).
        burst_started = time.monotonic()
        last_request = burst_started
        for _ in range(20):
            await asyncio.sleep(0.1)
            await nc.publish(subjects.pool_resync, b"test")
            await nc.flush()
            last_request = time.monotonic()

        async def last_answered() -> bool:
            return any(t > last_request for t in snapshots)

        with contextlib.suppress(AssertionError):  # reported below, with what was seen
            await wait_until(last_answered, 10, "a republish after the last request")
        await asyncio.sleep(1.5)  # anything still to come of the burst
        answers = [round(t - burst_started, 2) for t in snapshots if t >= burst_started]
        span = max(snapshots) - burst_started
        assert await last_answered(), (
            f"the last request of the burst got no republish: answers at {answers}, last "
            f"request at {last_request - burst_started:.2f}s")
        assert len(answers) <= span + 1, f"more than one republish a second: {answers}"
    finally:
        await sub.unsubscribe()
        await collector.stop()



@pytest.fixture
def cluster() -> Iterator[NatsCluster]:
    """Two routed NATS nodes that do not tell clients about each other: a client of a
    stopped node waits for that node (so it surely misses what is published meanwhile)."""
    nodes = NatsCluster(2)
    for node in nodes.nodes:
        node.argv.append("--no_advertise")
    nodes.start()
    try:
        yield nodes
    finally:
        nodes.stop()


async def test_a_replica_back_from_a_nats_outage_learns_what_it_missed(
        tmp_path: Path, redis_url: str, prefix: str, members: list[str],
        cluster: NatsCluster) -> None:
    first, added = members
    path = _config(tmp_path, prefix, [first])
    loaded = load(path)
    subjects = Subjects(prefix)
    scheduler_node, collector_node = cluster.nodes
    collector = InProcess(serve_collector, loaded, nats_url=collector_node.url,
                          redis_url=redis_url)
    scheduler = InProcess(serve_scheduler, loaded, nats_url=scheduler_node.url,
                          redis_url=redis_url)
    nc = await nats.connect(collector_node.url)
    snapshots: list[list[str]] = []
    decode = msgspec.json.Decoder(PoolSnapshot).decode

    async def on_snapshot(msg: Msg) -> None:
        snapshots.append(sorted(m.key for m in decode(msg.data).members))

    await nc.subscribe(subjects.pool_snapshot(POOL_PARTITION, POOL), cb=on_snapshot)
    try:
        took, seen = await _first_member(nc, subjects, [first], 30)
        assert took is not None, f"the replica never answered a member: {seen}"
        scheduler_node.kill()

        async def replica_gone() -> bool:
            return (await _select(nc, subjects, [first])).startswith("error")

        await wait_until(replica_gone, 10, "selects unanswered with the replica's node down")
        # The membership changes while the replica is cut off: it misses the new snapshot.
        edit_config(path, lambda doc: doc["pools"][0].update(members=[first, added]))

        async def published() -> bool:
            return sorted([first, added]) in snapshots

        await wait_until(published, 15, "the collector publishing the new membership")
        scheduler_node.start()
        took, seen = await _first_member(nc, subjects, [added], JOIN_DEADLINE_S)
        assert took is not None, (
            f"the replica back on NATS did not learn member {added} within "
            f"{JOIN_DEADLINE_S}s (next membership fetch in {FETCH_S:g}s); asked for it "
            f"alone, it answered (seconds after its node restarted, answer): {seen}")
    finally:
        await scheduler.stop()
        await collector.stop()
        with contextlib.suppress(Exception):
            await nc.drain()
