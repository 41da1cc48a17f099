"""The simulator through the official OpenAI SDK and raw HTTP, against the captured vLLM shapes."""

from __future__ import annotations

import json

import httpx
import openai

from services.enginesim.launcher import RunningEngine
from tests.enginesim.conftest import TINY, StartEngine, fixture_json, fixture_text, shape


def _sdk(engine: RunningEngine) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=engine.url + "/v1", api_key="unused", max_retries=0,
                              timeout=10)


async def test_chat_via_sdk_counts_tokens_like_vllm(engine: RunningEngine) -> None:
    request = fixture_json("vllm_requests.json")["chat_completion"]
    async with _sdk(engine) as client:
        reply = await client.chat.completions.create(**request)
    expected = fixture_json("vllm_bodies.json")["chat_completion"]
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == expected["usage"]["prompt_tokens"] == 18
    assert reply.usage.completion_tokens == 16
    assert reply.choices[0].finish_reason == "length"
    assert reply.choices[0].message.role == "assistant"
    assert reply.model == "tiny"
    assert reply.id.startswith("chatcmpl-")


async def test_chat_and_completion_bodies_have_the_captured_shape(engine: RunningEngine) -> None:
    requests = fixture_json("vllm_requests.json")
    bodies = fixture_json("vllm_bodies.json")
    async with httpx.AsyncClient(base_url=engine.url, timeout=10) as http:
        chat = await http.post("/v1/chat/completions", json=requests["chat_completion"])
        completion = await http.post("/v1/completions", json=requests["completion"])
    assert shape(chat.json()) == shape(bodies["chat_completion"])
    assert shape(completion.json()) == shape(bodies["completion"])
    assert completion.json()["usage"]["prompt_tokens"] == bodies["completion"]["usage"][
        "prompt_tokens"]
    headers = fixture_json("vllm_headers.json")["chat_completion"]
    assert set(chat.headers) == set(headers)
    assert chat.headers["content-type"] == headers["content-type"]


async def test_completion_via_sdk(engine: RunningEngine) -> None:
    async with _sdk(engine) as client:
        reply = await client.completions.create(model="tiny", prompt="The quick brown fox",
                                                max_tokens=5)
    assert reply.usage is not None and reply.usage.prompt_tokens == 6
    assert reply.usage.completion_tokens == 5
    assert reply.choices[0].text.strip()


async def test_streaming_via_sdk_with_usage(engine: RunningEngine) -> None:
    request = fixture_json("vllm_requests.json")["chat_completion_stream"]
    async with _sdk(engine) as client:
        stream = await client.chat.completions.create(**request)
        chunks = [chunk async for chunk in stream]
    content = [c for c in chunks if c.choices]
    assert content[0].choices[0].delta.role == "assistant"
    assert content[-1].choices[0].finish_reason == "length"
    text_chunks = [c for c in content if c.choices[0].delta.content]
    assert len(text_chunks) == 16
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == 10 and chunks[-1].usage.completion_tokens == 16


def _events(body: str) -> list[str]:
    assert body.endswith("\n\n")
    events = body[:-2].split("\n\n")
    assert all(e.startswith("data: ") for e in events)
    return [e[len("data: "):] for e in events]


async def test_stream_framing_matches_capture_event_by_event(engine: RunningEngine) -> None:
    request = fixture_json("vllm_requests.json")["chat_completion_stream"]
    async with httpx.AsyncClient(base_url=engine.url, timeout=10) as http:
        reply = await http.post("/v1/chat/completions", json=request)
    captured = _events(fixture_text("chat_completion_stream.sse"))
    ours = _events(reply.text)
    assert len(ours) == len(captured)
    assert ours[-1] == captured[-1] == "[DONE]"
    for mine, theirs in zip(ours[:-1], captured[:-1], strict=True):
        assert shape(json.loads(mine)) == shape(json.loads(theirs))
    headers = fixture_json("vllm_headers.json")["chat_completion_stream"]
    assert reply.headers["content-type"] == headers["content-type"]
    assert reply.headers["transfer-encoding"] == "chunked"


async def test_stream_without_usage_has_no_usage_chunk(engine: RunningEngine) -> None:
    async with httpx.AsyncClient(base_url=engine.url, timeout=10) as http:
        reply = await http.post("/v1/completions", json={
            "model": "tiny", "prompt": "hello", "max_tokens": 3, "stream": True})
    events = _events(reply.text)
    assert events[-1] == "[DONE]"
    payloads = [json.loads(e) for e in events[:-1]]
    assert len(payloads) == 3 and all(p["choices"] for p in payloads)
    assert payloads[-1]["choices"][0]["finish_reason"] == "length"


async def test_models_health_version_probes(engine: RunningEngine) -> None:
    bodies = fixture_json("vllm_bodies.json")
    headers = fixture_json("vllm_headers.json")
    async with httpx.AsyncClient(base_url=engine.url, timeout=10) as http:
        models = await http.get("/v1/models")
        health = await http.get("/health")
        ping = await http.get("/ping")
        version = await http.get("/version")
        load = await http.get("/load")
        tokenize = await http.post("/tokenize", json={"model": "tiny", "prompt": "Hello world"})
    assert shape(models.json()) == shape(bodies["models"])
    assert models.json()["data"][0]["id"] == "tiny"
    assert models.json()["data"][0]["root"] == "/models/tiny"
    assert models.json()["data"][0]["max_model_len"] == 512
    assert health.status_code == ping.status_code == 200
    assert health.content == b"" and set(health.headers) == set(headers["health"])
    assert shape(version.json()) == shape(bodies["version"])
    assert shape(load.json()) == shape(bodies["load"])
    assert tokenize.json()["count"] == bodies["tokenize"]["count"] == 4
    assert shape(tokenize.json()) == shape(bodies["tokenize"])


async def test_prompt_plus_max_tokens_over_limit_is_clamped(engine: RunningEngine) -> None:
    request = fixture_json("vllm_requests.json")["chat_prompt_plus_max_tokens_over_limit_clamped"]
    expected = fixture_json("vllm_bodies.json")["chat_prompt_plus_max_tokens_over_limit_clamped"]
    async with httpx.AsyncClient(base_url=engine.url, timeout=10) as http:
        reply = await http.post("/v1/chat/completions", json=request)
    assert reply.status_code == 200
    assert reply.json()["usage"] == expected["usage"]


async def test_fake_response(start: StartEngine) -> None:
    engine = await start(TINY, fake_response="FAKE_OK done")
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}
    async with httpx.AsyncClient(base_url=engine.url, timeout=10) as http:
        first = (await http.post("/v1/chat/completions", json=body)).json()
    assert first["choices"][0]["message"]["content"] == "FAKE_OK done"
    assert first["choices"][0]["finish_reason"] == "stop"
    assert first["usage"]["completion_tokens"] == 2
