"""S1 waiting-queue scorer: 1 − q / max q over the candidates."""

from __future__ import annotations

from dataclasses import dataclass

from shared.scheduling.plugins.base import DecisionContext
from shared.scheduling.view import MemberState


@dataclass(frozen=True, slots=True)
class QueueScorer:
    """Shorter queue scores higher; normalised by the longest queue among the rated members."""

    name: str = "queue"

    def score(self, ctx: DecisionContext, members: list[MemberState]) -> list[float | None]:
        queues = [m.waiting_queue for m in members]
        peak = max((q for q in queues if q is not None), default=0.0)
        if peak <= 0:
            return [None if q is None else 1.0 for q in queues]
        return [None if q is None else 1.0 - min(max(q, 0.0), peak) / peak for q in queues]
