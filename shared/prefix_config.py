"""Config of cache-aware routing: the ``cache_aware`` mode, a pool's KV events and tokenizer."""

from __future__ import annotations

import re
from typing import Literal

import msgspec

from shared.prefix import DEFAULT_BLOCK_CHARS, DEFAULT_MAX_BLOCKS


class SessionConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Session affinity: one session's requests go to one member (consistent hashing)."""

    header: str | None = "X-Session-ID"
    """Request header naming the session (gateway path; case-insensitive)."""
    body_field: str | None = "user"
    """Top-level body field naming the session when the header is absent (OpenAI's ``user``)."""
    load_bound: float = 1.25
    """A member takes a session while its in-flight count stays below this times the pool's
    mean (plus one): consistent hashing with bounded loads."""
    vnodes: int = 64
    """Points per member on the hash ring (more: a smoother split)."""


class CacheAwareConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The ``cache_aware`` mode: the greybox guard, then prefix affinity weighed against load."""

    source: Literal["approximate", "precise"] = "approximate"
    """approximate: the blocks each member was sent (every replica remembers every route);
    precise: the blocks each engine says it holds (KV-cache events, ``pools[].kv_events``)."""
    block_chars: int = DEFAULT_BLOCK_CHARS
    """Characters per approximate block."""
    max_blocks: int = DEFAULT_MAX_BLOCKS
    """Blocks of a prompt considered at most (the route call carries them)."""
    chars_per_token: float = 4.0
    """Converts matched characters into cached tokens for the TTFT prediction."""
    memory_blocks: int = 200_000
    """Approximate memory: block hashes remembered per pool (least recently used leave)."""
    memory_ttl_s: float = 600.0
    """Approximate memory: a block not routed for this long is forgotten."""
    member_cache_tokens: int | None = None
    """Approximate memory: tokens one engine's KV cache holds (vLLM: num_gpu_blocks ×
    block_size); each member remembers at most that much, least recently sent first out,
    as the engine evicts. Unset: only ``memory_blocks`` and the TTL bound it."""
    affinity_margin: float = 0.5
    """A member holding the whole prefix is preferred while its predicted TTFT is at most
    (1 + margin) × the best cold member's (less for a partial match)."""
    load_bound: float = 1.5
    """While the predictor is not trusted: a warm member is preferred while its in-flight
    count is at most load_bound × the pool's mean + 1 (bounded load)."""
    warm_inflight_factor: float = 2.0
    """The guard's in-flight limit (the engine's batch size) times this for a member that
    holds at least 30 % of the prompt: the request may wait there for a batch slot instead
    of being prefilled, and its prefix cached again, on a cold member. 1: no exception."""
    session: SessionConfig | None = None
    """Session affinity (off when absent)."""


class KvEventsConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Where each member's engine publishes its KV-cache events (vLLM ``--kv-events-config``).

    Endpoints are templates: ``{host}`` is the member's host, ``{port}`` its port and
    ``{port+N}`` its port plus N (one simulator per port), e.g. ``tcp://{host}:5557``.
    """

    endpoint: str
    """The engine's PUB endpoint."""
    replay: str | None = None
    """The engine's replay ROUTER endpoint (missed batches are asked for again)."""
    bind: bool = False
    """The collector binds ``endpoint`` and the engine connects to it (vLLM connects when
    its endpoint names a specific address rather than ``*``)."""
    topic: str = ""
    block_size: int = 16
    """Tokens per KV block of the engines (vLLM's ``--block-size``; 128 on CPU)."""


_FIELD = re.compile(r"\{(host|port)(?:\+(\d+))?\}")


def expand_endpoint(template: str, host: str, port: int) -> str:
    """``template`` with ``{host}``, ``{port}`` and ``{port+N}`` filled in for one member."""
    def fill(m: re.Match[str]) -> str:
        if m.group(1) == "host":
            return f"[{host}]" if ":" in host else host
        return str(port + int(m.group(2) or 0))
    return _FIELD.sub(fill, template)


def check_endpoint(template: str) -> str | None:
    """Why ``template`` is not a usable endpoint template, or None."""
    if not template.startswith(("tcp://", "ipc://", "inproc://")):
        return "must start with tcp://, ipc:// or inproc://"
    rest = _FIELD.sub("", template)
    if "{" in rest or "}" in rest:
        return "only {host}, {port} and {port+N} may be filled in"
    return None


def check_cache_aware(path: str, c: CacheAwareConfig) -> tuple[str, str] | None:
    """(key path, problem) of the first bad value, or None."""
    for name in ("block_chars", "max_blocks", "memory_blocks", "chars_per_token",
                 "memory_ttl_s", "load_bound"):
        if not getattr(c, name) > 0:
            return f"{path}.{name}", f"must be > 0, got {getattr(c, name)}"
    if c.member_cache_tokens is not None and c.member_cache_tokens < 1:
        return f"{path}.member_cache_tokens", "must be >= 1"
    if c.affinity_margin < 0:
        return f"{path}.affinity_margin", "must be >= 0"
    if not 1 <= c.warm_inflight_factor <= 16:
        return f"{path}.warm_inflight_factor", f"must be 1..16, got {c.warm_inflight_factor}"
    if c.max_blocks > 1024:
        return f"{path}.max_blocks", "must be <= 1024 (the route call carries them)"
    s = c.session
    if s is not None:
        if not s.header and not s.body_field:
            return f"{path}.session", "needs a header or a body_field"
        if s.load_bound < 1:
            return f"{path}.session.load_bound", "must be >= 1"
        if not 1 <= s.vnodes <= 1000:
            return f"{path}.session.vnodes", "must be 1..1000"
    return None


def check_kv_events(path: str, k: KvEventsConfig) -> tuple[str, str] | None:
    """(key path, problem) of the first bad value, or None."""
    for name in ("endpoint", "replay"):
        value = getattr(k, name)
        if value is not None:
            problem = check_endpoint(value)
            if problem:
                return f"{path}.{name}", problem
    if k.block_size < 1:
        return f"{path}.block_size", "must be >= 1"
    return None
