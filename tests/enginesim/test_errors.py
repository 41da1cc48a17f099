"""Error statuses and bodies, replayed from the captured vLLM exchanges (table-driven)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from services.enginesim.launcher import RunningEngine
from tests.enginesim.conftest import fixture_json, shape

CASES: dict[str, Any] = fixture_json("vllm_errors.json")


@pytest.mark.parametrize("name", sorted(CASES))
async def test_error_matches_capture(engine: RunningEngine, name: str) -> None:
    case = CASES[name]
    request = case["request"]
    if request is None:
        content = b""
    elif isinstance(request, str):
        content = request.encode()
    else:
        content = json.dumps(request).encode()
    headers = {"content-type": "application/json"} if content else {}
    async with httpx.AsyncClient(base_url=engine.url, timeout=10) as http:
        reply = await http.request(case["method"], case["path"], content=content, headers=headers)
    assert reply.status_code == case["status"]
    assert shape(reply.json()) == shape(case["body"])
    # Deterministic texts (no timestamps or ids in them) must match exactly.
    assert reply.json() == case["body"]
    assert reply.headers["content-type"] == "application/json"
    assert reply.headers["vary"] == "Origin"


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"model": "tiny", "messages": [], "max_tokens": "abc"}, 400, "body.max_tokens"),
    ({"model": "tiny", "messages": "nope"}, 400, "body.messages"),
    ({"model": "tiny", "messages": [], "max_tokens": 0}, 400, "max_tokens"),
    ({"model": "tiny", "messages": [], "top_p": 0}, 400, "top_p"),
    ({"model": "tiny", "messages": [], "n": 0}, 400, "n"),
    ([1, 2], 400, "body"),
])
async def test_bad_input_gets_a_clear_4xx(engine: RunningEngine, body: Any, status: int,
                                          param: str) -> None:
    async with httpx.AsyncClient(base_url=engine.url, timeout=10) as http:
        reply = await http.post("/v1/chat/completions", json=body)
    assert reply.status_code == status
    error = reply.json()["error"]
    assert error["param"] == param and error["code"] == status
    assert set(error) == {"message", "type", "param", "code"}


async def test_completions_without_prompt_is_400(engine: RunningEngine) -> None:
    async with httpx.AsyncClient(base_url=engine.url, timeout=10) as http:
        reply = await http.post("/v1/completions", json={"model": "tiny"})
    assert reply.status_code == 400
    assert reply.json()["error"]["type"] == "BadRequestError"
