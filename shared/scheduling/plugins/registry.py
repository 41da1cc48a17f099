"""Plugin factories keyed by type name, and profiles assembled from config."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shared.config import FallbackConfig, ModeConfig
from shared.scheduling.plugins.base import DecisionContext, Filter, Picker, Scorer
from shared.scheduling.plugins.best import BestPicker
from shared.scheduling.plugins.greybox_scorer import GreyboxScorer
from shared.scheduling.plugins.guard import GuardFilter
from shared.scheduling.plugins.kv_scorer import KVCacheScorer
from shared.scheduling.plugins.latency_scorer import LatencyScorer
from shared.scheduling.plugins.load_scorer import LoadScorer
from shared.scheduling.plugins.prefix_scorer import CacheAffinityScorer
from shared.scheduling.plugins.queue_scorer import QueueScorer
from shared.scheduling.plugins.relative_load_scorer import RelativeLoadScorer
from shared.scheduling.plugins.round_robin import RoundRobinPicker
from shared.scheduling.plugins.session_affinity import SessionScorer
from shared.scheduling.plugins.threshold import ThresholdFilter
from shared.scheduling.plugins.uniform_scorer import UniformScorer
from shared.scheduling.plugins.weighted_random import WeightedRandomPicker
from shared.scheduling.view import MemberState


@dataclass(frozen=True, slots=True)
class Profile:
    """filters → Σ weight·clamp(score) → picker; members without fresh metrics score 0."""

    name: str
    filters: tuple[Filter, ...]
    scorers: tuple[tuple[float, Scorer], ...]
    picker: Picker
    require_fresh: bool = True
    admission: bool = False
    """When the filters leave nobody, answer ``busy`` (admission control) instead of none."""

    def filter(self, ctx: DecisionContext, members: list[MemberState]) -> list[MemberState]:
        for f in self.filters:
            members = f.filter(ctx, members)
            if not members:
                break
        return members

    def score(self, ctx: DecisionContext, members: list[MemberState]) -> list[float]:
        totals = [0.0] * len(members)
        subset = members
        rated: list[int] | None = None  # None: every member is rated, in order
        if self.require_fresh:
            # Freshness is decided once here; scorers only ever see fresh members.
            now, window = ctx.now, ctx.stale_after_s
            fresh = [i for i, m in enumerate(members) if m.fresh(now, window)]
            if len(fresh) < len(members):
                rated, subset = fresh, [members[i] for i in fresh]
        for weight, scorer in self.scorers:
            if weight == 0:
                continue
            scores = scorer.score(ctx, subset)
            if len(scores) != len(subset):
                raise ValueError(f"scorer {scorer.name} rated {len(scores)} of "
                                 f"{len(subset)} members")
            for j, s in enumerate(scores):
                if s is not None:
                    # The gateway decides per request: the clamp is written out, not min/max.
                    totals[j if rated is None else rated[j]] += (
                        weight * (0.0 if s < 0.0 else 1.0 if s > 1.0 else s))
        return totals


@dataclass
class PluginRegistry:
    """Factories for filters, scorers and pickers; new types register here, not in callers."""

    filters: dict[str, Callable[..., Filter]] = field(default_factory=dict)
    scorers: dict[str, Callable[..., Scorer]] = field(default_factory=dict)
    pickers: dict[str, Callable[..., Picker]] = field(default_factory=dict)

    def filter(self, kind: str, **params: Any) -> Filter:
        return self.filters[kind](**params)

    def scorer(self, kind: str, **params: Any) -> Scorer:
        return self.scorers[kind](**params)

    def picker(self, kind: str, **params: Any) -> Picker:
        return self.pickers[kind](**params)


def default_registry() -> PluginRegistry:
    """The built-in plugins."""
    registry = _builtin()
    registry.scorers.update(cache_affinity=CacheAffinityScorer, session=SessionScorer)
    return registry


def _builtin() -> PluginRegistry:
    return PluginRegistry(
        filters={"threshold": ThresholdFilter, "guard": GuardFilter},
        scorers={"queue": QueueScorer, "kv_cache": KVCacheScorer, "load": LoadScorer,
                 "greybox": GreyboxScorer, "uniform": UniformScorer,
                 "relative_load": RelativeLoadScorer, "latency": LatencyScorer},
        pickers={"weighted_random": WeightedRandomPicker, "best": BestPicker,
                 "round_robin": RoundRobinPicker},
    )


def build_profile(registry: PluginRegistry, mode: ModeConfig, fallback: FallbackConfig) -> Profile:
    """The pool's profile: the seed-000 threshold filter wraps the mode's scoring.

    ``s1``: queue and KV scorers, weighted random pick (seed 002). ``least_load``: the
    load scorer, best pick (what the gateway uses for registered aliases by default).
    ``greybox``: guard filter (admission when it leaves nobody), predicted TTFT or least
    load, best pick among near-equals (SPEC §3). ``round_robin``: members in turn.
    ``weighted``: Σ weight × (relative load, KV cache, latency), best pick (seed 004).
    """
    threshold = registry.filter(
        "threshold",
        running_req_threshold=fallback.member_running_req_threshold,
        waiting_queue_threshold=fallback.member_waiting_queue_threshold,
    )
    if mode.type == "greybox":
        g = mode.greybox
        return Profile(name=mode.name, filters=(threshold, registry.filter("guard", settings=g)),
                       scorers=((1.0, registry.scorer("greybox", settings=g)),),
                       picker=registry.picker("best", tolerance=g.predictor.explore),
                       require_fresh=False, admission=g.admission)
    if mode.type == "cache_aware":
        # The greybox guard and admission first; then cache affinity weighed against load.
        g, c = mode.greybox, mode.cache_aware
        scorers: list[tuple[float, Scorer]] = [
            (1.0, registry.scorer("cache_affinity", settings=c))]
        if c.session is not None:
            scorers.append((2.0, registry.scorer("session", settings=c.session)))
        guard = registry.filter("guard", settings=g, warm_factor=c.warm_inflight_factor)
        return Profile(name=mode.name, filters=(threshold, guard), scorers=tuple(scorers),
                       picker=registry.picker("best", tolerance=g.predictor.explore),
                       require_fresh=False, admission=g.admission)
    if mode.type == "least_load":
        # In-flight counts are the router's own: a member without fresh metrics still has one.
        return Profile(name=mode.name, filters=(threshold,),
                       scorers=((1.0, registry.scorer("load")),),
                       picker=registry.picker("best"), require_fresh=False)
    if mode.type == "round_robin":
        return Profile(name=mode.name, filters=(threshold,),
                       scorers=((1.0, registry.scorer("uniform")),),
                       picker=registry.picker("round_robin"), require_fresh=False)
    if mode.type == "weighted":
        w = mode.weighted
        return Profile(name=mode.name, filters=(threshold,),
                       scorers=((w.load_weight, registry.scorer("relative_load")),
                                (w.kv_cache_weight, registry.scorer("kv_cache")),
                                (w.latency_weight, registry.scorer("latency"))),
                       picker=registry.picker("best"), require_fresh=False)
    if mode.type != "s1":
        raise ValueError(f"unknown scoring profile {mode.type!r}")
    return Profile(
        name=mode.name,
        filters=(threshold,),
        scorers=((mode.w_a, registry.scorer("queue")), (mode.w_b, registry.scorer("kv_cache"))),
        picker=registry.picker("weighted_random"),
    )
