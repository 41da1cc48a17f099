"""A prefill engine holds a request's KV until its decode pulls it, or until the lease ends."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from services.enginesim.kvcache import BlockPool
from services.enginesim.kvhold import HeldKV, release_target
from tests.enginesim.conftest import TINY, StartEngine

PREFILL_KV = {"do_remote_decode": True, "do_remote_prefill": False, "remote_engine_id": None,
              "remote_block_ids": None, "remote_host": None, "remote_port": None}
PROMPT = "shared context " * 60


async def _state(http: httpx.AsyncClient, url: str) -> dict[str, Any]:
    state: dict[str, Any] = (await http.get(url + "/_sim/state")).json()
    return state


async def _until(check: Any, what: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_held_blocks_stay_allocated_until_released_or_expired() -> None:
    pool = BlockPool(8)
    held = HeldKV(pool, lease_s=5.0)
    blocks = pool.allocate(3)
    held.hold("r1", blocks, now=100.0)
    pool.release(blocks)  # the finished request lets go; the hold keeps them
    assert pool.num_free == 5 and len(held) == 1
    assert held.next_expiry() == 105.0
    assert held.expire(104.9) == 0 and pool.num_free == 5
    assert held.release("r1") and pool.num_free == 8
    assert not held.release("r1")  # once
    other = pool.allocate(2)
    held.hold("r2", other, now=0.0)
    pool.release(other)
    assert held.expire(5.0) == 1 and pool.num_free == 8 and held.expired == 1


def test_release_target_needs_the_prefills_address_and_id() -> None:
    params = {"do_remote_prefill": True, "remote_host": "127.0.0.1", "remote_port": 8000,
              "remote_request_id": "abc"}
    assert release_target(params) == ("127.0.0.1", 8000, "abc")
    assert release_target({**params, "do_remote_prefill": False}) is None
    assert release_target({**params, "remote_request_id": None}) is None


async def test_the_decode_pulling_the_kv_frees_it_on_the_prefill(start: StartEngine) -> None:
    prefill = await start(TINY, role="prefill")
    decode = await start(TINY, role="decode", seed=8)
    async with httpx.AsyncClient(timeout=10) as http:
        first = await http.post(prefill.url + "/v1/completions", json={
            "model": "tiny", "prompt": PROMPT, "max_tokens": 1,
            "kv_transfer_params": PREFILL_KV})
        params = first.json()["kv_transfer_params"]
        assert params["remote_request_id"], params
        held = await _state(http, prefill.url)
        assert held["kv_held"] == 1 and held["kv_usage"] > 0, held
        second = await http.post(decode.url + "/v1/completions", json={
            "model": "tiny", "prompt": PROMPT, "max_tokens": 4, "stream": True,
            "kv_transfer_params": params})
        assert second.status_code == 200, second.text

        async def freed() -> bool:
            state = await _state(http, prefill.url)
            return bool(state["kv_held"] == 0 and state["kv_usage"] == 0)
        await _until(freed, "the prefill to free the pulled KV")


async def test_kv_nobody_pulls_is_freed_when_the_lease_ends(start: StartEngine) -> None:
    prefill = await start(TINY, role="prefill", kv_lease_s=0.5)
    async with httpx.AsyncClient(timeout=10) as http:
        first = await http.post(prefill.url + "/v1/chat/completions", json={
            "model": "tiny", "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": 1, "kv_transfer_params": PREFILL_KV})
        assert first.json()["kv_transfer_params"]["remote_request_id"], first.text
        assert (await _state(http, prefill.url))["kv_held"] == 1

        async def expired() -> bool:
            state = await _state(http, prefill.url)
            return bool(state["kv_held"] == 0 and state["kv_usage"] == 0)
        await _until(expired, "the lease to free the KV")


async def test_a_release_for_an_unknown_request_is_harmless(start: StartEngine) -> None:
    prefill = await start(TINY, role="prefill")
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.post(prefill.url + "/_sim/kv/release", json={"request_id": "nope"})
        assert r.status_code == 200 and r.json() == {"request_id": "nope", "released": False}
        bad = await http.post(prefill.url + "/_sim/kv/release", json={"request_id": 3})
        assert bad.status_code == 400, bad.text
