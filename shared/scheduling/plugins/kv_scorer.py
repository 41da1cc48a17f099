"""KV-cache scorer: 1 − usage."""

from __future__ import annotations

from dataclasses import dataclass

from shared.scheduling.plugins.base import DecisionContext
from shared.scheduling.view import MemberState


@dataclass(frozen=True, slots=True)
class KVCacheScorer:
    """Emptier KV cache scores higher."""

    name: str = "kv_cache"

    def score(self, ctx: DecisionContext, members: list[MemberState]) -> list[float | None]:
        return [None if m.cache_usage is None else 1.0 - min(max(m.cache_usage, 0.0), 1.0)
                for m in members]
