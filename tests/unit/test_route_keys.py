"""The gateway's route fields for cache-aware pools: prompt blocks, token blocks, session."""

from __future__ import annotations

import json

from services.api.gateway.body import parse_request
from services.api.gateway.proxy import Target
from services.api.gateway.route_keys import RouteKeys
from services.enginesim.tokenizer import block_hashes, encode_chat
from shared.config import parse_config
from shared.prefix import render_chat, text_block_hashes, token_block_keys

CONFIG = """
modes:
  - {name: ca, type: cache_aware, cache_aware: {session: {header: X-Session-ID}}}
  - {name: cap, type: cache_aware, cache_aware: {source: precise}}
  - {name: plain, type: least_load}
pools:
  - {name: a, engine_type: vllm, source: static, members: ["10.0.0.1:8000"], mode: ca}
  - {name: b, engine_type: vllm, source: static, members: ["10.0.0.1:8001"], mode: cap,
     tokenizer: enginesim, kv_events: {endpoint: "tcp://{host}:5557", block_size: 16}}
  - {name: c, engine_type: vllm, source: static, members: ["10.0.0.1:8002"], mode: plain}
"""
MESSAGES = [{"role": "system", "content": "Answer in haiku. " * 60},
            {"role": "user", "content": "why is the sky blue"}]


def target(pool: str) -> Target:
    return Target(alias=pool, pool=pool, partition="Common", managed=False)


def request(**extra: object) -> bytes:
    return json.dumps({"model": "m", "messages": MESSAGES, **extra}).encode()


def test_approximate_fields_and_the_session_header() -> None:
    keys = RouteKeys(parse_config(CONFIG))
    req = keys.apply(target("a"), parse_request(request(), "chat"),
                     [(b"x-session-id", b"conv-9")])
    assert req.route is not None
    assert req.route.prefix_hashes == text_block_hashes(render_chat(MESSAGES))
    assert req.route.session == "conv-9" and req.route.token_keys == []
    by_body = keys.apply(target("a"), parse_request(request(user="alice"), "chat"))
    assert by_body.route is not None and by_body.route.session == "alice"


def test_precise_fields_are_the_engines_blocks() -> None:
    keys = RouteKeys(parse_config(CONFIG))
    req = keys.apply(target("b"), parse_request(request(), "chat"))
    assert req.route is not None
    ids = encode_chat(MESSAGES)
    assert req.route.prompt_tokens == len(ids)
    assert req.route.token_keys == token_block_keys(ids, 16)
    assert len(req.route.token_keys) == len(block_hashes(ids, 16)), \
        "one key per full KV block the simulated engine caches"


def test_other_pools_carry_nothing() -> None:
    keys = RouteKeys(parse_config(CONFIG))
    raw = parse_request(request(), "chat")
    assert keys.apply(target("c"), raw).route is None
    assert keys.apply(Target(alias="x", pool="x", partition="@models", managed=True),
                      raw).route is None
