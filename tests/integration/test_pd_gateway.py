"""Requests through a PD pool: prefill then decode, as one ordinary OpenAI answer or stream."""

from __future__ import annotations

import json

import openai
import pytest

from tests.enginesim.test_metrics import samples
from tests.integration.pd_stack import MakePD, make_pd_fixture  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration


async def test_one_request_is_a_prefill_then_a_decode_with_the_kv_params(
        make_pd: MakePD) -> None:
    stack = await make_pd({"p1": ("prefill", 20.0), "d1": ("decode", 20.0)})
    r = await stack.chat("tell me " * 40, max_tokens=12)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "tiny", body
    assert body["usage"]["completion_tokens"] == 12, body
    assert r.headers["x-llmsched-prefill"] == stack.key("p1"), r.headers
    assert r.headers["x-llmsched-decode"] == stack.key("d1"), r.headers
    prefill = (await stack.http.get(stack.engines["p1"].url + "/_sim/state")).json()
    assert prefill["finished"].get("length") == 1, prefill  # one token: max_tokens 1
    metrics = samples((await stack.http.get(stack.engines["d1"].url + "/metrics")).text)
    pulled = [v for k, v in metrics.items()
              if k.startswith("vllm:prompt_tokens_by_source_total")
              and 'source="external_kv_transfer"' in k]
    assert pulled and pulled[0] > 0, "the decode computed the prompt instead of pulling it"


async def test_the_openai_sdk_streams_through_a_pd_pool(make_pd: MakePD) -> None:
    stack = await make_pd({"p1": ("prefill", 20.0), "d1": ("decode", 20.0)})
    client = openai.AsyncOpenAI(base_url=f"{stack.api}/v1", api_key="unused", max_retries=0)
    try:
        assert "chat" in [m.id async for m in client.models.list()]
        pieces: list[str] = []
        usage = None
        stream = await client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "stream please"}],
            max_tokens=10, stream=True, stream_options={"include_usage": True})
        async for chunk in stream:
            if chunk.choices:
                pieces.append(chunk.choices[0].delta.content or "")
            if chunk.usage is not None:
                usage = chunk.usage
        assert "".join(pieces), pieces
        assert usage is not None and usage.completion_tokens == 10, usage
        completion = await client.completions.create(model="chat", prompt="once upon",
                                                     max_tokens=5)
        assert completion.choices[0].text and completion.usage is not None
        assert completion.usage.completion_tokens == 5, completion
    finally:
        await client.close()


async def test_a_raw_stream_ends_with_done_and_no_prefill_chunk(make_pd: MakePD) -> None:
    stack = await make_pd({"p1": ("prefill", 20.0), "d1": ("decode", 20.0)})
    async with stack.http.stream("POST", f"{stack.api}/v1/completions", json={
            "model": "chat", "prompt": "abc " * 30, "max_tokens": 6, "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream"), r.headers
        events = [line async for line in r.aiter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]", events
    texts = [json.loads(e[6:])["choices"][0]["text"] for e in events[:-1]
             if json.loads(e[6:])["choices"]]
    assert len(texts) >= 6, events  # the decode's tokens only, streamed one by one


async def test_the_prefills_own_4xx_reaches_the_client_and_nothing_is_decoded(
        make_pd: MakePD) -> None:
    stack = await make_pd({"p1": ("prefill", 20.0), "d1": ("decode", 20.0)})
    r = await stack.chat("word " * 3000)  # longer than max_model_len
    assert r.status_code == 400, r.text
    assert "maximum context length" in r.text or "max_model_len" in r.text, r.text
    decode = (await stack.http.get(stack.engines["d1"].url + "/_sim/state")).json()
    assert decode["finished"] == {} or sum(decode["finished"].values()) == 0, decode


async def test_no_decode_instance_is_503_before_any_prefill(make_pd: MakePD) -> None:
    stack = await make_pd({"p1": ("prefill", 20.0), "d1": ("decode", 20.0)})
    r = await stack.http.post(f"{stack.api}/admin/pd/chat/instances/d1/drain")
    assert r.status_code in (200, 202), r.text
    await stack.wait_routable("decode", set())
    r = await stack.chat()
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "no_instance", r.text
    assert "decode" in r.json()["error"]["message"], r.text
    assert "retry-after" in r.headers
    prefill = (await stack.http.get(stack.engines["p1"].url + "/_sim/state")).json()
    assert sum(prefill["finished"].values()) == 0, prefill
