"""The decision order of SPEC §1.2: fallback → candidates → thresholds → score → pick."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from shared.scheduling.plugins.base import DecisionContext
from shared.scheduling.plugins.registry import Profile
from shared.scheduling.view import MemberState, PoolState

log = logging.getLogger("llmsched.scheduler.decide")

NONE = "none"
FALLBACK = "fallback"
BUSY = "busy"
WORDS = frozenset({NONE, FALLBACK, BUSY})
"""Answers that are not a member's key."""


def answer_kind(answer: str) -> str:
    """``member`` for a member's key, else the word itself (the label metrics count by)."""
    return answer if answer in WORDS else "member"


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer and a short machine-readable reason."""

    answer: str
    reason: str


@dataclass(frozen=True, slots=True)
class Scored:
    """Candidates after filtering with their scores (for analysis and status)."""

    members: list[MemberState]
    scores: list[float]
    reason: str


def candidates(pool: PoolState, requested: list[str], ctx: DecisionContext) -> list[MemberState]:
    """Request members ∩ known, available, awake pool members (request order, duplicates once)."""
    out: list[MemberState] = []
    seen: set[str] = set()
    known = pool.members
    for key in requested:
        if key in seen:
            continue
        seen.add(key)
        member = known.get(key)
        if member is None:
            if ctx.debug:
                log.debug("pool %s:%s exclude %s: not a member of the pool",
                          ctx.pool, ctx.partition, key)
            continue
        if not member.available or member.asleep:
            if ctx.debug:
                log.debug("pool %s:%s exclude %s: %s", ctx.pool, ctx.partition, key,
                          member.exclusion())
            continue
        out.append(member)
    return out


def score_candidates(pool: PoolState | None, requested: list[str], profile: Profile,
                     ctx: DecisionContext) -> Scored:
    """Steps 2–5 without the pick: who is left and how each scores."""
    if pool is None:
        return Scored([], [], "pool_unknown")
    if not pool.members:
        return Scored([], [], "pool_empty")
    return score_members(candidates(pool, requested, ctx), profile, ctx)


def score_members(members: list[MemberState], profile: Profile,
                  ctx: DecisionContext) -> Scored:
    """Steps 3–5 for members that are already candidates (known, available, awake, once)."""
    if not members:
        return Scored([], [], "no_intersection")
    members = profile.filter(ctx, members)
    if not members:
        return Scored([], [], "all_filtered")
    scores = profile.score(ctx, members)
    if ctx.debug:
        for m, s in zip(members, scores, strict=True):
            log.debug("pool %s:%s score %s=%.4f (waiting=%s running=%s kv=%s age=%s err=%s)",
                      ctx.pool, ctx.partition, m.key, s, m.waiting_queue, m.running_req,
                      m.cache_usage,
                      None if m.metrics_at is None else round(ctx.now - m.metrics_at, 3),
                      m.last_error)
    if all(s <= 0 for s in scores):
        reason = "all_zero" if any(m.fresh(ctx.now, ctx.stale_after_s) for m in members) \
            else "no_metrics"
        return Scored(members, scores, reason)
    return Scored(members, scores, "scored")


def decide(pool: PoolState | None, requested: list[str], profile: Profile,
           ctx: DecisionContext, *, pool_fallback: bool) -> Decision:
    """One selection, in the order of SPEC §1.2."""
    if pool_fallback:
        return Decision(FALLBACK, "pool_fallback")
    return pick(score_candidates(pool, requested, profile, ctx), profile, ctx)


def pick(scored: Scored, profile: Profile, ctx: DecisionContext) -> Decision:
    """Step 6: the picker's choice among scored members, or why there is none."""
    if scored.reason != "scored":
        if scored.reason == "all_filtered" and profile.admission:
            if ctx.debug:
                log.debug("pool %s:%s answer busy: every candidate past its limits",
                          ctx.pool, ctx.partition)
            return Decision(BUSY, "all_guarded")
        if ctx.debug:
            log.debug("pool %s:%s answer none: %s", ctx.pool, ctx.partition, scored.reason)
        return Decision(NONE, scored.reason)
    chosen = profile.picker.pick(ctx, scored.members, scored.scores)
    if chosen is None:
        return Decision(NONE, "all_zero")
    if ctx.debug:
        log.debug("pool %s:%s selected %s", ctx.pool, ctx.partition, chosen.key)
    return Decision(chosen.key, "selected")
