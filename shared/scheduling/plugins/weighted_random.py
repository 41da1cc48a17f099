"""Weighted random picker: P(member) = score / Σ scores."""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from itertools import accumulate

from shared.scheduling.plugins.base import DecisionContext
from shared.scheduling.view import MemberState


@dataclass(frozen=True, slots=True)
class WeightedRandomPicker:
    """Roulette-wheel selection over positive scores; None when every score is 0."""

    name: str = "weighted_random"

    def pick(self, ctx: DecisionContext, members: list[MemberState],
             scores: list[float]) -> MemberState | None:
        return self.pick_many(ctx, members, scores, 1)[0]

    def pick_many(self, ctx: DecisionContext, members: list[MemberState],
                  scores: list[float], n: int) -> list[MemberState | None]:
        cumulative = list(accumulate(s if s > 0 else 0.0 for s in scores))
        total = cumulative[-1] if cumulative else 0.0
        if total <= 0:
            return [None] * n
        last = len(members) - 1
        rand = ctx.rng.random
        return [members[min(bisect_right(cumulative, rand() * total), last)]
                for _ in range(n)]
