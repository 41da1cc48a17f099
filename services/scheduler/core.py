"""The scheduler's logic without I/O: config + view + profiles → answers."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

from services.scheduler.analysis import analyze, simulate
from services.scheduler.decide import Decision, decide, score_candidates
from services.scheduler.plugins.base import DecisionContext
from services.scheduler.plugins.registry import PluginRegistry, Profile, build_profile
from services.scheduler.view import ClusterView, PoolState
from shared.config import Config, PoolConfig
from shared.messages import (
    AnalyzeReply,
    MemberStatus,
    PoolStatus,
    SelectRequest,
    SimulateReply,
)

log = logging.getLogger("llmsched.scheduler")


class SchedulerCore:
    """Answers select/simulate/analyze/status from the in-memory view."""

    def __init__(self, config: Config, registry: PluginRegistry, *,
                 rng: random.Random | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.view = ClusterView()
        self.registry = registry
        self.rng = rng or random.Random()
        self.clock = clock
        self.config = config
        self._profiles: dict[tuple[str, str], Profile] = {}
        self._pool_cfg: dict[tuple[str, str], PoolConfig] = {}
        self.apply_config(config)

    def apply_config(self, config: Config) -> None:
        """Rebuild profiles; drop pools that left the config."""
        self.config = config
        self._pool_cfg = {p.ident: p for p in config.pools}
        self._profiles = {
            p.ident: build_profile(self.registry, config.mode_for(p), p.fallback)
            for p in config.pools
        }
        for ident in self.view.retain(set(self._pool_cfg)):
            log.info("Pool %s:%s left the config; dropped from the view", *ident)
        s = config.scheduler
        self.stale_after_s = s.metrics_fetch_interval / 1000.0 * s.stale_after_intervals

    def pool_config(self, name: str, partition: str) -> PoolConfig | None:
        return self._pool_cfg.get((name, partition))

    def _ctx(self, pool: str, partition: str) -> DecisionContext:
        return DecisionContext(pool=pool, partition=partition, now=self.clock(),
                               stale_after_s=self.stale_after_s, rng=self.rng,
                               debug=log.isEnabledFor(logging.DEBUG))

    def _lookup(self, pool: str, partition: str
                ) -> tuple[PoolState | None, Profile | None, bool]:
        ident = (pool, partition)
        cfg = self._pool_cfg.get(ident)
        if cfg is None:
            return None, None, False
        return self.view.pools.get(ident), self._profiles[ident], cfg.fallback.pool_fallback

    def select(self, req: SelectRequest) -> Decision:
        """One decision, counted in the pool's selection statistics."""
        pool, profile, fallback = self._lookup(req.pool_name, req.partition)
        if profile is None:
            log.debug("pool %s:%s answer none: not configured", req.pool_name, req.partition)
            return Decision("none", "pool_unknown")
        ctx = self._ctx(req.pool_name, req.partition)
        decision = decide(pool, req.members, profile, ctx, pool_fallback=fallback)
        if pool is not None:
            pool.count(decision.answer)
        return decision

    def simulate(self, req: SelectRequest, iterations: int) -> SimulateReply:
        pool, profile, fallback = self._lookup(req.pool_name, req.partition)
        ctx = self._ctx(req.pool_name, req.partition)
        return simulate(pool, profile, fallback, req.members, iterations, ctx)

    def analyze(self, req: SelectRequest, iterations: int) -> AnalyzeReply:
        pool, profile, fallback = self._lookup(req.pool_name, req.partition)
        ctx = self._ctx(req.pool_name, req.partition)
        return analyze(pool, profile, fallback, req.members, iterations, ctx)

    def pool_status(self, name: str, partition: str) -> PoolStatus | None:
        """Status of one configured pool (None when not configured)."""
        cfg = self._pool_cfg.get((name, partition))
        if cfg is None:
            return None
        pool = self.view.pools.get(cfg.ident)
        now = self.clock()
        mode = self.config.mode_for(cfg).name
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
            fresh = m.fresh(now, self.stale_after_s)
            members.append(MemberStatus(
                ip=m.host, port=m.port, key=m.key, available=m.available,
                score=round(by_key.get(m.key, 0.0), 6),
                metrics={"waiting_queue": m.waiting_queue, "cache_usage": m.cache_usage,
                         "running_req": m.running_req, **m.extra},
                metrics_age_s=None if m.metrics_at is None else round(now - m.metrics_at, 3),
                stale=not fresh, scrape_error=m.last_error,
                selections=selections.get(m.key, 0),
                asleep=m.asleep, excluded=m.exclusion(),
            ))
        return PoolStatus(
            name=name, partition=partition, engine_type=pool.engine_type,
            member_count=len(members), members=members, source=pool.source, mode=mode,
            pool_fallback=cfg.fallback.pool_fallback,
            snapshot_age_s=round(now - pool.fetched_at, 3), source_error=pool.source_error,
            selections=selections, selections_scope=scope,
        )

    def all_status(self) -> list[PoolStatus]:
        out = []
        for cfg in self.config.pools:
            status = self.pool_status(cfg.name, cfg.partition)
            if status is not None:
                out.append(status)
        return out
