"""The scheduler's logic without I/O: config + view + profiles → answers."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any

from shared.config import Config, PoolConfig
from shared.engines import PREFIX_CACHING_FLAG
from shared.members import static_snapshot
from shared.messages import (
    REMOVED,
    AnalyzeReply,
    MemberStatus,
    PoolSnapshot,
    PoolStatus,
    SelectRequest,
    SimulateReply,
)
from shared.prefix_events import KvUpdate
from shared.routing import OutcomeEvent, RouteReply, RouteRequest, SelectionEvent
from shared.scheduling.analysis import analyze, simulate
from shared.scheduling.decide import Decision, decide, pick, score_candidates, score_members
from shared.scheduling.feedback import Feedback
from shared.scheduling.inflight import InflightTracker
from shared.scheduling.plugins.base import DecisionContext
from shared.scheduling.plugins.greybox_scorer import member_features
from shared.scheduling.plugins.guard import guard_reason, inflight_limit
from shared.scheduling.plugins.prefix_scorer import prefix_features
from shared.scheduling.plugins.registry import PluginRegistry, Profile, build_profile
from shared.scheduling.predictor import PredictorSettings
from shared.scheduling.prefix_routing import PrefixRouting
from shared.scheduling.view import ClusterView, MemberState, PoolState
from shared.subjects import MODELS_PARTITION

log = logging.getLogger("llmsched.scheduler")


class SchedulerCore:
    """Answers select/simulate/analyze/status from the in-memory view."""

    def __init__(self, config: Config, registry: PluginRegistry, *,
                 rng: random.Random | None = None,
                 clock: Callable[[], float] = time.time, replica: str = "") -> None:
        self.view = ClusterView()
        self.registry = registry
        self.rng = rng or random.Random()
        self.clock = clock
        self.replica = replica
        self.config = config
        self.feedback = Feedback(self.view, clock)
        self.prefix = PrefixRouting()
        self._select_seq = 0
        self._profiles: dict[tuple[str, str], Profile] = {}
        self._pool_cfg: dict[tuple[str, str], PoolConfig] = {}
        self._implicit: dict[tuple[str, str], PoolConfig] = {}
        self.apply_config(config)

    def apply_config(self, config: Config) -> None:
        """Rebuild profiles; drop pools that left the config (registered aliases' pools stay)."""
        self.config = config
        self._implicit = {
            ident: config.implicit_pool(ident[0], cfg.engine_type)
            for ident, cfg in self._implicit.items() if config.configured_alias(ident[0]) is None
        }
        self._pool_cfg = {**self._implicit, **{p.ident: p for p in config.pools}}
        self._profiles = {}
        for ident, pool in self._pool_cfg.items():
            self._set_profile(ident, pool)
        for ident in self.view.retain(set(self._pool_cfg)):
            log.info("Pool %s:%s left the config; dropped from the view", *ident)
        self.prefix.retain(set(self._pool_cfg))
        self.stale_after_s = config.stale_after_s(0)
        """The staleness window of small pools (each pool's own comes from its size)."""

    def pool_config(self, name: str, partition: str) -> PoolConfig | None:
        return self._pool_cfg.get((name, partition))

    def profile(self, name: str, partition: str) -> Profile | None:
        """The scoring profile of a known pool."""
        return self._profiles.get((name, partition))

    def decision_context(self, name: str, partition: str) -> DecisionContext:
        """What a decision on the pool would see now."""
        return self._ctx(name, partition)

    def accept_snapshot(self, snap: PoolSnapshot) -> bool:
        """Whether this replica keeps ``snap``'s pool: configured, or a registered alias's."""
        ident = (snap.pool, snap.partition)
        if snap.source == REMOVED:
            if ident in self._implicit:
                del self._implicit[ident], self._pool_cfg[ident], self._profiles[ident]
                self.view.retain(set(self._pool_cfg))
                self.feedback.configure(ident, None, None)
                log.info("Registered alias %s deleted: pool %s:%s dropped", snap.pool,
                         snap.pool, snap.partition)
            return False
        if ident in self._pool_cfg:
            return True
        if snap.partition != MODELS_PARTITION or self.config.configured_alias(snap.pool):
            return False
        cfg = self.config.implicit_pool(snap.pool, snap.engine_type)
        self._implicit[ident] = self._pool_cfg[ident] = cfg
        self._set_profile(ident, cfg)
        log.info("Registered alias %s: its instances form pool %s:%s (mode %s)", snap.pool,
                 snap.pool, snap.partition, self.config.mode_for(cfg).name)
        return True

    def _set_profile(self, ident: tuple[str, str], pool: PoolConfig) -> None:
        mode = self.config.mode_for(pool)
        self._profiles[ident] = build_profile(self.registry, mode, pool.fallback)
        self.prefix.configure(ident, mode.cache_aware if mode.type == "cache_aware" else None)
        if mode.type in ("greybox", "cache_aware"):
            p = mode.greybox.predictor
            self.feedback.configure(ident, PredictorSettings(
                min_samples=p.min_samples, forgetting=p.forgetting, ridge=p.ridge,
                max_residual=p.max_residual), mode.greybox.circuit)
        else:
            self.feedback.configure(ident, None, None)

    # -- in-flight accounting and learning (every replica applies every event) ---------
    @property
    def inflight(self) -> InflightTracker:
        return self.feedback.inflight

    def seed_static_pools(self) -> list[str]:
        """Configured static pools that no snapshot has reached: their members as the config
        lists them, dated 0 so that any collector's snapshot replaces them. A replica that
        starts before the collector then routes them at once instead of answering
        ``pool_empty`` (their metrics arrive with the first scrape)."""
        seeded = []
        for cfg in self.config.pools:
            if (self.config.pool_source(cfg) != "static"
                    or self.view.get(cfg.name, cfg.partition) is not None):
                continue
            self.sync_pool(self.view.apply_snapshot(static_snapshot(cfg, 0.0)))
            seeded.append(f"{cfg.name}:{cfg.partition}")
        return seeded

    def sync_pool(self, pool: PoolState) -> None:
        """Copy the tracker's counts onto a pool's members (after a membership change)."""
        for member in pool.members.values():
            member.inflight = self.inflight.count((pool.name, pool.partition, member.key))

    def apply_selection(self, event: SelectionEvent) -> None:
        """Another replica routed a request: count it here too (and what it was routed on)."""
        self.feedback.selection(event, self.replica)
        if event.prefix_hashes and event.replica != self.replica:
            self.prefix.routed((event.pool, event.partition), event.member,
                               event.prefix_hashes, event.at)

    def apply_outcome(self, event: OutcomeEvent) -> None:
        """A routed request finished (or failed): it leaves the count and teaches (an F5
        report at the response headers leaves it at the member's next scrape, and does
        not teach)."""
        self.feedback.outcome(event)

    def apply_kv(self, update: KvUpdate) -> None:
        """An engine's KV cache changed (the collector's bridge of its events)."""
        self.prefix.apply_kv(update)

    def expire_inflight(self) -> int:
        """Drop requests whose outcome never came; returns how many."""
        for ident in self.inflight.reported_pools():
            self._settle(ident)
        return self.feedback.expire()

    def _settle(self, ident: tuple[str, str]) -> None:
        """Reported selects of a pool leave the count at their member's next scrape (or
        after the pool's staleness window, when its metrics fail)."""
        if not self.inflight.reported(*ident):  # the usual case on the select path
            return
        pool = self.view.pools.get(ident)
        wait_s = self.config.stale_after_s(len(pool.members) if pool else 0)
        self.feedback.settle(ident, self.clock(), wait_s)

    def _count_routed(self, pool: PoolState, member: MemberState, request_id: str,
                      ttl_s: float, ctx: DecisionContext) -> SelectionEvent:
        """Count a request this replica routed; the event tells the other replicas."""
        now = self.clock()
        features: tuple[float, ...] = ()
        predicted: float | None = None
        predictor = ctx.predictor
        if predictor is not None:
            features = (prefix_features(member, ctx) if ctx.keys is not None
                        else member_features(member, ctx))
            value, _trusted = predictor.predict((pool.name, pool.partition, member.key),
                                                features)
            predicted = value if value == value else None  # NaN: no model yet
        self.feedback.routed(request_id, (pool.name, pool.partition, member.key), ttl_s,
                             features, predicted, now)
        hashes = ctx.keys.prefix_hashes if ctx.keys is not None else []
        self.prefix.routed((pool.name, pool.partition), member.key, hashes, now)
        return SelectionEvent(request_id=request_id, pool=pool.name, partition=pool.partition,
                              member=member.key, replica=self.replica, at=now, ttl_s=ttl_s,
                              features=list(features), predicted_ttft_s=predicted,
                              prefix_hashes=hashes)

    def route(self, req: RouteRequest) -> tuple[RouteReply, SelectionEvent | None]:
        """The gateway's choice among all of a pool's members (minus those tried)."""
        pool, profile, fallback = self._lookup(req.pool, req.partition)
        if profile is None:
            return RouteReply(answer="none", reason="pool_unknown"), None
        if pool is None or not pool.members:
            return RouteReply(answer="none", reason="pool_empty"), None
        self._settle((pool.name, pool.partition))
        # Awake and available (what ``MemberState.exclusion`` checks), written out: hot path.
        active = [m for m in pool.members.values() if m.available and not m.asleep]
        tried = req.exclude
        members = [m for m in active if m.key not in tried] if tried else active
        ctx = self._ctx(req.pool, req.partition, prompt_tokens=req.prompt_chars / 4,
                        state=pool)
        if req.prompt_tokens > 0:
            ctx.prompt_tokens = float(req.prompt_tokens)
        self._keys(ctx, pool, req.prefix_hashes, req.token_keys, req.session,
                   [m.key for m in members])
        if fallback:
            # pool_fallback asks for the caller's own load balancing; here the gateway is
            # that balancer, so it takes the member with the fewest requests in flight.
            chosen = _fewest_inflight(members, self.rng)
            decision = Decision(chosen.key, "pool_fallback") if chosen else Decision(
                "none", "no_candidates")
        else:
            # The members are candidates already (known, available, awake, each once).
            decision = pick(score_members(members, profile, ctx), profile, ctx)
        pool.count(decision.answer)
        member = pool.members.get(decision.answer)
        if member is None:
            return RouteReply(answer=decision.answer if decision.answer == "busy" else "none",
                              reason=decision.reason, active=len(active)), None
        event = self._count_routed(pool, member, req.request_id, req.ttl_s, ctx)
        return RouteReply(answer=member.key, reason=decision.reason, url=member.base_url(),
                          active=len(active)), event

    def _keys(self, ctx: DecisionContext, pool: PoolState, hashes: list[int],
              token_keys: list[int], session: str, members: list[str]) -> None:
        """Cache-aware pools: what each candidate holds of the prompt, and the session."""
        ident = (pool.name, pool.partition)
        if not self.prefix.enabled(ident):
            return  # the select hot path of other pools pays nothing here
        # A member whose engine says it does not cache prefixes holds nothing worth
        # routing to: no affinity and no warm exception there.
        caching = [k for k in members
                   if (m := pool.members.get(k)) is None or m.extra.get(PREFIX_CACHING_FLAG) != 0.0]
        ctx.keys = self.prefix.keys(ident, hashes, token_keys, session, caching, ctx.now)
        if ctx.keys is not None and ctx.keys.session:
            ctx.pool_members = tuple(sorted(pool.members))

    def _ctx(self, pool: str, partition: str, prompt_tokens: float = 0.0,
             state: PoolState | None = None) -> DecisionContext:
        if state is None:
            state = self.view.pools.get((pool, partition))
        stale_after = self.config.stale_after_s(len(state.members) if state else 0)
        return DecisionContext(pool=pool, partition=partition, now=self.clock(),
                               stale_after_s=stale_after, rng=self.rng,
                               debug=log.isEnabledFor(logging.DEBUG),
                               prompt_tokens=prompt_tokens,
                               predictor=self.feedback.predictors.get((pool, partition)))

    def _select_ctx(self, pool: str, partition: str) -> DecisionContext:
        ctx = self._ctx(pool, partition)
        # Selects are counted only until the engine shows them (greybox pools, which have a
        # predictor); elsewhere nothing counts them and load stays the router's own figure.
        ctx.engine_counts = ctx.predictor is not None
        return ctx

    def _lookup(self, pool: str, partition: str
                ) -> tuple[PoolState | None, Profile | None, bool]:
        ident = (pool, partition)
        cfg = self._pool_cfg.get(ident)
        if cfg is None:
            return None, None, False
        return self.view.pools.get(ident), self._profiles[ident], cfg.fallback.pool_fallback

    def select(self, req: SelectRequest) -> tuple[Decision, SelectionEvent | None]:
        """One decision, counted in the pool's selection statistics.

        A greybox pool also counts the selection as in flight (until the iRule reports
        its outcome and a scrape of the member shows the engine holding it, or until
        ``select_inflight_ttl_s`` passes): the event tells the replicas.
        """
        pool, profile, fallback = self._lookup(req.pool_name, req.partition)
        if profile is None:
            log.debug("pool %s:%s answer none: not configured", req.pool_name, req.partition)
            return Decision("none", "pool_unknown"), None
        if pool is not None:
            self._settle((pool.name, pool.partition))
        ctx = self._select_ctx(req.pool_name, req.partition)
        if pool is not None:
            self._keys(ctx, pool, self.prefix.select_hashes(req.prefix_hashes, req.prefix_key),
                       [], req.session or "", req.members)
        decision = decide(pool, req.members, profile, ctx, pool_fallback=fallback)
        if pool is None:
            return decision, None
        pool.count(decision.answer)
        member = pool.members.get(decision.answer)
        if member is None or ctx.predictor is None:
            return decision, None
        self._select_seq += 1
        ttl = self.config.mode_for(self._pool_cfg[(pool.name, pool.partition)]
                                   ).greybox.select_inflight_ttl_s
        return decision, self._count_routed(pool, member, f"s-{self.replica}-"
                                            f"{self._select_seq}", ttl, ctx)

    def simulate(self, req: SelectRequest, iterations: int) -> SimulateReply:
        pool, profile, fallback = self._lookup(req.pool_name, req.partition)
        ctx = self._select_ctx(req.pool_name, req.partition)
        return simulate(pool, profile, fallback, req.members, iterations, ctx)

    def analyze(self, req: SelectRequest, iterations: int) -> AnalyzeReply:
        pool, profile, fallback = self._lookup(req.pool_name, req.partition)
        ctx = self._select_ctx(req.pool_name, req.partition)
        return analyze(pool, profile, fallback, req.members, iterations, ctx)

    def pool_status(self, name: str, partition: str) -> PoolStatus | None:
        """Status of one configured pool (None when not configured)."""
        cfg = self._pool_cfg.get((name, partition))
        if cfg is None:
            return None
        pool = self.view.pools.get(cfg.ident)
        now = self.clock()
        mode = self.config.mode_for(cfg).name
        self._settle(cfg.ident)
        if pool is None:
            return PoolStatus(name=name, partition=partition, engine_type=cfg.engine_type,
                              member_count=0, members=[], source=self.config.pool_source(cfg),
                              mode=mode, pool_fallback=cfg.fallback.pool_fallback,
                              source_error="no membership received yet")
        ctx = self._ctx(name, partition)
        selections, scope = pool.counts.totals()
        keys = list(pool.members)
        scored = score_candidates(pool, keys, self._profiles[cfg.ident], ctx)
        by_key = dict(zip((m.key for m in scored.members), scored.scores, strict=True))
        members = []
        for m in pool.members.values():
            fresh = m.fresh(now, ctx.stale_after_s)
            members.append(MemberStatus(
                ip=m.host, port=m.port, key=m.key, available=m.available,
                score=round(by_key.get(m.key, 0.0), 6),
                metrics={"waiting_queue": m.waiting_queue, "cache_usage": m.cache_usage,
                         "running_req": m.running_req, **m.extra},
                metrics_age_s=None if m.metrics_at is None else round(now - m.metrics_at, 3),
                stale=not fresh, scrape_error=m.last_error,
                selections=selections.get(m.key, 0),
                asleep=m.asleep, excluded=m.exclusion(), inflight=m.inflight,
                **self._greybox_status(cfg, m, ctx),
            ))
        return PoolStatus(
            name=name, partition=partition, engine_type=pool.engine_type,
            member_count=len(members), members=members, source=pool.source, mode=mode,
            pool_fallback=cfg.fallback.pool_fallback,
            snapshot_age_s=round(now - pool.fetched_at, 3), source_error=pool.source_error,
            selections=selections, selections_scope=scope,
        )

    def _greybox_status(self, cfg: PoolConfig, m: MemberState, ctx: DecisionContext
                        ) -> dict[str, Any]:
        """Prediction, guard and circuit of a member of a greybox pool (empty otherwise)."""
        mode = self.config.mode_for(cfg)
        if mode.type not in ("greybox", "cache_aware") or ctx.predictor is None:
            return {}
        ident = (cfg.name, cfg.partition, m.key)
        ttft, trusted = ctx.predictor.predict(ident, member_features(m, ctx))
        return {"greybox": {
            "predicted_ttft_s": None if ttft != ttft else round(ttft, 4),
            "trusted": trusted, "limit": inflight_limit(m, mode.greybox),
            "guard": guard_reason(m, ctx, mode.greybox), "circuit": m.circuit,
            "model": ctx.predictor.describe(ident),
            **({"prefix": self.prefix.describe(cfg.ident, m.key)}
               if mode.type == "cache_aware" else {})}}

    def records(self, pool: str, partition: str, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` joined records of a pool, oldest first."""
        kept = self.feedback.records.get((pool, partition))
        if not kept or limit <= 0:
            return []
        return list(kept)[-limit:]

    def all_status(self) -> list[PoolStatus]:
        out = []
        for cfg in self._pool_cfg.values():
            status = self.pool_status(cfg.name, cfg.partition)
            if status is not None:
                out.append(status)
        return out


def _fewest_inflight(members: list[MemberState], rng: random.Random) -> MemberState | None:
    if not members:
        return None
    low = min(m.inflight for m in members)
    return rng.choice([m for m in members if m.inflight == low])
