"""Load scorer: fewer requests in flight (as the routers count them) plus queued scores higher."""

from __future__ import annotations

from dataclasses import dataclass

from shared.scheduling.plugins.base import DecisionContext
from shared.scheduling.plugins.speed import speed_weights
from shared.scheduling.view import MemberState

SPEED_EXPONENT = 0.5
"""How much a member's relative decode speed weighs on the select path (measured)."""


@dataclass(frozen=True, slots=True)
class LoadScorer:
    """``1 / (1 + in-flight + waiting)``: the router's own count first, the engine's queue on top.

    The router's in-flight count is current at decision time (every replica applies every
    selection); the engine's waiting queue is as old as the last scrape and reads 0 until
    the engine is full, so it only breaks ties and catches work the router did not send.

    On the select path of a pool that counts selects (greybox, cache-aware), a select
    leaves the count once the engine's figures hold it, so the engine's running count is
    added, and the member's decode speed (relative to the fastest, from its inter-token
    latency) weighs in as its square root: ``√speed / (1 + in-flight + running + waiting)``.
    The square root was measured against 0, 0.75 and 1 (docs/plugins/load.md). A member
    with a free batch slot (that sum below the batch size learned from its metrics) ranks
    above every member without one: there a request starts at once instead of queueing.
    A member with stale metrics counts the fresh members' mean engine load.
    """

    name: str = "load"

    def score(self, ctx: DecisionContext, members: list[MemberState]) -> list[float | None]:
        if ctx.engine_counts:  # select path: the engine holds what the router stopped counting
            return _engine_load_scores(ctx, members)
        return [1.0 / (1.0 + m.inflight + (m.waiting_queue or 0.0)) for m in members]


def _engine_load_scores(ctx: DecisionContext, members: list[MemberState]
                        ) -> list[float | None]:
    """Speed-weighted least load over router and engine counts; free batch slots first
    (scores in (0.5, 1]), then the rest (in (0, 0.5]).

    A member whose metrics are stale is taken at the mean engine load of the fresh ones
    (plus its own in-flight selects): a frozen low figure would pile traffic onto it and a
    frozen high one drain it, and its selects leave the router's count after the staleness
    window, so its count alone would look ever lighter. It is never "free"."""
    speed = speed_weights(members)
    top = max(speed, default=1.0)
    fresh = [m.fresh(ctx.now, ctx.stale_after_s) for m in members]
    engine = [(m.running_req or 0.0) + (m.waiting_queue or 0.0) for m in members]
    known = [e for e, f in zip(engine, fresh, strict=True) if f]
    typical = sum(known) / len(known) if known else 0.0
    out: list[float | None] = []
    for m, w, f, e in zip(members, speed, fresh, engine, strict=True):
        load = m.inflight + (e if f else typical)
        base = (w / top) ** SPEED_EXPONENT / (1.0 + load)
        free = f and m.running_cap > 0 and load < m.running_cap
        out.append(0.5 + 0.5 * base if free else 0.5 * base)
    return out
