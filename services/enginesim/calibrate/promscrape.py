"""The few /metrics figures calibration needs, from vLLM's or SGLang's Prometheus text."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_LINE = re.compile(r"^([A-Za-z_:][\w:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
# Each figure's family names: vLLM's, then SGLang's.
_FAMILIES = {
    "running": ("vllm:num_requests_running", "sglang:num_running_reqs"),
    "waiting": ("vllm:num_requests_waiting", "sglang:num_queue_reqs"),
    "kv_usage": ("vllm:kv_cache_usage_perc", "sglang:token_usage"),
    "preemptions": ("vllm:num_preemptions_total", "sglang:num_retracted_reqs_total"),
    "generation_tokens": ("vllm:generation_tokens_total", "sglang:generation_tokens_total"),
    "ttft_sum": ("vllm:time_to_first_token_seconds_sum", "sglang:time_to_first_token_seconds_sum"),
    "ttft_count": ("vllm:time_to_first_token_seconds_count",
                   "sglang:time_to_first_token_seconds_count"),
}
_CACHE_KEYS = {"block_size": "block_size", "num_gpu_blocks": "num_gpu_blocks"}


@dataclass(frozen=True)
class EngineGauges:
    """One scrape (``t`` in the scraper's seconds)."""

    t: float
    running: float = 0.0
    waiting: float = 0.0
    kv_usage: float = 0.0
    preemptions: float = 0.0
    generation_tokens: float = 0.0
    ttft_sum: float = 0.0
    ttft_count: float = 0.0
    cache_config: dict[str, int] = field(default_factory=dict)
    """vLLM's cache_config_info labels that are engine limits (block size, blocks)."""


def parse_gauges(text: str, t: float) -> EngineGauges:
    """Sum each figure over its label sets (one engine: one set)."""
    wanted = {name: key for key, names in _FAMILIES.items() for name in names}
    sums: dict[str, float] = {}
    cache: dict[str, int] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        match = _LINE.match(line)
        if match is None:
            continue
        name, labels, value = match.groups()
        if name == "vllm:cache_config_info" and labels:
            found = dict(_LABEL.findall(labels))
            for ours, theirs in _CACHE_KEYS.items():
                if found.get(theirs, "").isdigit():
                    cache[ours] = int(found[theirs])
            continue
        key = wanted.get(name)
        if key is None:
            continue
        try:
            sums[key] = sums.get(key, 0.0) + float(value)
        except ValueError:
            continue
    return EngineGauges(t=t, cache_config=cache, **sums)
