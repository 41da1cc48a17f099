"""Selection and outcome events through real services: every scheduler replica counts what
another routed and drops what the gateway reports ended, whether events come one by one or
batched (several ending in one pass of a process's event loop go out as one message)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import httpx
import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from services.api.scheduler_client import SchedulerClient
from services.enginesim.config import EngineConfig
from services.enginesim.launcher import RunningEngine
from shared.bus import EventBatch
from shared.routing import OutcomeEvent
from shared.subjects import Subjects
from tests.integration.fleet import MakeFleet
from tests.integration.system import engines_running, wait_until

pytestmark = pytest.mark.integration

ENGINE = EngineConfig(model="/models/tiny", served_model_name=("lean",), max_model_len=8192,
                      max_num_seqs=64, num_gpu_blocks=8192, speed=0.5, seed=5)
STREAMS = 8


@pytest.fixture
async def engines() -> AsyncIterator[list[RunningEngine]]:
    async with engines_running(ENGINE, 2) as running:
        yield running


def _outcome(n: int) -> OutcomeEvent:
    return OutcomeEvent(request_id=f"r-{n}", pool="p", partition="Common", member="m:1",
                        status=200)


async def _received(nc: NATS, subject: str) -> list[tuple[float, bytes]]:
    """Every message on ``subject`` from now on, with its arrival time (monotonic)."""
    arrivals: list[tuple[float, bytes]] = []

    async def collect(msg: Msg) -> None:
        arrivals.append((time.monotonic(), msg.data))

    await nc.subscribe(subject, cb=collect)
    await nc.flush()
    return arrivals


async def test_events_of_one_loop_pass_leave_as_one_message(nc: NATS, prefix: str) -> None:
    subject = Subjects(prefix).request_outcome
    arrivals = await _received(nc, subject)
    batch = EventBatch[OutcomeEvent](nc, subject, "outcome event(s)")
    for n in range(3):
        batch.add(_outcome(n))
    await asyncio.sleep(0.05)  # a later pass, past the pace (1 ms): its own message
    batch.add(_outcome(3))
    await wait_until(lambda: _at_least(arrivals, 2), 10, "two messages")
    messages = [m for _, m in arrivals]
    decode = msgspec.json.Decoder(OutcomeEvent | list[OutcomeEvent]).decode
    first, second = (decode(m) for m in messages)
    assert isinstance(first, list) and [o.request_id for o in first] == ["r-0", "r-1", "r-2"], \
        messages
    assert isinstance(second, OutcomeEvent) and second.request_id == "r-3", messages
    assert len(messages) == 2, messages


async def test_events_within_the_pace_of_the_last_message_wait_and_leave_together(
        nc: NATS, prefix: str) -> None:
    subject = Subjects(prefix).request_outcome
    arrivals = await _received(nc, subject)
    pace = 0.3
    batch = EventBatch[OutcomeEvent](nc, subject, "outcome event(s)", pace_s=pace)
    batch.add(_outcome(0))  # nothing sent before: leaves at the next pass
    for n in (1, 2):  # later passes, within the pace: they wait for it
        await asyncio.sleep(0.01)
        batch.add(_outcome(n))
    await wait_until(lambda: _at_least(arrivals, 2), 10, "two messages")
    decode = msgspec.json.Decoder(OutcomeEvent | list[OutcomeEvent]).decode
    (first_at, first), (second_at, second) = arrivals[:2]
    assert decode(first) == _outcome(0), arrivals
    paced = decode(second)
    assert isinstance(paced, list) and [o.request_id for o in paced] == ["r-1", "r-2"], arrivals
    # A lower bound only: a busy machine makes the second message later, never earlier.
    assert second_at - first_at >= pace * 0.8, arrivals
    await asyncio.sleep(0.05)
    assert len(arrivals) == 2, arrivals


async def test_closing_a_batch_publishes_the_events_waiting_for_their_pace(
        nc: NATS, prefix: str) -> None:
    subject = Subjects(prefix).request_outcome
    arrivals = await _received(nc, subject)
    batch = EventBatch[OutcomeEvent](nc, subject, "outcome event(s)", pace_s=600)
    batch.add(_outcome(0))
    await wait_until(lambda: _at_least(arrivals, 1), 10, "the first message")
    batch.add(_outcome(1))  # waits up to 10 minutes for its pace...
    await batch.close()  # ...unless the batch closes (a service stopping)
    await nc.flush()
    await wait_until(lambda: _at_least(arrivals, 2), 10, "the waiting event, at close")
    decode = msgspec.json.Decoder(OutcomeEvent | list[OutcomeEvent]).decode
    assert decode(arrivals[1][1]) == _outcome(1), arrivals


async def _at_least(items: list[tuple[float, bytes]], n: int) -> bool:
    return len(items) >= n


async def test_every_replica_counts_requests_routed_by_another_and_their_batched_ends(
        make_fleet: MakeFleet, engines: list[RunningEngine], nc: NATS, prefix: str) -> None:
    pool = {"name": "lean-pool", "engine_type": "vllm", "source": "static", "model": "lean",
            "members": [e.url.split("//", 1)[1] for e in engines]}
    fleet = await make_fleet(pools=[pool], worker=False, autoscalers=0, schedulers=2)
    client = SchedulerClient(nc, Subjects(prefix), 5.0)
    seen: dict[str, int] = {}


    async def every_replica_counts(n: int) -> bool:
        # The status call goes to either replica: ask until both answered with ``n``.
        reply = await client.status("lean-pool", "Common")
        seen[reply.replica] = sum(m.inflight for m in reply.pools[0].members)
        return len(seen) == 2 and all(count == n for count in seen.values())

    async def scored() -> bool:
        r = await fleet.http.get(f"{fleet.api}/pools/lean-pool/Common/status")
        return r.status_code == 200 and all(not m["stale"] for m in r.json()["members"])
    await wait_until(scored, 30, "both engines scraped")

    body = {"model": "lean", "max_tokens": 4000, "stream": True,
            "messages": [{"role": "user", "content": "tell me a long story"}]}
    readers: list[AsyncIterator[bytes]] = []  # kept: a dropped one closes its stream
    async with contextlib.AsyncExitStack() as streams:
        http = await streams.enter_async_context(httpx.AsyncClient(timeout=60))
        for _ in range(STREAMS):
            resp = await streams.enter_async_context(
                http.stream("POST", f"{fleet.api}/v1/chat/completions", json=body))
            assert resp.status_code == 200, await resp.aread()
            readers.append(resp.aiter_bytes())
            await anext(readers[-1])  # streaming: in flight until it ends
        try:
            await wait_until(lambda: every_replica_counts(STREAMS), 20,
                             f"both replicas counting {STREAMS} in flight")
        except AssertionError as err:
            raise AssertionError(f"{err}; last counts by replica: {seen}") from None
    # Every client left at once: the gateway cancels the streams and reports their ends.
    seen.clear()
    try:
        await wait_until(lambda: every_replica_counts(0), 30, "both replicas back to 0")
    except AssertionError as err:
        raise AssertionError(f"{err}; last counts by replica: {seen}") from None
