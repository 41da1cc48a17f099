"""``gateway.decide: local``: the API routes its gateway requests with its own copy of the
scheduling core. Requests are served and spread, the scheduler replicas still count them in
flight (selection events), and the gateway keeps serving with every scheduler replica gone."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest

from services.enginesim.config import EngineConfig
from services.enginesim.launcher import RunningEngine
from tests.integration.fleet import Fleet, MakeFleet
from tests.integration.system import engines_running, wait_until

pytestmark = pytest.mark.integration

ENGINE = EngineConfig(model="/models/tiny", served_model_name=("lc",), max_model_len=4096,
                      max_num_seqs=8, num_gpu_blocks=4096, speed=1.0, seed=5)
POOL = "lc-pool"


@pytest.fixture
async def engines() -> AsyncIterator[list[RunningEngine]]:
    async with engines_running(ENGINE, 2) as running:
        yield running


async def _fleet(make_fleet: MakeFleet, engines: list[RunningEngine]) -> Fleet:
    pool = {"name": POOL, "engine_type": "vllm", "source": "static", "model": "lc",
            "members": [e.url.split("//", 1)[1] for e in engines]}
    # Stale after 2 s rather than 3 x 200 ms: with a core busy, one late scrape round left
    # both members without fresh metrics and requests were refused (no_metrics).
    fleet = await make_fleet(pools=[pool], worker=False, autoscalers=0,
                             gateway={"decide": "local"}, stale_after_intervals=10)

    async def known() -> bool:
        r = await fleet.http.get(f"{fleet.api}/pools/{POOL}/Common/status")
        return r.status_code == 200 and r.json()["member_count"] == 2
    await wait_until(known, 20, "the pool's members known")
    await _routable(fleet)
    return fleet


async def _routable(fleet: Fleet) -> None:
    """Until the API's own view has the members' metrics (before the first scrape reaches
    it, a decision answers ``no_metrics``, as a scheduler replica's would)."""
    seen: list[str] = []

    async def ok() -> bool:
        r = await fleet.http.post(f"{fleet.api}/v1/chat/completions", json={
            "model": "lc", "max_tokens": 1, "messages": [{"role": "user", "content": "up?"}]})
        seen.append(f"{r.status_code} {r.text[:120]}")
        return r.status_code == 200
    try:
        await wait_until(ok, 20, "the gateway to route")
    except AssertionError as err:
        raise AssertionError(f"{err}; last answers: {seen[-3:]}") from None


async def _served(engine: RunningEngine) -> float:
    """The engine's own count of requests it finished."""
    async with httpx.AsyncClient(timeout=10) as http:
        text = (await http.get(f"{engine.url}/metrics")).text
    return sum(float(m.group(1)) for m in
               re.finditer(r"^vllm:request_success_total\{[^}]*\} (\S+)$", text, re.M))


async def _inflight(fleet: Fleet) -> dict[str, Any]:
    r = await fleet.http.get(f"{fleet.api}/pools/{POOL}/Common/status")
    assert r.status_code == 200, r.text
    return {m["key"]: m["inflight"] for m in r.json()["members"]}


async def test_local_decisions_serve_spread_and_are_counted_by_the_scheduler(
        make_fleet: MakeFleet, engines: list[RunningEngine]) -> None:
    fleet = await _fleet(make_fleet, engines)
    client = openai.AsyncOpenAI(base_url=f"{fleet.api}/v1", api_key="unused", max_retries=0)
    try:
        chats = await asyncio.gather(*(client.chat.completions.create(
            model="lc", messages=[{"role": "user", "content": f"hello {i}"}], max_tokens=16)
            for i in range(10)))
        assert all(c.choices[0].message.content for c in chats), chats
        served = [await _served(e) for e in engines]
        assert sum(served) >= 11 and min(served) > 0, f"engines served {served}"

        # A long stream is in flight: the scheduler replica counts it from the API's
        # selection event, though it never took the decision.
        stream = await client.chat.completions.create(
            model="lc", messages=[{"role": "user", "content": "tell a long story"}],
            max_tokens=400, stream=True, stream_options={"include_usage": True})
        seen: list[dict[str, Any]] = []

        async def counted() -> bool:
            seen.append(await _inflight(fleet))
            return sum(seen[-1].values()) == 1
        chunks = 0
        usage = None
        reader = asyncio.ensure_future(_drain(stream))
        try:
            await wait_until(counted, 10, f"the scheduler to count the stream (saw {seen})")
        finally:
            chunks, usage = await reader
        assert chunks > 0 and usage is not None and usage.completion_tokens > 0, usage

        async def ended() -> bool:
            seen.append(await _inflight(fleet))
            return sum(seen[-1].values()) == 0
        await wait_until(ended, 10, f"the stream to leave the count (saw {seen[-3:]})")
    finally:
        await client.close()


async def _drain(stream: Any) -> tuple[int, Any]:
    chunks, usage = 0, None
    async for chunk in stream:
        chunks += 1
        if chunk.usage is not None:
            usage = chunk.usage
    return chunks, usage


async def test_local_gateway_serves_with_every_scheduler_replica_gone(
        make_fleet: MakeFleet, engines: list[RunningEngine]) -> None:
    fleet = await _fleet(make_fleet, engines)
    await fleet.stop("scheduler-1")
    client = openai.AsyncOpenAI(base_url=f"{fleet.api}/v1", api_key="unused", max_retries=0)
    try:
        for i in range(4):
            chat = await client.chat.completions.create(
                model="lc", messages=[{"role": "user", "content": f"still there {i}"}],
                max_tokens=8)
            assert chat.choices[0].message.content, chat
    finally:
        await client.close()


async def test_local_admission_line_serves_every_held_request(
        make_fleet: MakeFleet, engines: list[RunningEngine]) -> None:
    # One request per engine at a time: the rest wait in the API's admission line and are
    # woken by the in-process core's outcomes.
    pool = {"name": POOL, "engine_type": "vllm", "source": "static", "model": "lc",
            "mode": "gb", "members": [e.url.split("//", 1)[1] for e in engines]}
    fleet = await make_fleet(pools=[pool], worker=False, autoscalers=0,
                             gateway={"decide": "local", "hold_queue_size": 50,
                                      "hold_timeout_s": 60},
                             modes=[{"name": "gb", "type": "greybox",
                                     "greybox": {"max_inflight": 1}}])

    async def known() -> bool:
        r = await fleet.http.get(f"{fleet.api}/pools/{POOL}/Common/status")
        return r.status_code == 200 and r.json()["member_count"] == 2
    await wait_until(known, 20, "the pool's members known")
    await _routable(fleet)
    body = {"model": "lc", "max_tokens": 30, "messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(timeout=120) as http:
        results = await asyncio.gather(*(http.post(f"{fleet.api}/v1/chat/completions",
                                                   json=body) for _ in range(6)))
    assert [r.status_code for r in results] == [200] * 6, [r.text[:200] for r in results]
    served = [await _served(e) for e in engines]
    assert sum(served) == 7, f"engines served {served} (6 and the readiness probe)"
    assert all(v == 0 for v in (await _inflight(fleet)).values()), await _inflight(fleet)
