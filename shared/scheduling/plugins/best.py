"""Best-score picker: the highest score, ties broken at random."""

from __future__ import annotations

from dataclasses import dataclass

from shared.scheduling.plugins.base import DecisionContext
from shared.scheduling.view import MemberState


@dataclass(frozen=True, slots=True)
class BestPicker:
    """argmax over positive scores; a random one among near-equals so replicas don't herd.

    Near-equal is relative: within ``tolerance`` of the best score as a fraction of it. An
    absolute margin would widen with load under scores like ``1 / (1 + load)``: 0.05 spans
    one request at 4 in flight and three at 7, and least load turns into random there.
    """

    name: str = "best"
    tolerance: float = 1e-9

    def pick(self, ctx: DecisionContext, members: list[MemberState],
             scores: list[float]) -> MemberState | None:
        top = max(scores, default=0.0)
        if top <= 0:
            return None
        floor = top * (1.0 - self.tolerance)
        best = [m for m, s in zip(members, scores, strict=True) if s >= floor]
        return best[0] if len(best) == 1 else ctx.rng.choice(best)

    def pick_many(self, ctx: DecisionContext, members: list[MemberState],
                  scores: list[float], n: int) -> list[MemberState | None]:
        return [self.pick(ctx, members, scores) for _ in range(n)]
