"""The API's select and route calls ride out a moment with no scheduler subscribed.

When the NATS node every scheduler replica is connected to dies, the server answers
"no responders" at once until the replicas have reconnected to another node and
subscribed again. A select or route asked in that gap is asked again after a short pause
until the select budget ends; only then is it unavailable.
"""

from __future__ import annotations

import asyncio

import msgspec
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from services.api.gateway.bus import NatsRouter
from services.api.gateway.proxy import RouterUnavailable
from services.api.scheduler_client import SchedulerClient
from services.api.scheduler_errors import SchedulerUnavailable
from shared.routing import RouteReply, RouteRequest
from shared.subjects import Subjects

pytestmark = pytest.mark.integration

GAP_S = 0.3
"""How long no replica is subscribed."""


async def _replica_after(nc: NATS, subject: str, delay_s: float, answer: bytes) -> None:
    """A replica that subscribes only after ``delay_s`` (it was reconnecting)."""
    await asyncio.sleep(delay_s)

    async def respond(msg: Msg) -> None:
        await msg.respond(answer)

    await nc.subscribe(subject, cb=respond)
    await nc.flush()


async def test_a_select_asked_while_no_replica_is_subscribed_is_answered_when_one_is(
        nc: NATS, nats_url: str, prefix: str) -> None:
    subjects = Subjects(prefix)
    other = await nats.connect(nats_url)
    try:
        client = SchedulerClient(nc, subjects, 5.0)
        late = asyncio.create_task(_replica_after(other, subjects.select, GAP_S,
                                                  b'{"answer": "10.0.0.1:8000"}'))
        answer = await client.select(b'{"pool_name": "p"}')
        await late
        assert answer == "10.0.0.1:8000", answer
    finally:
        await other.drain()


async def test_a_route_asked_while_no_replica_is_subscribed_is_answered_when_one_is(
        nc: NATS, nats_url: str, prefix: str) -> None:
    subjects = Subjects(prefix)
    other = await nats.connect(nats_url)
    reply = RouteReply(answer="10.0.0.1:8000", url="http://10.0.0.1:8000", active=1)
    try:
        router = NatsRouter(SchedulerClient(nc, subjects, 5.0))
        late = asyncio.create_task(_replica_after(other, subjects.route, GAP_S,
                                                  msgspec.json.encode(reply)))
        got = await router.route(RouteRequest(request_id="r1", pool="m", partition="@models"))
        await late
        assert got.answer == "10.0.0.1:8000", got
    finally:
        await other.drain()


async def test_with_no_replica_at_all_a_select_is_unavailable_within_its_budget(
        nc: NATS, prefix: str) -> None:
    client = SchedulerClient(nc, Subjects(prefix), 0.5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(SchedulerUnavailable) as info:
        await client.select(b'{"pool_name": "p"}')
    waited = loop.time() - started
    assert str(info.value) == "NoRespondersError", info.value
    assert waited < 5, f"took {waited:.1f}s for a 0.5 s budget"
    router = NatsRouter(SchedulerClient(nc, Subjects(prefix), 0.5))
    with pytest.raises(RouterUnavailable):
        await router.route(RouteRequest(request_id="r2", pool="m", partition="@models"))
