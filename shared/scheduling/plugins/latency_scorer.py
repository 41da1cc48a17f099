"""Latency scorer: the member with the lowest recent mean TTFT scores 1, others in proportion."""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.scheduling.plugins.base import DecisionContext
from shared.scheduling.view import MemberState


@dataclass(slots=True)
class LatencyScorer:
    """``best / mean`` of each member's recent time to first token, from its own histogram.

    The engine exports TTFT as cumulative ``_sum`` and ``_count``; between two scrapes whose
    count grew, the window's mean is ``Δsum / Δcount``, smoothed with ``smoothing``. A member
    with no figure yet scores 1: it is tried rather than starved (it would never get the
    traffic that measures it). For the same reason a member whose figure has not moved for
    ``retry_after_s`` is tried once, as if unknown.
    """

    name: str = "latency"
    smoothing: float = 0.3
    """Weight of the newest window in the running mean."""
    prefix: str = "ttft"
    """The extras ``<prefix>_sum`` and ``<prefix>_count`` (shared/engines.py)."""
    retry_after_s: float = 5.0
    """A member whose figure has not moved for this long is tried once, as if unknown: its
    last mean may be one bad window, and an avoided member would never be measured again."""
    seen: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)
    """Member key → (sum, count, smoothed mean, when it last moved or was retried)."""

    def recent(self, member: MemberState, now: float) -> float | None:
        """The member's smoothed recent mean; None without data or when due for a retry."""
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
        elif now - prev[3] >= self.retry_after_s:
            self.seen[member.key] = (prev[0], prev[1], prev[2], now)
            return None
        else:
            return prev[2]
        self.seen[member.key] = (total, count, mean, now)
        return mean

    def score(self, ctx: DecisionContext, members: list[MemberState]) -> list[float | None]:
        means = [self.recent(m, ctx.now) for m in members]
        best = min((v for v in means if v is not None and v > 0), default=None)
        return [1.0 if v is None or best is None or v <= 0 else best / v for v in means]
