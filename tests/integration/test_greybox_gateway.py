"""Greybox through the real gateway: admission holds requests while every member is full,
then serves them; a full line answers 429 with Retry-After; status shows predictions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from services.enginesim.config import EngineConfig
from services.enginesim.launcher import RunningEngine, start_engine
from tests.integration.fleet import Fleet, MakeFleet
from tests.integration.system import wait_until

pytestmark = pytest.mark.integration

ENGINE = EngineConfig(model="/models/tiny", served_model_name=("gb",), max_model_len=4096,
                      max_num_seqs=4, num_gpu_blocks=4096, speed=1.0, seed=3)


@pytest.fixture
async def engines() -> AsyncIterator[list[RunningEngine]]:
    running = [await start_engine(ENGINE) for _ in range(2)]
    yield running
    for engine in running:
        await engine.stop()


def _pool(engines: list[RunningEngine]) -> dict[str, Any]:
    return {"name": "gb-pool", "engine_type": "vllm", "source": "static", "model": "gb",
            "mode": "gb", "members": [e.url.split("//", 1)[1] for e in engines]}


async def _fleet(make_fleet: MakeFleet, engines: list[RunningEngine], *, queue: int,
                 max_inflight: int) -> Fleet:
    fleet = await make_fleet(pools=[_pool(engines)], worker=False, autoscalers=0,
                             gateway={"hold_queue_size": queue, "hold_timeout_s": 60},
                             modes=[{"name": "gb", "type": "greybox",
                                     "greybox": {"max_inflight": max_inflight}}])

    async def known() -> bool:
        r = await fleet.http.get(f"{fleet.api}/pools/gb-pool/Common/status")
        return r.status_code == 200 and r.json()["member_count"] == 2
    await wait_until(known, 20, "the greybox pool's members known")
    return fleet


def _chat(max_tokens: int) -> dict[str, Any]:
    return {"model": "gb", "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": "hello there"}]}


async def test_requests_wait_for_a_free_member_and_are_all_served(
        make_fleet: MakeFleet, engines: list[RunningEngine]) -> None:
    fleet = await _fleet(make_fleet, engines, queue=50, max_inflight=1)
    async with httpx.AsyncClient(timeout=120) as http:
        results = await asyncio.gather(*(http.post(f"{fleet.api}/v1/chat/completions",
                                                   json=_chat(40)) for _ in range(6)))
    assert [r.status_code for r in results] == [200] * 6, [r.text[:200] for r in results]
    status = (await fleet.http.get(f"{fleet.api}/pools/gb-pool/Common/status")).json()
    for member in status["members"]:
        # Never more than max_inflight on one engine: the rest waited at the router.
        assert member["greybox"]["limit"] == 1, member
        assert member["inflight"] == 0, member
    assert status["selections"].get("busy", 0) > 0, status["selections"]


async def test_a_full_line_answers_429_with_retry_after(
        make_fleet: MakeFleet, engines: list[RunningEngine]) -> None:
    fleet = await _fleet(make_fleet, engines, queue=1, max_inflight=1)
    async with httpx.AsyncClient(timeout=120) as http:
        results = await asyncio.gather(*(http.post(f"{fleet.api}/v1/chat/completions",
                                                   json=_chat(200)) for _ in range(6)))
    codes = sorted(r.status_code for r in results)
    assert codes.count(200) >= 3 and 429 in codes, [(r.status_code, r.text[:120])
                                                     for r in results]
    refused = next(r for r in results if r.status_code == 429)
    assert int(refused.headers["retry-after"]) >= 1, refused.headers
    assert refused.json()["error"]["code"] == "queue_full", refused.text
