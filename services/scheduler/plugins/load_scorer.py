"""Load scorer: fewer requests in flight (as the routers count them) plus queued scores higher."""

from __future__ import annotations

from dataclasses import dataclass

from services.scheduler.plugins.base import DecisionContext
from services.scheduler.view import MemberState


@dataclass(frozen=True, slots=True)
class LoadScorer:
    """``1 / (1 + in-flight + waiting)``: the router's own count first, the engine's queue on top.

    The router's in-flight count is current at decision time (every replica applies every
    selection); the engine's waiting queue is as old as the last scrape and reads 0 until
    the engine is full, so it only breaks ties and catches work the router did not send.

    On the select path of a pool that counts selects (greybox, cache-aware), a select
    leaves the count once the engine's figures hold it, so the engine's running count is
    added: ``1 / (1 + in-flight + running + waiting)``.
    """

    name: str = "load"

    def score(self, ctx: DecisionContext, members: list[MemberState]) -> list[float | None]:
        if ctx.engine_counts:  # select path: the engine holds what the router stopped counting
            return [1.0 / (1.0 + m.inflight + (m.running_req or 0.0) + (m.waiting_queue or 0.0))
                    for m in members]
        return [1.0 / (1.0 + m.inflight + (m.waiting_queue or 0.0)) for m in members]
