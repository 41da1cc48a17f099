"""Greybox through the real gateway: admission holds requests while every member is full,
then serves them; a full line answers 429 with Retry-After; status shows predictions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from services.enginesim.config import EngineConfig
from services.enginesim.launcher import RunningEngine
from tests.integration.fleet import Fleet, MakeFleet
from tests.integration.system import engines_running, wait_until

pytestmark = pytest.mark.integration

ENGINE = EngineConfig(model="/models/tiny", served_model_name=("gb",), max_model_len=4096,
                      max_num_seqs=4, num_gpu_blocks=4096, speed=1.0, seed=3)


@pytest.fixture
async def engines() -> AsyncIterator[list[RunningEngine]]:
    async with engines_running(ENGINE, 2) as running:
        yield running


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
    status: dict[str, Any] = {}

    async def busy_counted() -> bool:
        # The API decides (gateway.decide: local) and adds its answers to the fleet-wide
        # counts every half second; the scheduler's status reads them back as often.
        status.update((await fleet.http.get(f"{fleet.api}/pools/gb-pool/Common/status")).json())
        return status["selections"].get("busy", 0) > 0
    await wait_until(busy_counted, 10, "busy answers in the status's selection counts")
    assert status["selections_scope"] == "fleet", status
    for member in status["members"]:
        # Never more than max_inflight on one engine: the rest waited at the router.
        assert member["greybox"]["limit"] == 1, member
        assert member["inflight"] == 0, member
    r = await fleet.http.get(f"{fleet.api}/pools/gb-pool/Common/records?limit=100")
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson", r.text
    rows = [line for line in r.text.splitlines() if line]
    assert len(rows) == 6, r.text
    assert '"ttft_s"' in rows[0] and '"inflight"' in rows[0], rows[0]
    r = await fleet.http.get(f"{fleet.api}/pools/gb-pool/Common/records?limit=0")
    assert r.status_code == 400 and r.json()["error"]["param"] == "limit", r.text


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


async def _faults(url: str, **patch: Any) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.post(f"{url}/_sim/faults", json=patch)
        assert r.status_code == 200, r.text


async def _status(fleet: Fleet) -> dict[str, Any]:
    r = await fleet.http.get(f"{fleet.api}/pools/gb-pool/Common/status")
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


async def test_a_failing_member_is_circuit_broken_and_comes_back(
        make_fleet: MakeFleet, engines: list[RunningEngine]) -> None:
    fleet = await _fleet(make_fleet, engines, queue=50, max_inflight=4)
    bad, bad_key = engines[0], engines[0].url.split("//", 1)[1]
    await _faults(bad.url, error_rate=1.0)
    async with httpx.AsyncClient(timeout=120) as http:
        async def opened() -> bool:
            # Each failure before the first byte is retried elsewhere: the client sees 200.
            r = await http.post(f"{fleet.api}/v1/chat/completions", json=_chat(4))
            assert r.status_code == 200, r.text
            members = {m["key"]: m for m in (await _status(fleet))["members"]}
            return bool(members[bad_key]["greybox"]["circuit"] == "open")
        try:
            await wait_until(opened, 60, "the failing member's circuit open")
        except AssertionError as err:
            raise AssertionError(f"{err}: {await _status(fleet)}") from None
        await _faults(bad.url, error_rate=0.0)
        # Closed again after the open interval and successful trials (open_s is 30 by default).
        async def closed() -> bool:
            await http.post(f"{fleet.api}/v1/chat/completions", json=_chat(4))
            members = {m["key"]: m for m in (await _status(fleet))["members"]}
            return bool(members[bad_key]["greybox"]["circuit"] == "closed")
        await wait_until(closed, 90, "the member back after its circuit closed")


async def test_a_member_whose_metrics_fail_keeps_its_share(
        make_fleet: MakeFleet, engines: list[RunningEngine]) -> None:
    """No death spiral onto or away from it: the router's own counts still route it."""
    fleet = await _fleet(make_fleet, engines, queue=50, max_inflight=2)
    dark = engines[0].url.split("//", 1)[1]
    await _faults(engines[0].url, metrics_error_rate=1.0)

    async def stale() -> bool:
        members = {m["key"]: m for m in (await _status(fleet))["members"]}
        return bool(members[dark]["stale"])
    await wait_until(stale, 20, "the member's metrics stale")
    before = {m["key"]: m["selections"] for m in (await _status(fleet))["members"]}
    async with httpx.AsyncClient(timeout=120) as http:
        results = await asyncio.gather(*(http.post(f"{fleet.api}/v1/chat/completions",
                                                   json=_chat(30)) for _ in range(16)))
    assert [r.status_code for r in results] == [200] * 16, [r.text[:200] for r in results]
    after: dict[str, int] = {}

    async def counted() -> bool:
        # The deciding API adds its answers to the fleet-wide counts every half second.
        after.update({m["key"]: m["selections"] for m in (await _status(fleet))["members"]})
        return sum(after.values()) - sum(before.values()) >= 16
    await wait_until(counted, 10, f"16 more selections counted (before: {before})")
    share = (after[dark] - before.get(dark, 0)) / 16
    assert 0.2 <= share <= 0.8, f"the dark member took {share:.0%} of 16 requests: {after}"
