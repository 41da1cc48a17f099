"""Batched select and route calls through the scheduler's real endpoints on a real NATS:
the calls of one loop pass leave as one request, each gets the decision it would have got
alone, every selection is announced, and a malformed batch is refused with a 400."""

from __future__ import annotations

import asyncio
import random

import msgspec
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from services.api.gateway.bus import NatsRouter
from services.api.scheduler_client import SchedulerClient
from services.api.scheduler_errors import SchedulerError
from services.scheduler.endpoints import MAX_BATCH, SchedulerEndpoints, start_service
from shared.config import Config, ModeConfig, PoolConfig, SchedulerConfig
from shared.messages import MemberInfo, PoolSnapshot, SelectRequest
from shared.routing import RouteRequest, SelectionEvent
from shared.scheduling.core import SchedulerCore
from shared.scheduling.plugins.registry import default_registry
from shared.subjects import Subjects

pytestmark = pytest.mark.integration

KEYS = ["10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000"]
CALLS = 24


def make_core() -> SchedulerCore:
    config = Config(scheduler=SchedulerConfig(metrics_fetch_interval=1000),
                    modes=[ModeConfig(name="ll", type="least_load")],
                    pools=[PoolConfig(name="chat", engine_type="vllm", source="static",
                                      members=KEYS, mode="ll")])
    core = SchedulerCore(config, default_registry(), rng=random.Random(0),
                         clock=lambda: 1000.0, replica="r1")
    core.view.apply_snapshot(PoolSnapshot(
        pool="chat", partition="Common", engine_type="vllm", source="static",
        members=[MemberInfo(key=k, host=k.split(":")[0], port=8000) for k in KEYS],
        fetched_at=1000.0))
    return core


async def scheduler(nc: NATS, subjects: Subjects
                    ) -> tuple[list[SelectionEvent], dict[str, list[bytes]]]:
    """A replica on ``nc``; what it announced, and what reached each batch endpoint."""
    announced: list[SelectionEvent] = []

    async def announce(event: SelectionEvent) -> None:
        announced.append(event)

    endpoints = SchedulerEndpoints(make_core(), replica="r1", config_version="test",
                                   store_ok={"ok": True}, announce=announce)
    await start_service(nc, subjects, endpoints)
    seen: dict[str, list[bytes]] = {}
    for subject in (subjects.select, subjects.select_many, subjects.route,
                    subjects.route_many):
        calls = seen.setdefault(subject, [])

        async def watch(msg: Msg, calls: list[bytes] = calls) -> None:
            calls.append(msg.data)

        await nc.subscribe(subject, cb=watch)  # not in the queue group: sees every request
    await nc.flush()
    return announced, seen


async def test_selects_of_one_pass_are_one_request_and_each_is_decided(
        nc: NATS, nats_url: str, prefix: str) -> None:
    subjects = Subjects(prefix)
    announced, seen = await scheduler(nc, subjects)
    api = await nats.connect(nats_url)
    try:
        client = SchedulerClient(api, subjects, 5.0)
        body = msgspec.json.encode(SelectRequest(pool_name="chat", partition="Common",
                                                 members=KEYS))
        answers = await asyncio.gather(*(client.select(body) for _ in range(CALLS)))
        assert set(answers) <= set(KEYS), answers
        await api.flush()
        await nc.flush()
        batches = seen[subjects.select_many]
        assert len(batches) == 1 and not seen[subjects.select], seen
        assert len(msgspec.json.decode(batches[0])) == CALLS
        assert len(announced) == 0, "the select path announces greybox pools only"
        alone = await client.select(body)
        assert alone in KEYS and len(seen[subjects.select]) == 1, seen
    finally:
        await api.drain()


async def test_routes_of_one_pass_are_one_request_and_each_is_announced(
        nc: NATS, nats_url: str, prefix: str) -> None:
    subjects = Subjects(prefix)
    announced, seen = await scheduler(nc, subjects)
    api = await nats.connect(nats_url)
    try:
        router = NatsRouter(SchedulerClient(api, subjects, 5.0))
        requests = [RouteRequest(request_id=f"r{i}", pool="chat", partition="Common",
                                 prompt_chars=40) for i in range(CALLS)]
        replies = await asyncio.gather(*(router.route(r) for r in requests))
        assert all(r.answer in KEYS and r.url.startswith("http://") for r in replies), replies
        assert sorted(e.request_id for e in announced) == sorted(r.request_id
                                                                 for r in requests)
        # Each reply is its own request's: the announced selection names the same member.
        by_id = {e.request_id: e.member for e in announced}
        assert all(by_id[q.request_id] == r.answer for q, r in zip(requests, replies,
                                                                    strict=True))
        await api.flush()
        await nc.flush()
        assert len(seen[subjects.route_many]) == 1 and not seen[subjects.route], seen
    finally:
        await api.drain()


@pytest.mark.parametrize(("body", "says"), [
    (b"[]", "1..256"),
    (b"[" + b",".join([b'{"pool_name": "chat", "members": []}'] * (MAX_BATCH + 1)) + b"]",
     "got 257"),
    (b'{"pool_name": "chat"}', "Expected `array`"),
    (b'[{"pool_name": 5}]', "pool_name"),
])
async def test_a_malformed_batch_is_refused_naming_the_problem(
        nc: NATS, nats_url: str, prefix: str, body: bytes, says: str) -> None:
    subjects = Subjects(prefix)
    await scheduler(nc, subjects)
    api = await nats.connect(nats_url)
    try:
        client = SchedulerClient(api, subjects, 5.0)
        with pytest.raises(SchedulerError) as info:
            await client.call(subjects.select_many, body)
        assert info.value.code == 400 and says in info.value.message, info.value.message
    finally:
        await api.drain()
