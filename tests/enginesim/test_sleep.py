"""vLLM's sleep API: the captured cycle, queued requests, level-2 aborts, sleep metrics."""

from __future__ import annotations

import asyncio
import time

import httpx

from services.enginesim.launcher import RunningEngine
from tests.enginesim.conftest import fixture_json, fixture_text, shape
from tests.enginesim.test_metrics import headers_of, samples

BASE = '{engine="0",model_name="tiny",sleep_state="%s"}'


async def _wait_state(http: httpx.AsyncClient, key: str, count: int,
                      timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = (await http.get("/_sim/state")).json()
        if state[key] >= count:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"never {count} {key} within {timeout_s}s: {state}")


async def _wait_queued(http: httpx.AsyncClient, count: int) -> None:
    await _wait_state(http, "waiting", count)


async def test_sleep_wake_cycle_matches_capture(engine: RunningEngine) -> None:
    bodies = fixture_json("vllm_bodies.json")
    request = fixture_json("vllm_requests.json")["chat_completion"]
    async with httpx.AsyncClient(base_url=engine.url, timeout=10) as http:
        before = await http.get("/is_sleeping")
        assert before.json() == bodies["sleep_is_sleeping_before"]
        slept = await http.post("/sleep", params={"level": 1})
        assert slept.status_code == 200 and slept.json() == bodies["sleep_level1"]
        assert (await http.get("/is_sleeping")).json() == bodies["sleep_is_sleeping_after_sleep"]
        assert (await http.get("/health")).status_code == 200
        assert (await http.get("/v1/models")).status_code == 200
        metrics = (await http.get("/metrics")).text
        values = samples(metrics)
        assert values["vllm:engine_sleep_state" + BASE % "awake"] == 0
        assert values["vllm:engine_sleep_state" + BASE % "weights_offloaded"] == 1
        captured = fixture_text("metrics_after_sleep.prom")
        sleep_families = [h for h in headers_of(captured) if "sleep_mode" in h]
        assert [h for h in headers_of(metrics) if "sleep_mode" in h] == sleep_families

        pending = asyncio.ensure_future(http.post("/v1/chat/completions", json=request))
        await _wait_queued(http, 1)
        await asyncio.sleep(0.1)
        assert not pending.done(), "a request must wait while the engine sleeps"
        woke = await http.post("/wake_up")
        assert woke.json() == bodies["sleep_wake_up"]
        served = await asyncio.wait_for(pending, 30)
        assert served.status_code == 200
        assert shape(served.json()) == shape(bodies["sleep_chat_queued_then_woken"])
        assert served.json()["usage"] == bodies["sleep_chat_queued_then_woken"]["usage"]
        assert (await http.get("/is_sleeping")).json() == {"is_sleeping": False}


async def test_level2_sleep_aborts_queued_requests(engine: RunningEngine) -> None:
    bodies = fixture_json("vllm_bodies.json")
    expected = bodies["sleep_chat_queued_then_aborted_by_sleep_level2"]
    request = fixture_json("vllm_requests.json")["chat_completion"]
    async with httpx.AsyncClient(base_url=engine.url, timeout=10) as http:
        await http.post("/sleep", params={"level": 1})
        pending = asyncio.ensure_future(http.post("/v1/chat/completions", json=request))
        stream = asyncio.ensure_future(http.post("/v1/chat/completions", json={
            **request, "stream": True, "stream_options": {"include_usage": True}}))
        await _wait_queued(http, 2)
        deep = await http.post("/sleep", params={"level": 2})
        assert deep.json() == bodies["sleep_level2"]
        aborted = await asyncio.wait_for(pending, 30)
        assert aborted.status_code == 200
        assert shape(aborted.json()) == shape(expected)
        choice = aborted.json()["choices"][0]
        assert choice["finish_reason"] == "abort" and choice["message"]["content"] == ""
        assert aborted.json()["usage"] == expected["usage"]
        streamed = (await asyncio.wait_for(stream, 30)).text
        assert '"finish_reason":"abort"' in streamed and streamed.endswith("data: [DONE]\n\n")
        values = samples((await http.get("/metrics")).text)
        assert values["vllm:engine_sleep_state" + BASE % "discard_all"] == 1
        assert values['vllm:request_success_total{engine="0",finished_reason="abort",'
                      'model_name="tiny"}'] == 2
        await http.post("/wake_up")
        assert (await http.post("/v1/chat/completions", json=request)).status_code == 200


async def test_wake_by_tags_needs_both_parts(engine: RunningEngine) -> None:
    async with httpx.AsyncClient(base_url=engine.url, timeout=10) as http:
        await http.post("/sleep")
        first = await http.post("/wake_up", params={"tags": "weights"})
        assert first.json() == {"status": "awake", "tags": ["weights"]}
        assert (await http.get("/is_sleeping")).json()["is_sleeping"] is True
        await http.post("/wake_up", params={"tags": "kv_cache"})
        assert (await http.get("/is_sleeping")).json()["is_sleeping"] is False


async def test_running_requests_survive_a_level1_sleep(engine: RunningEngine) -> None:
    # As long an answer as the model allows, so it is still running when the sleep arrives.
    request = {"model": "tiny", "prompt": "long answer", "max_tokens": 500}
    async with httpx.AsyncClient(base_url=engine.url, timeout=30) as http:
        pending = asyncio.ensure_future(http.post("/v1/completions", json=request))
        await _wait_state(http, "running", 1)
        await http.post("/sleep", params={"level": 1})
        await asyncio.sleep(0.05)
        assert not pending.done()
        await http.post("/wake_up")
        reply = await asyncio.wait_for(pending, 30)
    assert reply.json()["usage"]["completion_tokens"] == 500
    assert reply.json()["choices"][0]["finish_reason"] == "length"
