"""Durable copy of the view in Redis: coalesced writes and retries (warm-up on start is in
shared/scheduling/follower.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import msgspec

from shared.messages import MetricsBatch
from shared.scheduling.selection_counts import SelectionStore, flush_selections
from shared.scheduling.view import ClusterView
from shared.state import StateStore
from shared.subjects import RedisKeys

log = logging.getLogger("llmsched.scheduler.persist")


class StatePersister:
    """Writes the latest snapshot/metrics of changed pools and adds this replica's new
    selections to the fleet-wide counts; an outage only delays writes."""

    def __init__(self, store: StateStore, keys: RedisKeys, view: ClusterView, ttl_s: float,
                 health: dict[str, bool], counts: SelectionStore | None = None) -> None:
        self.store = store
        self.keys = keys
        self.view = view
        self.ttl_s = ttl_s
        self.health = health
        self.counts = counts
        self._snapshots: dict[tuple[str, str], bytes] = {}
        self._dirty_metrics: set[tuple[str, str]] = set()
        self._enc = msgspec.json.Encoder()

    def snapshot_changed(self, ident: tuple[str, str], raw: bytes) -> None:
        self._snapshots[ident] = raw

    def metrics_changed(self, ident: tuple[str, str]) -> None:
        self._dirty_metrics.add(ident)

    async def flush(self) -> None:
        """Write what changed since the last successful flush; on failure the fleet-wide
        selection totals become unknown (status then shows this replica's own)."""
        try:
            await self._write_state()
            await self._flush_selections()
        except BaseException:
            for pool in self.view.pools.values():
                pool.counts.fleet = None
            raise

    async def _write_state(self) -> None:
        items: dict[str, bytes] = {}
        for (pool, partition), raw in self._snapshots.items():
            items[self.keys.snapshot(partition, pool)] = raw
        for ident in self._dirty_metrics:
            state = self.view.pools.get(ident)
            if state is None:
                continue
            batch = MetricsBatch(pool=ident[0], partition=ident[1], round_started_at=0.0,
                                 members=[m.to_metrics() for m in state.members.values()])
            items[self.keys.metrics(ident[1], ident[0])] = self._enc.encode(batch)
        if not items:
            return
        await self.store.put_many(items, self.ttl_s)
        self._snapshots.clear()
        self._dirty_metrics.clear()

    async def _flush_selections(self) -> None:
        if self.counts is not None:
            await flush_selections(self.view, self.counts, self.keys, self.ttl_s)

    async def run(self, stop: asyncio.Event, period_s: float = 0.5) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=period_s)
            try:
                await self.flush()
                if not self.health.get("ok", False):
                    log.info("State store reachable again; durable copy up to date")
                self.health["ok"] = True
            except Exception as err:
                if self.health.get("ok", True):
                    log.warning("State store write failed (%s); selects continue from memory,"
                                " will retry", err)
                self.health["ok"] = False

