"""The OpenAI gateway through the real services, driven by the official OpenAI SDK, with the
decision in the API process (the default) and in a scheduler replica."""

from __future__ import annotations

import re

import openai
import pytest

from tests.integration.fleet import FAKE, MakeFleet
from tests.integration.system import wait_until

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("decide", ["local", "scheduler"])
async def test_openai_sdk_against_a_registered_fake_alias(make_fleet: MakeFleet,
                                                          decide: str) -> None:
    fleet = await make_fleet(gateway={"decide": decide})
    await fleet.register({**FAKE, "fake_delay_ms": 0})
    await fleet.wait_states("fake-model", lambda s: "ACTIVE" in s.values(), 30,
                            "the autoscaler to start an instance (min_replicas 1)")
    client = openai.AsyncOpenAI(base_url=f"{fleet.api}/v1", api_key="unused", max_retries=0)
    try:
        models = [m.id async for m in client.models.list()]
        assert "fake-model" in models, models
        chat = await client.chat.completions.create(
            model="fake-model", messages=[{"role": "user", "content": "hi"}], max_tokens=8)
        assert chat.choices[0].message.content, chat
        completion = await client.completions.create(model="fake-model", prompt="hello",
                                                     max_tokens=4)
        assert completion.choices[0].text, completion
        chunks = []
        usage = None
        stream = await client.chat.completions.create(
            model="fake-model", messages=[{"role": "user", "content": "hi"}], max_tokens=8,
            stream=True, stream_options={"include_usage": True})
        async for chunk in stream:
            if chunk.choices:
                chunks.append(chunk.choices[0].delta.content or "")
            if chunk.usage is not None:
                usage = chunk.usage
        assert "".join(chunks), chunks
        assert usage is not None and usage.completion_tokens > 0, usage
        with pytest.raises(openai.NotFoundError) as info:
            await client.chat.completions.create(
                model="nope", messages=[{"role": "user", "content": "hi"}])
        assert info.value.body["code"] == "model_not_found", info.value.body  # type: ignore[index]
        with pytest.raises(openai.BadRequestError) as bad:
            await client.chat.completions.create(model="fake-model", messages=[])
        assert bad.value.body["param"] == "messages", bad.value.body  # type: ignore[index]
    finally:
        await client.close()
    # Whoever decided counted it where an operator looks: the API's own decision counter
    # (local) or the scheduler's route decisions; either way the pool's status.
    metrics = (await fleet.http.get(f"{fleet.api}/metrics")).text
    counted = re.search(r'llmsched_gateway_decisions_total\{answer="member",reason="[a-z_]+"\} '
                        r"([0-9.]+)", metrics)
    assert (counted is not None) == (decide == "local"), metrics[-3000:]
    assert counted is None or float(counted.group(1)) >= 3, counted

    async def counted_in_status() -> bool:
        r = await fleet.http.get(f"{fleet.api}/pools/fake-model/@models/status")
        return r.status_code == 200 and sum(
            m["selections"] for m in r.json()["members"]) >= 3
    await wait_until(counted_in_status, 10, "the gateway's 3 decisions in the pool's status")
