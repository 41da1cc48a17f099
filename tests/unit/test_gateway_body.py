"""OpenAI request bodies as the gateway checks them, and usage read from answers."""

from __future__ import annotations

import json

import pytest

from services.api.gateway.body import GatewayError, parse_request
from services.api.gateway.proxy import _usage


def test_chat_body_fields() -> None:
    raw = json.dumps({"model": "m", "stream": True, "stream_options": {"include_usage": True},
                      "messages": [{"role": "system", "content": "abc"},
                                   {"role": "user", "content": [{"type": "text",
                                                                 "text": "hello"}]}]}).encode()
    req = parse_request(raw, "chat")
    assert (req.model, req.stream, req.include_usage, req.prompt_chars) == ("m", True, True, 8)
    assert req.for_engine(None) is raw and req.for_engine("m") is raw
    assert json.loads(req.for_engine("served/name"))["model"] == "served/name"


def test_completions_prompt_forms() -> None:
    assert parse_request(b'{"model": "m", "prompt": "abcd"}', "completions").prompt_chars == 4
    assert parse_request(b'{"model": "m", "prompt": ["ab", "c"]}',
                         "completions").prompt_chars == 3


@pytest.mark.parametrize(("raw", "kind", "status", "param"), [
    (b"", "chat", 400, None),
    (b"{not json", "chat", 400, None),
    (b"[1]", "chat", 400, None),
    (b'{"messages": [{"role": "user", "content": "x"}]}', "chat", 400, "model"),
    (b'{"model": "", "messages": []}', "chat", 400, "model"),
    (b'{"model": "m"}', "chat", 400, "messages"),
    (b'{"model": "m", "messages": []}', "chat", 400, "messages"),
    (b'{"model": "m", "messages": ["hi"]}', "chat", 400, "messages[0]"),
    (b'{"model": "m", "messages": [{"role": "user"}], "stream": "yes"}', "chat", 400,
     "stream"),
    (b'{"model": "m", "messages": [{"role": "user"}], "max_tokens": 0}', "chat", 400,
     "max_tokens"),
    (b'{"model": "m", "messages": [{"role": "user"}], "stream_options": 3}', "chat", 400,
     "stream_options"),
    (b'{"model": "m"}', "completions", 400, "prompt"),
    (b'{"model": "m", "prompt": 7}', "completions", 400, "prompt"),
])
def test_bad_bodies_name_the_field(raw: bytes, kind: str, status: int,
                                   param: str | None) -> None:
    with pytest.raises(GatewayError) as info:
        parse_request(raw, kind)  # type: ignore[arg-type]
    assert (info.value.status, info.value.param) == (status, param), info.value.message


def test_usage_from_a_json_answer() -> None:
    body = json.dumps({"id": "x", "usage": {"prompt_tokens": 12, "completion_tokens": 3,
                                            "total_tokens": 15}}).encode()
    assert _usage(body, whole=True) == (12, 3)
    assert _usage(b'{"id": "x"}', whole=True) == (None, None)
    assert _usage(b"not json", whole=True) == (None, None)


def test_usage_from_the_end_of_a_stream() -> None:
    chunks = [
        b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n',
        b'data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,'
        b'"total_tokens":7}}\n\n',
        b"data: [DONE]\n\n",
    ]
    assert _usage(b"".join(chunks), whole=False) == (5, 2)
    assert _usage(chunks[0] + chunks[2], whole=False) == (None, None)
