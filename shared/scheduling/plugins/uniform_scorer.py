"""Uniform scorer: every member scores 1 (the picker alone decides, e.g. round robin)."""

from __future__ import annotations

from dataclasses import dataclass

from shared.scheduling.plugins.base import DecisionContext
from shared.scheduling.view import MemberState


@dataclass(frozen=True, slots=True)
class UniformScorer:
    """1 for every candidate: filters and the picker make the choice."""

    name: str = "uniform"

    def score(self, ctx: DecisionContext, members: list[MemberState]) -> list[float | None]:
        return [1.0] * len(members)
