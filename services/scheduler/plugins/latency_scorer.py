"""Latency scorer: the member with the lowest recent mean TTFT scores 1, others in proportion."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.scheduler.plugins.base import DecisionContext
from services.scheduler.view import MemberState


@dataclass(slots=True)
class LatencyScorer:
    """``best / mean`` of each member's recent time to first token, from its own histogram.

    The engine exports TTFT as cumulative ``_sum`` and ``_count``; between two scrapes whose
    count grew, the window's mean is ``Δsum / Δcount``, smoothed with ``smoothing``. A member
    with no figure yet scores 1: it is tried rather than starved (it would never get the
    traffic that measures it).
    """

    name: str = "latency"
    smoothing: float = 0.3
    """Weight of the newest window in the running mean."""
    prefix: str = "ttft"
    """The extras ``<prefix>_sum`` and ``<prefix>_count`` (shared/engines.py)."""
    seen: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    """Member key → (sum, count, smoothed mean) at the last change."""

    def recent(self, member: MemberState) -> float | None:
        """The member's smoothed recent mean, None without data."""
        total = member.extra.get(f"{self.prefix}_sum")
        count = member.extra.get(f"{self.prefix}_count")
        if total is None or count is None or count <= 0:
            return None
        prev = self.seen.get(member.key)
        if prev is None or count < prev[1]:  # first sight, or the engine restarted
            mean = total / count
        elif count > prev[1]:
            window = (total - prev[0]) / (count - prev[1])
            mean = prev[2] + self.smoothing * (window - prev[2])
        else:
            return prev[2]
        self.seen[member.key] = (total, count, mean)
        return mean

    def score(self, ctx: DecisionContext, members: list[MemberState]) -> list[float | None]:
        means = [self.recent(m) for m in members]
        best = min((v for v in means if v is not None and v > 0), default=None)
        return [1.0 if v is None or best is None or v <= 0 else best / v for v in means]
