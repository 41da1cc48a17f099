"""Relative load scorer: the least loaded candidate scores 1, the others in proportion."""

from __future__ import annotations

from dataclasses import dataclass

from shared.scheduling.plugins.base import DecisionContext
from shared.scheduling.view import MemberState


@dataclass(frozen=True, slots=True)
class RelativeLoadScorer:
    """``(1 + least load) / (1 + load)``, load = requests in flight (router) + engine queue.

    Relative to the best candidate rather than absolute (the ``load`` scorer's
    ``1 / (1 + load)``), so that in a weighted sum the load term spans [0, 1] at any
    level of traffic and is not drowned by the KV and latency terms when all are busy.
    """

    name: str = "relative_load"

    def score(self, ctx: DecisionContext, members: list[MemberState]) -> list[float | None]:
        loads = [m.inflight + (m.waiting_queue or 0.0) for m in members]
        least = min(loads, default=0.0)
        return [(1.0 + least) / (1.0 + load) for load in loads]
