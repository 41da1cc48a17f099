"""Run-time fault injection, disaggregated prefill/decode roles and the SGLang flavour."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from services.enginesim.launcher import RunningEngine
from tests.enginesim.conftest import TINY, StartEngine
from tests.enginesim.test_metrics import samples

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


async def test_error_rate_latency_and_reset(engine: RunningEngine) -> None:
    async with httpx.AsyncClient(base_url=engine.url, timeout=10) as http:
        reply = await http.post("/_sim/faults", json={"error_rate": 1.0})
        assert reply.json()["error_rate"] == 1.0
        failed = await http.post("/v1/chat/completions", json=CHAT)
        assert failed.status_code == 500
        assert set(failed.json()["error"]) == {"message", "type", "param", "code"}
        assert failed.json()["error"]["code"] == 500
        await http.post("/_sim/faults", json={"reset": True, "latency_ms": 150})
        start = time.perf_counter()
        assert (await http.post("/v1/chat/completions", json=CHAT)).status_code == 200
        assert time.perf_counter() - start >= 0.15
        await http.post("/_sim/faults", json={"reset": True})
        assert (await http.get("/_sim/faults")).json()["latency_ms"] == 0


@pytest.mark.parametrize("patch", [{"error_rate": 2}, {"nope": 1}, {"hang": "yes"},
                                   {"crash": "boom"}, {"latency_ms": -1}])
async def test_bad_fault_settings_are_rejected(engine: RunningEngine, patch: dict[str, object]
                                               ) -> None:
    async with httpx.AsyncClient(base_url=engine.url, timeout=10) as http:
        reply = await http.post("/_sim/faults", json=patch)
    assert reply.status_code == 400
    assert next(iter(patch)) in reply.json()["error"]


async def test_hang_unhealthy_and_failing_metrics(engine: RunningEngine) -> None:
    async with httpx.AsyncClient(base_url=engine.url, timeout=10) as http:
        await http.post("/_sim/faults", json={"hang": True, "unhealthy": True,
                                              "metrics_error_rate": 1.0})
        with pytest.raises(httpx.ReadTimeout):  # only the answer is bounded short: it never comes
            await http.post("/v1/chat/completions", json=CHAT,
                            timeout=httpx.Timeout(30, read=1.0))
        assert (await http.get("/health")).status_code == 503
        assert (await http.get("/metrics")).status_code == 500
        await http.post("/_sim/faults", json={"reset": True})
        assert (await http.get("/health")).status_code == 200
        assert (await http.post("/v1/chat/completions", json=CHAT)).status_code == 200


async def test_crash_close_drops_the_server(start: StartEngine) -> None:
    engine = await start()
    async with httpx.AsyncClient(base_url=engine.url, timeout=30) as http:
        assert (await http.post("/_sim/faults", json={"crash": "close"})).status_code == 200
        await asyncio.wait_for(engine.server.task, 30)
        with pytest.raises(httpx.TransportError):
            await http.get("/health")


async def test_prefill_then_decode_with_kv_transfer_params(start: StartEngine) -> None:
    prefill = await start(TINY, role="prefill")
    decode = await start(TINY, role="decode", seed=8)
    prompt = "shared context " * 60
    async with httpx.AsyncClient(timeout=10) as http:
        first = await http.post(prefill.url + "/v1/completions", json={
            "model": "tiny", "prompt": prompt, "max_tokens": 1,
            "kv_transfer_params": {"do_remote_decode": True, "do_remote_prefill": False,
                                   "remote_engine_id": None, "remote_block_ids": None,
                                   "remote_host": None, "remote_port": None}})
        params = first.json()["kv_transfer_params"]
        assert params["do_remote_prefill"] is True and params["do_remote_decode"] is False
        assert len(params["remote_block_ids"]) == 122 // 16
        assert params["remote_port"] == prefill.server.port
        assert first.json()["usage"]["completion_tokens"] == 1
        second = await http.post(decode.url + "/v1/completions", json={
            "model": "tiny", "prompt": prompt, "max_tokens": 8, "kv_transfer_params": params})
        assert second.json()["usage"]["completion_tokens"] == 8
        assert second.json()["kv_transfer_params"] is None
        values = samples((await http.get(decode.url + "/metrics")).text)
    base = 'engine="0",model_name="tiny"'
    assert values['vllm:prompt_tokens_by_source_total{' + base + ',source="external_kv_transfer"}'
                  ] == 7 * 16
    assert values['vllm:prompt_tokens_by_source_total{' + base + ',source="local_compute"}'
                  ] == 122 - 7 * 16
    assert values["vllm:external_prefix_cache_hits_total{" + base + "}"] == 7 * 16


async def test_sglang_flavour(start: StartEngine) -> None:
    engine = await start(TINY, engine="sglang")
    async with httpx.AsyncClient(base_url=engine.url, timeout=10) as http:
        assert (await http.post("/v1/chat/completions", json=CHAT)).status_code == 200
        reply = await http.get("/metrics")
        assert reply.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        values = samples(reply.text)
        labels = '{engine_type="unified",model_name="tiny",pp_rank="0",tp_rank="0"}'
        for name in ("sglang:num_running_reqs", "sglang:num_queue_reqs", "sglang:token_usage",
                     "sglang:cache_hit_rate", "sglang:gen_throughput", "sglang:num_used_tokens",
                     "sglang:max_total_num_tokens"):
            assert name + labels in values, name
        assert values["sglang:generation_tokens_total" + labels] == 2
        assert values["sglang:time_to_first_token_seconds_count" + labels] == 1
        assert "_created" not in reply.text
        assert (await http.post("/sleep")).status_code == 404
        assert (await http.post("/release_memory_occupation", json={})).status_code == 200
        pending = asyncio.ensure_future(http.post("/v1/chat/completions", json=CHAT))
        await asyncio.sleep(0.1)
        assert not pending.done()
        assert (await http.post("/resume_memory_occupation", json={})).status_code == 200
        assert (await asyncio.wait_for(pending, 30)).status_code == 200
        error = await http.post("/v1/chat/completions", json={**CHAT, "model": "nope"})
        assert error.status_code == 404 and error.json()["object"] == "error"


async def test_stop_cuts_hung_clients(start: StartEngine) -> None:
    engine = await start()
    async with httpx.AsyncClient(base_url=engine.url, timeout=30) as http:
        await http.post("/_sim/faults", json={"hang": True})
        pending = asyncio.ensure_future(http.post("/v1/chat/completions", json=CHAT))
        await asyncio.sleep(0.1)
        began = time.perf_counter()
        await engine.stop(grace=0.3)
        # The hang never ends by itself: any bound shows the stop did not wait for it.
        assert time.perf_counter() - began < 20
        with pytest.raises(httpx.TransportError):
            await asyncio.wait_for(pending, 30)
