"""Wire messages of the gateway's routing: route calls, selections, outcomes, demand."""

from __future__ import annotations

from typing import Literal

import msgspec

TtftAt = Literal["first_token", "headers"]
"""What an outcome's ``ttft_s`` measured: the first token, or only the response headers."""


class RouteRequest(msgspec.Struct, frozen=True, kw_only=True):
    """The gateway asks for one member of a pool to send a request to."""

    pool: str
    partition: str
    request_id: str
    """The gateway's id of this attempt; selection and outcome events carry it."""
    exclude: list[str] = []
    """Members already tried for this request (a retry goes elsewhere)."""
    prompt_chars: int = 0
    """Length of the prompt text (a cheap proxy of input tokens)."""
    ttl_s: float = 600.0
    """How long the selection counts as in flight if no outcome is ever reported."""
    prompt_tokens: int = 0
    """The prompt's token count when the gateway tokenized it (0: estimate from chars)."""
    prefix_hashes: list[int] = []
    """Cache-aware pools: chained hashes of the rendered prompt's character blocks."""
    token_keys: list[int] = []
    """Cache-aware pools (precise): chained keys of the prompt's KV blocks of tokens."""
    session: str = ""
    """Cache-aware pools with session affinity: the client's session id."""


class RouteReply(msgspec.Struct, frozen=True, kw_only=True):
    """A member key and its base URL, or ``none`` with the reason."""

    answer: str
    reason: str = ""
    url: str = ""
    """``http://host:port`` of the chosen engine (empty unless a member was chosen)."""
    active: int = 0
    """Members that could take requests at all (0: nothing is awake; scale from zero)."""


class SelectionEvent(msgspec.Struct, frozen=True, kw_only=True):
    """A replica routed a request to a member; every replica counts it as in flight."""

    request_id: str
    pool: str
    partition: str
    member: str
    replica: str
    at: float
    ttl_s: float
    features: list[float] = []
    """What the predictor saw of the member when the request was routed (greybox pools)."""
    predicted_ttft_s: float | None = None
    prefix_hashes: list[int] = []
    """The request's prompt blocks (cache-aware pools): every replica remembers them."""


class OutcomeEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One attempt of a proxied request ended (``request.outcome``)."""

    request_id: str
    pool: str
    partition: str
    member: str
    alias: str = ""
    status: int = 0
    """HTTP status the engine answered (0: no answer — refused, reset or timed out)."""
    error: str | None = None
    ttft_s: float | None = None
    """Time to the first byte as the client saw it (from its arrival, holds included)."""
    ttft_at: TtftAt = "first_token"
    """``headers``: ``ttft_s`` is only the time to the response headers (an F5 report), which
    a streaming engine sends before its first token; it never trains the TTFT predictor."""
    upstream_ttft_s: float | None = None
    """Time to the first byte from this attempt's dispatch to the engine (what it did)."""
    e2e_s: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    retries: int = 0
    """Attempts before this one for the same client request."""
    final: bool = True
    """False for an attempt that failed before any byte and was retried elsewhere."""
    stream: bool = False
    at: float = 0.0


class DemandEvent(msgspec.Struct, frozen=True, kw_only=True):
    """A gateway holds requests for an alias that has no active instance."""

    alias: str
    waiting: int
    gateway: str
    at: float


class RecordsRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Ask a scheduler replica for a pool's joined records (TTFT + routing state)."""

    pool_name: str
    partition: str = "Common"
    limit: int = 1000
