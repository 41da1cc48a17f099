"""The collector's loops: pool membership per pool, and one scrape round per interval."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping

import msgspec
from nats.aio.client import Client as NATS

from services.collector.asleep import AsleepTracker
from services.collector.kv_events import KvEventsBridge
from services.collector.membership import MembershipSource
from services.collector.metrics import CollectorMetrics
from services.collector.ownership import PoolOwnership
from services.collector.scraper import MetricsScraper
from services.collector.workers_source import SleepingInstances
from shared.config import Config, PoolConfig
from shared.messages import REMOVED, PoolSnapshot
from shared.runtime import sleep_or_stop
from shared.subjects import MODELS_PARTITION, Subjects
from shared.tasks import cancel_and_wait

log = logging.getLogger("llmsched.collector")

RESYNC_MIN_GAP_S = 1.0
"""Resync answers: at most one republish of each pool this often, however many ask."""
RECONNECT_POLL_S = 0.5


class Collector:
    """Keeps one membership task per configured pool and a fixed-rate scrape loop."""

    def __init__(self, nc: NATS, subjects: Subjects, scraper: MetricsScraper,
                 config: Config, *, sleeping: SleepingInstances | None = None,
                 metrics: CollectorMetrics | None = None) -> None:
        self.nc = nc
        self.metrics = metrics
        self.subjects = subjects
        self.scraper = scraper
        self.config = config
        self.registered: dict[str, str] = {}
        self.pools: list[PoolConfig] = list(config.pools)
        self.sleeping = sleeping
        self.asleep = AsleepTracker()
        self.kv: KvEventsBridge | None = None
        """Listens to the KV-cache events of pools with ``kv_events`` (set by the service)."""
        self.ownership: PoolOwnership | None = None
        """Which pools this collector serves when several run (None: every pool)."""
        self._sources: dict[str, MembershipSource] = {}
        self.snapshots: dict[tuple[str, str], PoolSnapshot] = {}
        self._last_metrics: dict[tuple[str, str], bytes] = {}
        """The last published metrics batch of each pool served, for resyncs."""
        self._resync = asyncio.Event()
        self._tasks: dict[tuple[str, str],
                          tuple[PoolConfig, MembershipSource, asyncio.Task[None]]] = {}
        self._enc = msgspec.json.Encoder()
        self._wake = asyncio.Event()
        self._workers_changed = asyncio.Event()
        """Set (and replaced) when the worker registry changed: see :meth:`workers_changed`."""
        self._due: dict[tuple[str, str], float] = {}
        self._removals: set[asyncio.Future[None]] = set()
        self._retired: set[asyncio.Task[None]] = set()
        """Membership tasks cancelled but maybe not ended yet (:meth:`close` waits for them)."""

    def apply_config(self, config: Config, sources: dict[str, MembershipSource],
                     registered: Mapping[str, str] | None = None) -> None:
        """Start, restart or stop membership tasks for pools whose config changed.

        ``registered``: alias → engine of every registered model; each alias no configured
        pool serves gets its implicit pool (its instances on active workers).
        """
        self.config = config
        if registered is not None:
            self.registered = dict(registered)
        implicit = [config.implicit_pool(alias, engine)
                    for alias, engine in sorted(self.registered.items())
                    if config.configured_alias(alias) is None]
        before = {p.ident for p in self.pools}
        self.pools = [*config.pools, *implicit]
        self._sources = sources
        self.follow_ownership()
        if self.ownership is not None and {p.ident for p in self.pools} != before:
            self.ownership.kick()  # lease new pools now, not at the next heartbeat

    def workers_changed(self) -> None:
        """A worker's instances changed: pools drawn from workers re-read them now.

        An instance that became ready is routable within a heartbeat, not a poll later,
        and a dead one leaves selection as soon as its worker says so.
        """
        changed, self._workers_changed = self._workers_changed, asyncio.Event()
        changed.set()

    def pool_idents(self) -> list[tuple[str, str]]:
        """Every pool of the config and the registry (whoever owns it)."""
        return [p.ident for p in self.pools]

    def mine(self, ident: tuple[str, str], now: float | None = None) -> bool:
        """Does this collector serve the pool now (always, when it runs alone)?"""
        return self.ownership is None or self.ownership.owns(ident, now)

    def follow_ownership(self) -> None:
        """Run membership (and with it KV-event bridges) for exactly the pools served now.

        A pool gone from the config is announced removed (registered aliases); a pool
        handed to another collector is dropped quietly: its new owner publishes it.
        """
        config, sources = self.config, self._sources
        configured = {p.ident: p for p in self.pools}
        served = {ident: p for ident, p in configured.items() if self.mine(ident)}
        if self.kv is not None:
            self.kv.retain(set(served))
        if self.metrics is not None:
            self.metrics.forget(set(served))
            self.metrics.served = len(served)
        for ident, (old_cfg, old_source, task) in list(self._tasks.items()):
            new_cfg = served.get(ident)
            new_source = sources.get(config.pool_source(new_cfg)) if new_cfg else None
            if new_cfg != old_cfg or new_source is not old_source:
                task.cancel()
                del self._tasks[ident]
                if not task.done():
                    self._retired.add(task)
                    task.add_done_callback(self._retired.discard)
                if new_cfg is None:
                    gone = self.snapshots.pop(ident, None)
                    self._last_metrics.pop(ident, None)
                    if (gone is not None and ident not in configured
                            and ident[1] == MODELS_PARTITION):
                        self._announce_removed(gone)
                    self.asleep.forget(ident)
        for ident, pool in served.items():
            if ident not in self._tasks:
                source = sources[config.pool_source(pool)]
                task = asyncio.create_task(self._membership(pool, source),
                                           name=f"members {ident}")
                self._tasks[ident] = (pool, source, task)

    def _announce_removed(self, last: PoolSnapshot) -> None:
        """A registered alias was deleted: tell the schedulers its pool is gone."""
        removed = msgspec.structs.replace(last, members=[], source=REMOVED,
                                          fetched_at=time.time())
        subject = self.subjects.pool_snapshot(last.partition, last.pool)
        task = asyncio.ensure_future(self.nc.publish(subject, self._enc.encode(removed)))
        self._removals.add(task)
        task.add_done_callback(self._removals.discard)
        log.info("Pool %s:%s removed: its alias is no longer registered", last.pool,
                 last.partition)

    def _current(self, ident: tuple[str, str]) -> bool:
        """Is the running task still the membership task of ``ident``? A task that lost
        its cancel (see :mod:`shared.tasks`) ends at its next round instead of publishing a
        pool that was removed or handed over."""
        entry = self._tasks.get(ident)
        return entry is not None and entry[2] is asyncio.current_task()

    async def _membership(self, pool: PoolConfig, source: MembershipSource) -> None:
        subject = self.subjects.pool_snapshot(pool.partition, pool.name)
        while self._current(pool.ident):
            source_name = self.config.pool_source(pool)
            f5 = self.metrics if source_name == "f5" else None
            changed = self._workers_changed  # a change during the fetch: fetch again at once
            try:
                snap = await source.snapshot(pool, pool.engine_type)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("Pool %s:%s membership fetch failed", pool.name, pool.partition)
                if f5 is not None:
                    f5.fetched(pool.ident, failed=True)
                await asyncio.sleep(self.config.scheduler.pool_fetch_interval)
                continue
            if not self._current(pool.ident):
                return  # stopped or handed over during the fetch: its answer is not ours
            if f5 is not None:
                f5.fetched(pool.ident, failed=snap.error is not None)
            first = (pool.name, pool.partition) not in self.snapshots
            self.snapshots[pool.ident] = snap
            if self.kv is not None:
                self.kv.sync(pool, snap.members)
            try:
                await self.nc.publish(subject, self._enc.encode(snap))
            except Exception as err:
                log.warning("Snapshot of %s:%s not published: %s", pool.name, pool.partition,
                            err)
            if first:
                self._wake.set()  # scrape a new pool at once instead of waiting a tick
            delay = source.next_delay(pool)
            if delay is None:
                delay = self.config.scheduler.pool_fetch_interval
            if source_name == "workers":
                # asyncio.timeout, not wait_for: on 3.11 wait_for may swallow a cancel that
                # lands as the event fires, and a removed pool would be published again.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await changed.wait()
            else:
                await asyncio.sleep(delay)

    async def scrape_round(self, now: float | None = None) -> int:
        """Scrape the pools that are due (all, without ``now``); returns members scraped.

        Each pool has its own interval (small pools 10 Hz by default), so a round takes
        the pools due now and sets their next time.
        """
        sleeping = self.sleeping.current() if self.sleeping is not None else {}
        jobs = []
        for pool in self.pools:
            snap = self.snapshots.get(pool.ident)
            if snap is None or not self.mine(pool.ident):
                continue
            if now is not None:
                if self._due.get(pool.ident, 0.0) > now:
                    continue
                interval = self.config.scrape_interval_s(len(snap.members))
                self._due[pool.ident] = max(self._due.get(pool.ident, now) + interval, now)
            jobs.append(self._scrape_pool(pool, snap, sleeping))
        counts = await asyncio.gather(*jobs)
        return sum(counts)

    def _next_due(self, now: float) -> float:
        """When the next pool is due (at most a second away: new pools appear)."""
        known = [self._due.get(p.ident, now) for p in self.pools if p.ident in self.snapshots]
        return min([now + 1.0, *known])

    async def _scrape_pool(self, pool: PoolConfig, snap: PoolSnapshot,
                           sleeping: Mapping[str, str]) -> int:
        spec = self.config.engine_spec(pool)
        started = time.perf_counter()
        batch = await self.scraper.scrape_pool(pool, spec, snap.members)
        if self.metrics is not None:
            self.metrics.scraped(pool.ident, batch, time.perf_counter() - started)
        batch = self.asleep.apply(pool, snap.members, batch, sleeping)
        data = self._enc.encode(batch)
        self._last_metrics[pool.ident] = data
        try:
            await self.nc.publish(self.subjects.member_metrics(pool.partition, pool.name), data)
        except Exception as err:
            log.warning("Metrics of %s:%s not published: %s", pool.name, pool.partition, err)
        return len(batch.members)

    async def run_scrapes(self, stop: asyncio.Event) -> None:
        """Fixed-rate rounds per pool: a slow round delays the next one, never overlaps it."""
        slow_logged = 0.0
        while not stop.is_set():
            self._wake.clear()
            started = time.monotonic()
            try:
                await self.scrape_round(started)
            except Exception:
                log.exception("Scrape round failed")
            now = time.monotonic()
            late = now - self._next_due(started)
            if late > 0.5 and now - slow_logged > 60:
                slow_logged = now
                log.warning("Scrape rounds fall %.2fs behind their intervals (too many members "
                            "for this collector, or a slow machine)", late)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wait_any(stop, self._wake),
                                       self._next_due(now) - now)

    def resync_requested(self) -> None:
        """A scheduler replica joined or reconnected: republish the pools served here."""
        self._resync.set()

    async def run_resyncs(self, stop: asyncio.Event) -> None:
        """Answer resync requests: republish at once, then at most once per
        ``RESYNC_MIN_GAP_S``; requests in between are answered together by the next round
        (so every one is answered after it arrived, and many replicas do not storm).

        Also republishes after this collector reconnects to NATS: a replica that came back
        first asked while nobody was listening.
        """
        reconnects = self.nc.stats["reconnects"]
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wait_any(stop, self._resync), RECONNECT_POLL_S)
            if stop.is_set():
                return
            if self.nc.stats["reconnects"] != reconnects and self.nc.is_connected:
                reconnects = self.nc.stats["reconnects"]
                log.info("Reconnected to NATS: republishing the pools served here")
                self._resync.set()
            if not self._resync.is_set():
                continue
            self._resync.clear()
            await self.republish()
            if await sleep_or_stop(stop, RESYNC_MIN_GAP_S):
                return

    async def republish(self) -> int:
        """Publish again the current snapshot and last metrics batch of every pool served
        here (only the owner of a pool answers); returns the pools republished."""
        count = 0
        for pool in list(self.pools):
            snap = self.snapshots.get(pool.ident)
            if snap is None or not self.mine(pool.ident):
                continue  # not fetched yet (its first fetch publishes it), or not ours
            metrics = self._last_metrics.get(pool.ident)
            try:
                await self.nc.publish(self.subjects.pool_snapshot(pool.partition, pool.name),
                                      self._enc.encode(snap))
                if metrics is not None:
                    await self.nc.publish(
                        self.subjects.member_metrics(pool.partition, pool.name), metrics)
            except Exception as err:
                log.warning("Resync of %s:%s not published: %s", pool.name, pool.partition,
                            err)
                continue
            count += 1
        log.info("Resync asked: republished %d pool(s)", count)
        return count

    async def _wait_any(self, stop: asyncio.Event, event: asyncio.Event) -> None:
        waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(event.wait())]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    async def close(self) -> None:
        if self.kv is not None:
            await self.kv.close()
        tasks = [task for _cfg, _src, task in self._tasks.values()]
        self._tasks.clear()  # before the cancel: a loop that ignores it ends at its next round
        await cancel_and_wait([*tasks, *self._retired])
