"""Greybox layer 1, the safety guard: members past their limits get weight 0 until they clear.

Limits per member: requests the router has in flight there (the engine's batch size by
default, so requests wait at the router, not in an engine's queue), the engine's waiting
queue, its KV usage (with hysteresis), and a circuit breaker fed by request failures.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from shared.config import GreyboxConfig
from shared.scheduling.plugins.base import DecisionContext
from shared.scheduling.view import MemberState

log = logging.getLogger("llmsched.scheduler.filter")


def inflight_limit(m: MemberState, settings: GreyboxConfig) -> float:
    """Requests ``m`` may have in flight: configured, registered, learned, or the default."""
    if settings.max_inflight is not None:
        return float(settings.max_inflight)
    base = m.capacity_hint or m.running_cap or settings.default_max_inflight
    return max(1.0, base * settings.inflight_limit_factor)


def guard_reason(m: MemberState, ctx: DecisionContext, settings: GreyboxConfig,
                 warm_factor: float = 1.0) -> str | None:
    """Why ``m`` is guarded now, or None (updates the KV hysteresis and circuit timers).

    ``warm_factor`` multiplies the in-flight limit of a member that holds the request's
    prefix (cache-aware pools): a short wait for a batch slot there beats a full prefill
    elsewhere, which would also cache the prefix twice."""
    if m.circuit == "open":
        if ctx.now < m.open_until:
            return f"circuit open ({m.open_until - ctx.now:.0f}s left)"
        m.circuit, m.trial_successes = "half_open", 0
    if m.circuit == "half_open" and m.inflight > 0:
        return "circuit half-open: one trial request at a time"
    limit = inflight_limit(m, settings)
    if warm_factor != 1.0 and ctx.keys is not None and ctx.keys.warm(m.key, ctx.prompt_tokens):
        limit = max(limit, round(limit * warm_factor))
    if m.inflight >= limit:
        return f"in flight {m.inflight} >= limit {limit:g}"
    if not m.fresh(ctx.now, ctx.stale_after_s):
        return "metrics stale" if settings.stale_policy == "exclude" else None
    if settings.max_waiting is not None and (m.waiting_queue or 0) > settings.max_waiting:
        return f"waiting {m.waiting_queue:g} > {settings.max_waiting:g}"
    usage = m.cache_usage or 0.0
    if m.kv_guarded and usage < settings.resume_kv_usage:
        m.kv_guarded = False
    elif not m.kv_guarded and usage > settings.max_kv_usage:
        m.kv_guarded = True
    if m.kv_guarded:
        return f"KV usage {usage:.2f} (resumes below {settings.resume_kv_usage:g})"
    return None


@dataclass(frozen=True, slots=True)
class GuardFilter:
    """Drops guarded members; when it drops them all, admission control takes over."""

    settings: GreyboxConfig
    warm_factor: float = 1.0
    """In-flight limit multiplier for members warm for the request (cache-aware)."""
    name: str = "guard"

    def filter(self, ctx: DecisionContext, members: list[MemberState]) -> list[MemberState]:
        kept: list[MemberState] = []
        for m in members:
            reason = guard_reason(m, ctx, self.settings, self.warm_factor)
            if reason is None:
                kept.append(m)
            elif ctx.debug:
                log.debug("pool %s:%s guard %s: %s", ctx.pool, ctx.partition, m.key, reason)
        return kept
