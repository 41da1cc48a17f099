"""Simulate and analyze: many selections against the current scores (seed 002)."""

from __future__ import annotations

from shared.messages import AnalyzeReply, MemberAnalysis, OverallStats, SimulateReply
from shared.scheduling.decide import Scored, score_candidates
from shared.scheduling.plugins.base import DecisionContext
from shared.scheduling.plugins.registry import Profile
from shared.scheduling.view import PoolState


def _run(pool: PoolState | None, profile: Profile | None, fallback: bool, members: list[str],
         iterations: int, ctx: DecisionContext) -> tuple[dict[str, int], Scored | None]:
    """Answer counts, and the scores they were drawn from (computed once for all picks)."""
    if profile is None:
        return ({"none": iterations} if iterations else {}), None
    if fallback:
        return ({"fallback": iterations} if iterations else {}), None
    quiet = DecisionContext(pool=ctx.pool, partition=ctx.partition, now=ctx.now,
                            stale_after_s=ctx.stale_after_s, rng=ctx.rng, debug=False)
    scored = score_candidates(pool, members, profile, quiet)
    if scored.reason != "scored":
        return ({"none": iterations} if iterations else {}), scored
    counts: dict[str, int] = {}
    for chosen in profile.picker.pick_many(quiet, scored.members, scored.scores, iterations):
        key = "none" if chosen is None else chosen.key
        counts[key] = counts.get(key, 0) + 1
    return counts, scored


def simulate(pool: PoolState | None, profile: Profile | None, fallback: bool,
             members: list[str], iterations: int, ctx: DecisionContext) -> SimulateReply:
    """Counts of each answer over ``iterations`` selections."""
    counts, _scored = _run(pool, profile, fallback, members, iterations, ctx)
    return SimulateReply(results=counts, iterations=iterations)


def analyze(pool: PoolState | None, profile: Profile | None, fallback: bool,
            members: list[str], iterations: int, ctx: DecisionContext) -> AnalyzeReply:
    """Theoretical (score share) versus observed selection probability per member."""
    counts, scored = _run(pool, profile, fallback, members, iterations, ctx)
    theoretical: dict[str, float] = {}
    if scored is not None:
        total = sum(s for s in scored.scores if s > 0)
        if total > 0:
            for m, s in zip(scored.members, scored.scores, strict=True):
                theoretical[m.key] = max(s, 0.0) / total
    analysis: dict[str, MemberAnalysis] = {}
    deviations: list[float] = []
    worst_pct = 0.0
    for key, p in theoretical.items():
        n = counts.get(key, 0)
        actual = n / iterations if iterations else 0.0
        dev = actual - p
        pct = dev / p * 100 if p > 0 else 0.0
        analysis[key] = MemberAnalysis(
            theoretical_probability=round(p, 4), actual_probability=round(actual, 4),
            selection_count=n, deviation=round(dev, 4), deviation_percentage=round(pct, 2),
        )
        deviations.append(abs(dev))
        if p > 0:
            worst_pct = max(worst_pct, abs(pct))
    stats = OverallStats(
        total_iterations=iterations,
        avg_deviation=round(sum(deviations) / len(deviations), 4) if deviations else 0.0,
        max_deviation=round(max(deviations), 4) if deviations else 0.0,
        quality_score=round(max(0.0, 100.0 - worst_pct), 2) if theoretical else 0.0,
    )
    others = {k: v for k, v in counts.items() if k in ("none", "fallback")}
    return AnalyzeReply(member_analysis=analysis, overall_stats=stats, answers=others)
