"""What a cache-aware pool's route call carries: prompt blocks, token blocks, session id.

Computed once per client request, before the first route call, and only for pools whose
mode is ``cache_aware``: the rendered prompt's character blocks (approximate), the engine
tokenizer's KV blocks (precise, with ``pools[].tokenizer``), and the session id from the
configured header or body field.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from services.api.gateway.body import GatewayRequest, RouteFields
from services.api.gateway.proxy import Target
from shared.config import Config, PoolConfig
from shared.prefix import render_body, text_block_hashes, token_block_keys
from shared.prefix_config import CacheAwareConfig
from shared.subjects import MODELS_PARTITION
from shared.tokenize import HFTokenizer, PromptTokenizer, TokenizerError

log = logging.getLogger("llmsched.api.gateway")

Headers = Iterable[tuple[bytes, bytes]]
MAX_TOKEN_BLOCKS = 1024


class SimTokenizer:
    """The engine simulator's tokenizer (``tokenizer: enginesim``)."""

    def completion(self, prompt: str) -> list[int]:
        from services.enginesim.tokenizer import encode_prompt

        return encode_prompt(prompt)

    def chat(self, messages: Sequence[dict[str, Any]]) -> list[int]:
        from services.enginesim.tokenizer import encode_chat

        return encode_chat(messages)


@dataclass(frozen=True, slots=True)
class _PoolKeys:
    settings: CacheAwareConfig
    block_size: int
    tokenizer: PromptTokenizer | None


class RouteKeys:
    """Per cache-aware pool, how its requests' keys are made (rebuilt on config reload)."""

    def __init__(self, config: Config) -> None:
        self._tokenizers: dict[str, PromptTokenizer] = {}
        self._pools: dict[tuple[str, str], _PoolKeys] = {}
        self._models: _PoolKeys | None = None
        self.set_config(config)

    def set_config(self, config: Config) -> None:
        pools: dict[tuple[str, str], _PoolKeys] = {}
        for pool in config.pools:
            keys = self._pool_keys(config, pool)
            if keys is not None:
                pools[pool.ident] = keys
        self._pools = pools
        self._models = self._pool_keys(config, config.implicit_pool("", "vllm"))

    def _pool_keys(self, config: Config, pool: PoolConfig) -> _PoolKeys | None:
        try:
            mode = config.mode_for(pool)
        except Exception:
            return None
        if mode.type != "cache_aware":
            return None
        tokenizer = None
        if mode.cache_aware.source == "precise" and pool.tokenizer:
            tokenizer = self._tokenizer(pool.tokenizer)
        block_size = pool.kv_events.block_size if pool.kv_events is not None else 16
        return _PoolKeys(mode.cache_aware, block_size, tokenizer)

    def _tokenizer(self, path: str) -> PromptTokenizer | None:
        known = self._tokenizers.get(path)
        if known is not None:
            return known
        try:
            tok: PromptTokenizer = SimTokenizer() if path == "enginesim" else HFTokenizer(path)
        except TokenizerError as err:
            log.warning("Tokenizer %s not loaded (precise prefix matching off): %s", path, err)
            return None
        self._tokenizers[path] = tok
        return tok

    def apply(self, target: Target, request: GatewayRequest,
              headers: Headers = ()) -> GatewayRequest:
        """``request`` with its route fields when ``target``'s pool is cache-aware."""
        keys = (self._models if target.partition == MODELS_PARTITION
                else self._pools.get((target.pool, target.partition)))
        if keys is None:
            return request
        s = keys.settings
        text = render_body(request.kind, request.body)
        fields = RouteFields(prefix_hashes=text_block_hashes(text, s.block_chars, s.max_blocks),
                             session=_session(s, request, headers))
        if keys.tokenizer is not None:
            ids = _tokens(keys.tokenizer, request)
            budget = math.ceil(s.max_blocks * s.block_chars / s.chars_per_token
                               / keys.block_size)
            fields = replace(fields, prompt_tokens=len(ids), token_keys=token_block_keys(
                ids, keys.block_size, max_blocks=min(budget, MAX_TOKEN_BLOCKS)))
        return replace(request, route=fields)


def _tokens(tokenizer: PromptTokenizer, request: GatewayRequest) -> list[int]:
    body = request.body
    if request.kind == "chat":
        messages = body.get("messages")
        return tokenizer.chat([m for m in messages if isinstance(m, dict)]
                              if isinstance(messages, list) else [])
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt:
        first = prompt[0]
        if isinstance(first, int):
            return [t for t in prompt if isinstance(t, int)]
        if isinstance(first, list):
            return [t for t in first if isinstance(t, int)]
        prompt = first
    return tokenizer.completion(prompt if isinstance(prompt, str) else "")


def _session(s: CacheAwareConfig, request: GatewayRequest, headers: Headers) -> str:
    session = s.session
    if session is None:
        return ""
    if session.header:
        wanted = session.header.lower().encode()
        for name, value in headers:
            if name.lower() == wanted:
                return value.decode("latin-1")[:256]
    if session.body_field:
        field = request.body.get(session.body_field)
        if isinstance(field, str | int) and not isinstance(field, bool):
            return str(field)[:256]
    return ""
