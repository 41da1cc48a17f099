"""vLLM's sleep API as vLLM 0.32.0 answers it: levels 0-2, modes abort|wait|keep, tagged
wake-ups, gauges while asleep, and the captured bodies and errors."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx

from services.enginesim.launcher import RunningEngine
from tests.enginesim.conftest import StartEngine, fixture_json, fixture_text, shape
from tests.enginesim.test_metrics import headers_of, samples

BASE = '{engine="0",model_name="tiny",sleep_state="%s"}'
RUNNING = 'vllm:num_requests_running{engine="0",model_name="tiny"}'
WAITING = 'vllm:num_requests_waiting{engine="0",model_name="tiny"}'
LONG = {"model": "tiny", "prompt": "long answer", "max_tokens": 400}


def modes(name: str) -> Any:
    """One exchange of the sleep-modes capture."""
    return fixture_json("vllm_sleep_modes.json")[name]


async def _wait_state(http: httpx.AsyncClient, key: str, count: int,
                      timeout_s: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        state = (await http.get("/_sim/state")).json()
        if state[key] >= count:
            return state
        await asyncio.sleep(0.005)
    raise AssertionError(f"never {count} {key} within {timeout_s}s: {state}")


async def _gauges(http: httpx.AsyncClient) -> tuple[float, float]:
    values = samples((await http.get("/metrics")).text)
    return values[RUNNING], values[WAITING]


async def _sleep_state(http: httpx.AsyncClient) -> dict[str, float]:
    values = samples((await http.get("/metrics")).text)
    return {s: values["vllm:engine_sleep_state" + BASE % s]
            for s in ("awake", "weights_offloaded", "discard_all")}


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
        assert await _sleep_state(http) == {"awake": 0, "weights_offloaded": 1, "discard_all": 0}
        captured = fixture_text("metrics_after_sleep.prom")
        sleep_families = [h for h in headers_of(captured) if "sleep_mode" in h]
        assert [h for h in headers_of(metrics) if "sleep_mode" in h] == sleep_families

        pending = asyncio.ensure_future(http.post("/v1/chat/completions", json=request))
        await _wait_state(http, "waiting", 1)
        await asyncio.sleep(0.1)
        assert not pending.done(), "a request must wait while the engine sleeps"
        # vLLM publishes no scheduler stats while paused: the queued request is not counted.
        assert await _gauges(http) == (0, 0)
        woke = await http.post("/wake_up")
        assert woke.json() == bodies["sleep_wake_up"]
        served = await asyncio.wait_for(pending, 30)
        assert served.status_code == 200
        assert shape(served.json()) == shape(bodies["sleep_chat_queued_then_woken"])
        assert served.json()["usage"] == bodies["sleep_chat_queued_then_woken"]["usage"]
        assert (await http.get("/is_sleeping")).json() == {"is_sleeping": False}


async def test_a_second_sleep_aborts_what_queued_while_asleep(engine: RunningEngine) -> None:
    bodies = fixture_json("vllm_bodies.json")
    expected = bodies["sleep_chat_queued_then_aborted_by_sleep_level2"]
    request = fixture_json("vllm_requests.json")["chat_completion"]
    async with httpx.AsyncClient(base_url=engine.url, timeout=10) as http:
        await http.post("/sleep", params={"level": 1})
        pending = asyncio.ensure_future(http.post("/v1/chat/completions", json=request))
        stream = asyncio.ensure_future(http.post("/v1/chat/completions", json={
            **request, "stream": True, "stream_options": {"include_usage": True}}))
        await _wait_state(http, "waiting", 2)
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


async def test_default_mode_aborts_running_requests_with_their_tokens(
        start: StartEngine) -> None:
    engine = await start(speed=1.0)
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 400}
    async with httpx.AsyncClient(base_url=engine.url, timeout=30) as http:
        whole = asyncio.ensure_future(http.post("/v1/completions", json=LONG))
        whole_chat = asyncio.ensure_future(http.post("/v1/chat/completions", json=chat))
        stream = asyncio.ensure_future(http.post("/v1/chat/completions", json={
            **chat, "stream": True, "stream_options": {"include_usage": True}}))
        await _wait_state(http, "running", 3)
        await asyncio.sleep(0.1)
        slept = await http.post("/sleep")
        assert slept.json() == modes("sleep_abort_default")["body"]
        replies = [await asyncio.wait_for(r, 30) for r in (whole, whole_chat)]
        assert await _gauges(http) == (0, 0)
        text = (await asyncio.wait_for(stream, 30)).text
    for reply, name in zip(replies, ("completion_aborted_by_sleep", "chat_aborted_by_sleep"),
                           strict=True):
        body = reply.json()
        assert reply.status_code == 200 and shape(body) == shape(modes(name)["body"]), body
        tokens = body["usage"]["completion_tokens"]
        assert body["choices"][0]["finish_reason"] == "abort" and 0 < tokens < 400, body
    assert text.endswith("data: [DONE]\n\n"), text[-300:]
    events = [json.loads(e[6:]) for e in text.split("\n\n") if e.startswith("data: {")]
    captured = [json.loads(e[6:]) for e in modes("chat_stream_aborted_by_sleep")["sse"].split(
        "\n\n") if e.startswith("data: {")]
    assert [shape(e) for e in events[-2:]] == [shape(e) for e in captured[-2:]], events[-2:]
    assert events[-2]["choices"][0]["finish_reason"] == "abort", events[-2]
    assert events[-1]["usage"]["completion_tokens"] > 0, events[-1]


async def test_keep_mode_pauses_requests_and_keeps_them_counted(start: StartEngine) -> None:
    engine = await start(speed=1.0)
    async with httpx.AsyncClient(base_url=engine.url, timeout=30) as http:
        running = [asyncio.ensure_future(http.post("/v1/completions", json=LONG))
                   for _ in range(3)]
        await _wait_state(http, "running", 3)
        slept = await http.post("/sleep", params={"mode": "keep"})
        assert slept.json() == modes("sleep_keep")["body"]
        late = asyncio.ensure_future(http.post("/v1/completions", json={**LONG, "max_tokens": 8}))
        await _wait_state(http, "waiting", 1)
        await asyncio.sleep(0.2)
        assert not any(r.done() for r in running), "kept requests must not finish while asleep"
        assert await _gauges(http) == (3, 0), "kept requests stay counted; arrivals do not"
        assert (await http.post("/wake_up")).json() == {"status": "awake", "tags": None}
        replies = [await asyncio.wait_for(r, 60) for r in (*running, late)]
    assert [r.json()["usage"]["completion_tokens"] for r in replies] == [400, 400, 400, 8]
    assert {r.json()["choices"][0]["finish_reason"] for r in replies} == {"length"}


async def test_wait_mode_returns_once_running_requests_finish(start: StartEngine) -> None:
    engine = await start(speed=1.0)
    async with httpx.AsyncClient(base_url=engine.url, timeout=30) as http:
        running = asyncio.ensure_future(
            http.post("/v1/completions", json={**LONG, "max_tokens": 150}))
        await _wait_state(http, "running", 1)
        sleeping = asyncio.ensure_future(http.post("/sleep", params={"mode": "wait"}))
        await asyncio.sleep(0.05)
        late = asyncio.ensure_future(http.post("/v1/completions", json={**LONG, "max_tokens": 8}))
        await _wait_state(http, "waiting", 1)
        assert (await http.get("/is_sleeping")).json() == {"is_sleeping": True}
        assert not sleeping.done(), "a wait-mode sleep answers once the running request ends"
        assert await _gauges(http) == (1, 1), "while it drains the engine reports live figures"
        slept = await asyncio.wait_for(sleeping, 30)
        assert slept.json() == modes("sleep_wait")["body"]
        finished = running.result() if running.done() else await asyncio.wait_for(running, 5)
        assert finished.json()["usage"]["completion_tokens"] == 150
        assert finished.json()["choices"][0]["finish_reason"] == "length"
        await asyncio.sleep(0.1)
        assert not late.done(), "nothing new is admitted during or after the drain"
        assert await _gauges(http) == (0, 1)
        await http.post("/wake_up")
        assert (await asyncio.wait_for(late, 30)).json()["usage"]["completion_tokens"] == 8


async def test_invalid_mode_and_level_answer_vllms_400(engine: RunningEngine) -> None:
    async with httpx.AsyncClient(base_url=engine.url, timeout=10) as http:
        for name, params in (("sleep_bad_mode", {"mode": "bogus"}),
                             ("sleep_bad_level_negative", {"level": "-1"}),
                             ("sleep_bad_level_and_mode", {"level": "3", "mode": "bogus"})):
            reply = await http.post("/sleep", params=params)
            assert (reply.status_code, reply.json()) == (modes(name)["status"],
                                                         modes(name)["body"]), name
        captured = fixture_json("vllm_errors.json")["sleep_bad_level"]
        bad = await http.post("/sleep", params={"level": "3"})
        assert (bad.status_code, bad.json()) == (captured["status"], captured["body"])
        assert (await http.get("/is_sleeping")).json() == {"is_sleeping": False}


async def test_level0_pauses_and_any_wake_resumes(engine: RunningEngine) -> None:
    async with httpx.AsyncClient(base_url=engine.url, timeout=10) as http:
        slept = await http.post("/sleep", params={"level": "0"})
        assert slept.json() == modes("sleep_level0")["body"]
        assert (await http.get("/is_sleeping")).json() == \
            modes("sleep_is_sleeping_level0")["body"]
        assert await _sleep_state(http) == {"awake": 0, "weights_offloaded": 0, "discard_all": 0}
        woke = await http.post("/wake_up", params={"tags": "weights"})
        assert woke.json() == modes("sleep_wake_up_weights_after_level0")["body"]
        assert (await http.get("/is_sleeping")).json() == {"is_sleeping": False}


async def test_partial_wake_leaves_the_engine_sleeping(engine: RunningEngine) -> None:
    request = {"model": "tiny", "prompt": "hi", "max_tokens": 4}
    async with httpx.AsyncClient(base_url=engine.url, timeout=10) as http:
        await http.post("/sleep", params={"level": "1"})
        pending = asyncio.ensure_future(http.post("/v1/completions", json=request))
        for name, tags in (("sleep_wake_up_weights_partial", "weights"),
                           ("sleep_wake_up_scheduling_only", "scheduling"),
                           ("sleep_wake_up_bogus_tag", "bogus")):
            reply = await http.post("/wake_up", params={"tags": tags})
            assert reply.json() == modes(name)["body"], name
            assert (await http.get("/is_sleeping")).json() == {"is_sleeping": True}, name
        assert await _sleep_state(http) == {"awake": 0, "weights_offloaded": 1, "discard_all": 0}
        await asyncio.sleep(0.1)
        assert not pending.done(), "a partly woken engine does not run"
        last = await http.post("/wake_up", params={"tags": "kv_cache"})
        assert last.json() == modes("sleep_wake_up_kv_cache")["body"]
        assert (await asyncio.wait_for(pending, 30)).status_code == 200
        assert await _sleep_state(http) == {"awake": 1, "weights_offloaded": 0, "discard_all": 0}
        assert (await http.post("/wake_up")).json() == modes("sleep_wake_up_when_awake")["body"]
