"""Seed-000 member threshold filter on raw running/waiting values."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from shared.scheduling.plugins.base import DecisionContext
from shared.scheduling.view import MemberState

log = logging.getLogger("llmsched.scheduler.filter")


@dataclass(frozen=True, slots=True)
class ThresholdFilter:
    """Drop members whose running or waiting count is above its threshold; keep unmeasured ones."""

    running_req_threshold: float | None = None
    waiting_queue_threshold: float | None = None
    name: str = "threshold"

    def filter(self, ctx: DecisionContext, members: list[MemberState]) -> list[MemberState]:
        run_t, wait_t = self.running_req_threshold, self.waiting_queue_threshold
        if run_t is None and wait_t is None:
            return members
        kept: list[MemberState] = []
        for m in members:
            if not m.fresh(ctx.now, ctx.stale_after_s):
                kept.append(m)  # no usable metrics: kept (conservative), scored 0 later
                continue
            if run_t is not None and m.running_req is not None and m.running_req > run_t:
                if ctx.debug:
                    log.debug("pool %s:%s exclude %s: running_req %s > threshold %s",
                              ctx.pool, ctx.partition, m.key, m.running_req, run_t)
                continue
            if wait_t is not None and m.waiting_queue is not None and m.waiting_queue > wait_t:
                if ctx.debug:
                    log.debug("pool %s:%s exclude %s: waiting_queue %s > threshold %s",
                              ctx.pool, ctx.partition, m.key, m.waiting_queue, wait_t)
                continue
            kept.append(m)
        return kept
