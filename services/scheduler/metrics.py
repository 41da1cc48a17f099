"""The scheduler replica's own series: decisions by reason, predictor error, the pools' state.

Per decision: one counter increment on a child bound on first use. Everything about the
pools (members, exclusions by reason, in flight, metrics age) is read from the in-memory
view when Prometheus scrapes, never on the decision path.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from shared.scheduling.core import SchedulerCore
from shared.scheduling.decide import answer_kind
from shared.scheduling.plugins.base import DecisionContext
from shared.scheduling.plugins.guard import GuardFilter, guard_reason
from shared.scheduling.plugins.registry import Profile
from shared.scheduling.view import MemberState, PoolState

ERROR_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
"""|ln predicted − ln observed|: 0.1 is 10 % off, 0.7 a factor of 2, 2.3 a factor of 10."""
GUARD_REASONS = (("circuit open", "circuit_open"), ("circuit half-open", "circuit_half_open"),
                 ("in flight", "inflight_limit"), ("metrics stale", "stale"),
                 ("waiting", "waiting_limit"), ("KV usage", "kv_usage"))


class SchedulerMetrics:
    """``llmsched_scheduler_decisions_total`` and the predictor's error."""

    def __init__(self, registry: CollectorRegistry, *, member_labels: bool = False) -> None:
        self._decisions = Counter("llmsched_scheduler_decisions_total",
                                  "Select and route decisions of this replica by answer kind "
                                  "(member, none, fallback, busy) and reason",
                                  ["endpoint", "answer", "reason"], registry=registry)
        self._members = Counter("llmsched_scheduler_member_selections_total",
                                "Decisions that chose each member (metrics.member_labels)",
                                ["pool", "partition", "member"],
                                registry=registry) if member_labels else None
        self._error = Histogram("llmsched_scheduler_predictor_abs_log_error",
                                "|ln predicted TTFT − ln observed TTFT| of greybox requests "
                                "(every replica sees every outcome)", ["pool", "partition"],
                                buckets=ERROR_BUCKETS, registry=registry)
        self._bound: dict[tuple[str, str, str], Counter] = {}

    def decided(self, endpoint: str, pool: str, partition: str, answer: str,
                reason: str) -> None:
        """One decision of ``endpoint`` (select or route)."""
        kind = answer_kind(answer)
        child = self._bound.get((endpoint, kind, reason))
        if child is None:
            child = self._bound[(endpoint, kind, reason)] = self._decisions.labels(
                endpoint, kind, reason)
        child.inc()
        if self._members is not None and kind == "member":
            self._members.labels(pool, partition, answer).inc()

    def learned(self, pool: tuple[str, str], predicted_s: float | None,
                observed_s: float) -> None:
        """A greybox request's TTFT arrived; ``predicted_s`` is what it was routed on."""
        if predicted_s is None or predicted_s <= 0 or observed_s <= 0:
            return
        self._error.labels(*pool).observe(abs(math.log(predicted_s) - math.log(observed_s)))


def exclusion(member: MemberState, profile: Profile, ctx: DecisionContext) -> str | None:
    """Why a decision would leave ``member`` out now (one reason, in decision order)."""
    if not member.available:
        return "unavailable"
    if member.asleep:
        return "asleep"
    for f in profile.filters:
        if isinstance(f, GuardFilter):
            reason = guard_reason(member, ctx, f.settings, f.warm_factor)
            if reason is not None:
                return next((name for prefix, name in GUARD_REASONS
                             if reason.startswith(prefix)), "guard")
        elif not f.filter(ctx, [member]):
            return f.name
    if profile.require_fresh and not member.fresh(ctx.now, ctx.stale_after_s):
        return "scrape_error" if member.last_error else "stale"
    return None


class PoolsCollector(Collector):
    """Gauges of every pool this replica holds, computed when scraped."""

    def __init__(self, core: SchedulerCore, *, member_labels: bool = False) -> None:
        self.core = core
        self.member_labels = member_labels

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["pool", "partition"]
        members = GaugeMetricFamily("llmsched_scheduler_members",
                                    "Members of each pool", labels=labels)
        excluded = GaugeMetricFamily("llmsched_scheduler_excluded_members",
                                     "Members a decision would leave out now, by reason",
                                     labels=[*labels, "reason"])
        inflight = GaugeMetricFamily("llmsched_scheduler_inflight_requests",
                                     "Requests routed to the pool's members and not yet "
                                     "finished, fleet-wide", labels=labels)
        age = GaugeMetricFamily("llmsched_scheduler_metrics_age_seconds",
                                "Age of the oldest metrics of the pool's available members",
                                labels=labels)
        per_member = [
            GaugeMetricFamily("llmsched_scheduler_member_inflight_requests",
                              "Requests in flight per member", labels=[*labels, "member"]),
            GaugeMetricFamily("llmsched_scheduler_member_metrics_age_seconds",
                              "Age of each member's last good metrics",
                              labels=[*labels, "member"]),
        ]
        now = self.core.clock()
        for pool in list(self.core.view.pools.values()):
            ident = [pool.name, pool.partition]
            members.add_metric(ident, len(pool.members))
            inflight.add_metric(ident, sum(m.inflight for m in pool.members.values()))
            for reason, count in self._exclusions(pool).items():
                excluded.add_metric([*ident, reason], count)
            ages = [now - m.metrics_at for m in pool.members.values()
                    if m.available and m.metrics_at is not None]
            if ages:
                age.add_metric(ident, max(ages))
            if self.member_labels:
                for m in pool.members.values():
                    per_member[0].add_metric([*ident, m.key], m.inflight)
                    if m.metrics_at is not None:
                        per_member[1].add_metric([*ident, m.key], now - m.metrics_at)
        yield from (members, excluded, inflight, age)
        if self.member_labels:
            yield from per_member

    def _exclusions(self, pool: PoolState) -> dict[str, int]:
        profile = self.core.profile(pool.name, pool.partition)
        if profile is None:
            return {}
        ctx = self.core.decision_context(pool.name, pool.partition)
        counts: dict[str, int] = {}
        for member in pool.members.values():
            reason = exclusion(member, profile, ctx)
            if reason is not None:
                counts[reason] = counts.get(reason, 0) + 1
        return counts
