"""The API's request-reply client of the scheduler, over a real NATS server: replies reach
their own caller, and no replica, a silent one or a refusing one each give a clear error."""

from __future__ import annotations

import asyncio
import random
import time

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.micro import add_service
from nats.micro.request import Request, ServiceError

from services.api.scheduler_client import SchedulerClient
from services.api.scheduler_errors import SchedulerError, SchedulerUnavailable
from shared.subjects import Subjects

pytestmark = pytest.mark.integration


async def test_concurrent_calls_each_get_their_own_reply(nc: NATS, prefix: str) -> None:
    subjects = Subjects(prefix)

    pending: set[asyncio.Task[None]] = set()

    async def echo(msg: Msg) -> None:
        await asyncio.sleep(random.random() / 20)  # replies come back out of order
        await msg.respond(b"re:" + msg.data)

    async def on_request(msg: Msg) -> None:
        task = asyncio.create_task(echo(msg))
        pending.add(task)
        task.add_done_callback(pending.discard)

    await nc.subscribe(subjects.route, cb=on_request)
    client = SchedulerClient(nc, subjects, 5.0)
    payloads = [f"call-{i}".encode() for i in range(50)]
    replies = await asyncio.gather(*(client.call(subjects.route, p) for p in payloads))
    assert replies == [b"re:" + p for p in payloads], replies
    assert not client._waiting, f"replies still awaited: {list(client._waiting)}"


async def test_no_replica_is_unavailable_at_once(nc: NATS, prefix: str) -> None:
    client = SchedulerClient(nc, Subjects(prefix), 10.0)
    started = time.monotonic()
    with pytest.raises(SchedulerUnavailable) as info:
        await client.call(Subjects(prefix).route, b"{}")
    waited = time.monotonic() - started
    assert str(info.value) == "NoRespondersError", info.value
    assert waited < 5, f"took {waited:.1f}s: waited for the timeout instead"


async def test_a_silent_replica_times_out(nc: NATS, prefix: str) -> None:
    subjects = Subjects(prefix)

    async def silent(msg: Msg) -> None:
        pass

    await nc.subscribe(subjects.route, cb=silent)
    client = SchedulerClient(nc, subjects, 5.0)
    started = time.monotonic()
    with pytest.raises(SchedulerUnavailable) as info:
        await client.call(subjects.route, b"{}", 0.3)
    waited = time.monotonic() - started
    assert str(info.value) == "TimeoutError", info.value
    assert 0.25 <= waited < 10, waited
    assert not client._waiting, f"a timed-out call is still awaited: {list(client._waiting)}"


async def test_a_refusal_carries_its_code_and_message(nc: NATS, prefix: str) -> None:
    subjects = Subjects(prefix)

    async def refuse(req: Request) -> None:
        raise ServiceError("404", "pool p:Common is unknown")

    service = await add_service(nc, name=subjects.scheduler_service, version="0.1.0",
                                queue_group=subjects.scheduler_queue)
    group = service.add_group(name=subjects.scheduler_group,
                              queue_group=subjects.scheduler_queue)
    await group.add_endpoint(name="status", handler=refuse)
    client = SchedulerClient(nc, subjects, 5.0)
    with pytest.raises(SchedulerError) as info:
        await client.status("p", "Common")
    assert (info.value.code, info.value.message) == (404, "pool p:Common is unknown"), info.value
    await service.stop()
