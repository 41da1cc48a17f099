"""Engine metric mappings: which Prometheus series mean waiting queue, running, KV usage, asleep."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec


class AsleepSignal(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A series that says the engine is asleep: any matching sample meeting ``when``."""

    metric: str
    """Sample name, e.g. ``vllm:engine_sleep_state``."""
    labels: dict[str, str] = {}
    """Labels a sample must carry (a subset match; other labels are ignored)."""
    when: Literal["zero", "nonzero"] = "nonzero"
    """Asleep when a matching sample is 0 (``zero``) or anything but 0 (``nonzero``)."""


class AsleepProbe(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An HTTP GET on the member answering a JSON object whose ``field`` is true when asleep."""

    path: Annotated[str, msgspec.Meta(pattern="^/")]
    """Path on the member's own port, e.g. ``/is_sleeping``."""
    field: Annotated[str, msgspec.Meta(min_length=1)] = "is_sleeping"
    """Key of the JSON boolean; anything but ``true`` (or a failed probe) is not asleep."""


PREFIX_CACHING_FLAG = "prefix_caching"
"""The ``extra`` key of an engine's prefix-caching setting (1.0 on, 0.0 off, absent: unknown)."""


class InfoFlag(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A yes/no setting an info series carries as a label (kept as 1.0 or 0.0)."""

    metric: str
    """Sample name, e.g. ``vllm:cache_config_info``."""
    label: str
    """The label holding the setting, e.g. ``enable_prefix_caching``."""
    true_values: tuple[str, ...] = ("True", "true", "1")
    """Label values meaning yes (anything else: no)."""


class EngineMetricsSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Names of the series that carry an engine's load figures.

    Each field lists candidate metric names in order of preference: the first name
    present in a scrape is used (so old and new vLLM KV names both work).
    """

    waiting_queue: list[str]
    """Gauges counting queued requests; several label series are summed."""
    running_req: list[str]
    """Gauges counting running requests; several label series are summed."""
    cache_usage: list[str]
    """Gauges with the KV-cache usage ratio (0..1)."""
    cache_usage_aggregate: Literal["max", "mean"] = "max"
    """How several KV-usage series (ranks, engines) combine: the fullest one by default."""
    cache_usage_scale: float = 1.0
    """Multiplier turning the raw value into a 0..1 ratio (0.01 for an engine reporting %)."""
    extra: dict[str, str] = {}
    """Other figures to keep, output name → metric name (sample names incl. _sum/_count)."""
    flags: dict[str, InfoFlag] = {}
    """Settings to keep from info series, output name → where (1.0 yes, 0.0 no), in
    ``extra`` beside the figures; absent when the engine does not say."""
    asleep: list[AsleepSignal] = []
    """Series saying the engine is asleep (it then leaves selection); absent series: awake."""
    asleep_probe: AsleepProbe | None = None
    """An HTTP probe asked when no ``asleep`` series says asleep (engines whose metrics don't)."""


BUILTIN_ENGINES: dict[str, EngineMetricsSpec] = {
    "vllm": EngineMetricsSpec(
        waiting_queue=["vllm:num_requests_waiting"],
        running_req=["vllm:num_requests_running"],
        cache_usage=["vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"],
        extra={
            "ttft_sum": "vllm:time_to_first_token_seconds_sum",
            "ttft_count": "vllm:time_to_first_token_seconds_count",
            "e2e_sum": "vllm:e2e_request_latency_seconds_sum",
            "e2e_count": "vllm:e2e_request_latency_seconds_count",
            "prefix_cache_queries": "vllm:prefix_cache_queries_total",
            "prefix_cache_hits": "vllm:prefix_cache_hits_total",
            "preemptions": "vllm:num_preemptions_total",
            "itl_sum": "vllm:inter_token_latency_seconds_sum",
            "itl_count": "vllm:inter_token_latency_seconds_count",
        },
        # Cache-aware routing trusts no prefix affinity on an engine that does not cache.
        flags={PREFIX_CACHING_FLAG: InfoFlag(metric="vllm:cache_config_info",
                                          label="enable_prefix_caching")},
        # awake=0 covers both sleep levels; vLLM before engine_sleep_state has no signal.
        asleep=[AsleepSignal(metric="vllm:engine_sleep_state", labels={"sleep_state": "awake"},
                             when="zero")],
    ),
    "sglang": EngineMetricsSpec(
        waiting_queue=["sglang:num_queue_reqs"],
        running_req=["sglang:num_running_reqs"],
        cache_usage=["sglang:token_usage"],
        extra={
            "ttft_sum": "sglang:time_to_first_token_seconds_sum",
            "ttft_count": "sglang:time_to_first_token_seconds_count",
            "e2e_sum": "sglang:e2e_request_latency_seconds_sum",
            "e2e_count": "sglang:e2e_request_latency_seconds_count",
            "cache_hit_rate": "sglang:cache_hit_rate",
            "itl_sum": "sglang:inter_token_latency_seconds_sum",
            "itl_count": "sglang:inter_token_latency_seconds_count",
        },
    ),
}
