"""Wire messages exchanged over NATS and stored in Redis (JSON via msgspec)."""

from __future__ import annotations

from typing import Any, Literal

import msgspec


class MemberInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One pool member as the collector sees it."""

    key: str
    """The identity a gateway sends: ``ip:port``, ``[v6addr]:port`` or ``nodename:port``."""
    host: str
    """Where the engine is reachable (route domain stripped, IPv6 without brackets)."""
    port: int
    available: bool = True
    """False when F5 state/session says down, disabled or forced offline."""
    name: str = ""
    """The F5 member name (``10.0.0.1:8000``, ``node-a:8000``) or the static entry."""
    state: str = ""
    session: str = ""
    capacity: int = 0
    """Concurrent requests the member is meant to serve, when its source knows (workers)."""


REMOVED = "removed"
"""``PoolSnapshot.source`` of the last snapshot of a pool that no longer exists."""


class PoolSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """A pool's membership at one moment, from F5, static config or workers."""

    pool: str
    partition: str
    engine_type: str
    source: str
    members: list[MemberInfo]
    fetched_at: float
    """Unix time of the fetch that produced this membership."""
    stale_since: float | None = None
    """Set when the source is failing and this is the last good snapshot being kept."""
    error: str | None = None


class MemberMetrics(msgspec.Struct, frozen=True, kw_only=True):
    """One member's scrape result. ``ok=False`` means the scrape failed (values absent)."""

    key: str
    scraped_at: float
    ok: bool
    error: str | None = None
    waiting_queue: float | None = None
    running_req: float | None = None
    cache_usage: float | None = None
    extra: dict[str, float] = {}
    """Other engine figures worth keeping (histogram sums/counts, prefix-cache counters)."""
    asleep: bool = False
    """The engine says it is asleep (metrics, probe, or its worker); it leaves selection."""
    asleep_reason: str | None = None
    """Which signal said so, e.g. ``vllm:engine_sleep_state{sleep_state=awake}=0``."""


class MetricsBatch(msgspec.Struct, frozen=True, kw_only=True):
    """All members of one pool scraped in one round."""

    pool: str
    partition: str
    members: list[MemberMetrics]
    round_started_at: float


class SelectRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """The body of ``POST /scheduler/select``."""

    pool_name: str
    members: list[str]
    partition: str = "Common"
    prefix_hashes: list[int] = []
    """Cache-aware pools: the prompt's chained block hashes (docs/cache-aware.md)."""
    prefix_key: str | None = None
    """Cache-aware pools: an opaque key of the prompt's prefix (one block)."""
    session: str | None = None
    """Cache-aware pools with session affinity: the client's session id."""


class SelectReply(msgspec.Struct, frozen=True, kw_only=True):
    """The scheduler's answer: a member key, ``none`` or ``fallback``, and why."""

    answer: str
    reason: str = ""


class SimulateRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Run ``iterations`` selections against the current scores."""

    pool_name: str
    partition: str
    members: list[str]
    iterations: int


class SimulateReply(msgspec.Struct, frozen=True, kw_only=True):
    results: dict[str, int]
    iterations: int


class MemberAnalysis(msgspec.Struct, frozen=True, kw_only=True):
    theoretical_probability: float
    actual_probability: float
    selection_count: int
    deviation: float
    deviation_percentage: float


class OverallStats(msgspec.Struct, frozen=True, kw_only=True):
    total_iterations: int
    avg_deviation: float
    max_deviation: float
    quality_score: float


class AnalyzeReply(msgspec.Struct, frozen=True, kw_only=True):
    member_analysis: dict[str, MemberAnalysis]
    overall_stats: OverallStats
    answers: dict[str, int] = {}
    """Counts of ``none``/``fallback`` answers, when any occurred."""


class StatusRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Ask for one pool (both fields set) or all pools (both empty)."""

    pool_name: str = ""
    partition: str = ""


class MemberStatus(msgspec.Struct, frozen=True, kw_only=True):
    ip: str
    port: int
    key: str
    available: bool
    score: float
    metrics: dict[str, float | None]
    metrics_age_s: float | None = None
    stale: bool = True
    scrape_error: str | None = None
    selections: int = 0
    """Times this member was the answer (same scope as the pool's ``selections``)."""
    asleep: bool = False
    excluded: str | None = None
    """Why selection skips this member (``unavailable: ...``, ``asleep: <signal>``), if it does."""
    inflight: int = 0
    """Requests routed to this member and not yet finished, fleet-wide."""
    greybox: dict[str, Any] | None = None
    """Greybox pools: predicted TTFT, whether it is trusted, the guard's limit and verdict,
    the circuit, and what the member's model learned."""


class PoolStatus(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    partition: str
    engine_type: str
    member_count: int
    members: list[MemberStatus]
    source: str = ""
    mode: str = ""
    pool_fallback: bool = False
    snapshot_age_s: float | None = None
    source_error: str | None = None
    selections: dict[str, int] = {}
    """Answer counts of every replica: member keys, ``none``, ``fallback`` (see scope)."""
    selections_scope: Literal["fleet", "replica"] = "replica"
    """``fleet``: all replicas' counts (shared through Redis, kept while any replica runs
    within ``state_ttl``); ``replica``: only the answering replica's, since it started
    (the state store is unreachable, or not read yet)."""


class StatusReply(msgspec.Struct, frozen=True, kw_only=True):
    pools: list[PoolStatus]
    replica: str = ""
    config_version: str = ""
    state_store: str = "ok"


class LoadEvent(msgspec.Struct, frozen=True, kw_only=True):
    """Published by the scheduler every evaluation tick for each pool or model."""

    name: str
    partition: str
    members: int
    available: int
    waiting_queue: float
    running_req: float
    cache_usage_avg: float
    at: float
    inflight: dict[str, int] = {}
    """Member key → requests routed there and not yet finished (every router's)."""


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True):
    """Error payload returned by the scheduler's NATS endpoints."""

    error: str
    field: str | None = None
