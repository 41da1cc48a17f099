"""Composition root of the collector service."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid

import httpx
from nats.aio.msg import Msg

from services.collector.f5_client import F5Client, http_client_for
from services.collector.kv_events import KvEventsBridge
from services.collector.loops import Collector
from services.collector.membership import F5Source, MembershipSource, StaticSource
from services.collector.metrics import CollectorMetrics
from services.collector.ownership import PoolOwnership
from services.collector.scraper import MetricsScraper, open_clients
from services.collector.workers_source import SleepingInstances, WorkersSource
from shared.bus import connect_nats
from shared.config import Config, LoadedConfig
from shared.config_watch import ConfigWatcher
from shared.logs import set_level
from shared.metrics import nats_drops, new_registry, start_listener
from shared.model_registry import ModelRegistry
from shared.pd_registry import PDRegistry
from shared.pd_source import PDSource
from shared.prefix_events import kv_subject
from shared.registry_view import RegistryView
from shared.runtime import run_service
from shared.state import connect_redis
from shared.subjects import Subjects
from shared.tasks import cancel_and_wait
from shared.workers import WorkerRegistry

log = logging.getLogger("llmsched.collector")

SCRAPE_CLIENTS = 32


def run(loaded: LoadedConfig) -> int:
    """``llmsched collector``."""
    return run_service("collector", loaded, serve)


class _Sources:
    """Membership sources; the F5 client is rebuilt when the ``f5`` section changes."""

    def __init__(self, registry: WorkerRegistry) -> None:
        self.workers = WorkersSource(registry)
        self.http: httpx.AsyncClient | None = None
        self.client: F5Client | None = None
        self.source: F5Source | None = None
        self.section: object = None
        self.static = StaticSource()
        self.pd = PDSource(PDRegistry(registry.redis, registry.prefix), registry)

    def current(self) -> dict[str, MembershipSource]:
        """The sources as last built (no F5 client change)."""
        out: dict[str, MembershipSource] = {"static": self.static, "workers": self.workers,
                                            "pd": self.pd}
        if self.source is not None:
            out["f5"] = self.source
        return out

    async def sources(self, config: Config) -> dict[str, MembershipSource]:
        out: dict[str, MembershipSource] = {"static": self.static, "workers": self.workers,
                                            "pd": self.pd}
        if config.f5 != self.section:
            await self.close()
            self.section = config.f5
            if config.f5 is not None:
                self.http = http_client_for(config.f5)
                self.client = F5Client(config.f5, self.http)
                self.source = F5Source(self.client)
        if self.source is not None:
            self.source.max_backoff = config.scheduler.effective_pool_fetch_backoff_max
            out["f5"] = self.source
        return out

    async def close(self) -> None:
        await self.pd.close()
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.close()
        if self.http is not None:
            await self.http.aclose()
        self.http = self.client = self.source = None


async def serve(loaded: LoadedConfig, stop: asyncio.Event, *, nats_url: str | None = None,
                redis_url: str | None = None) -> None:
    """Fetch memberships and scrape metrics until ``stop`` is set."""
    cfg = loaded.config
    me = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    prom = new_registry()
    nc = await connect_nats("collector", nats_url, on_dropped=nats_drops(prom))
    registry = WorkerRegistry(redis_url, prefix=cfg.global_.prefix)
    sources = _Sources(registry)
    # Its own client with short timeouts: an unreachable store must turn into fail-open
    # scraping within about one lease, not after redis-py's defaults.
    timeout = max(0.25, min(1.0, cfg.collector_lease_s()))
    lease_redis = connect_redis(redis_url, socket_timeout=timeout,
                                socket_connect_timeout=timeout, retry_on_timeout=False)
    ownership = PoolOwnership(lease_redis, cfg.global_.prefix, me,
                              lease_s=cfg.collector_lease_s())
    metrics = CollectorMetrics(prom, ownership=ownership)
    # Many small clients: httpx's pool does per-request work that grows with its size.
    async with open_clients(SCRAPE_CLIENTS) as clients, \
            MetricsScraper(clients, user_agent=f"llmsched-collector/{me}") as scraper:
        sleeping = SleepingInstances(registry)
        collector = Collector(nc, Subjects(cfg.global_.prefix), scraper, cfg, sleeping=sleeping,
                              metrics=metrics)
        collector.kv = KvEventsBridge(nc.publish, lambda partition, pool: kv_subject(
            cfg.global_.prefix, partition, pool))
        collector.ownership = ownership

        async def on_resync(_msg: Msg) -> None:
            collector.resync_requested()

        # Before the first snapshot goes out: a scheduler replica that subscribed too late
        # for it asks for a resync, and the server must already route that request here
        # (one connection keeps order: this SUB reaches it before our first publish).
        resyncs = await nc.subscribe(Subjects(cfg.global_.prefix).pool_resync, cb=on_resync)
        collector.apply_config(cfg, await sources.sources(cfg))
        await ownership.tick(collector.pool_idents())  # one round trip before the first fetch
        collector.follow_ownership()
        watcher = ConfigWatcher(loaded)
        models = ModelRegistry(registry.redis, prefix=cfg.global_.prefix)
        view = RegistryView(models, registry)
        applied: dict[str, str] = {}

        def on_registry() -> None:
            aliases = {alias: r.spec.engine for alias, r in view.models.items()}
            if aliases != applied:
                log.info("Registered aliases: %s", ", ".join(sorted(aliases)) or "none")
                applied.clear()
                applied.update(aliases)
                collector.apply_config(collector.config, sources.current(), aliases)
            collector.workers_changed()  # after apply_config: removed pools are gone

        view.listeners.append(on_registry)
        changes = await nc.subscribe(Subjects(cfg.global_.prefix).registry_changed,
                                     cb=view.on_event)

        async def on_config(_old: LoadedConfig, new: LoadedConfig) -> None:
            set_level(new.config.global_.effective_log_level)
            ownership.lease_s = new.config.collector_lease_s()
            collector.apply_config(new.config, await sources.sources(new.config))

        watcher.subscribe(on_config)
        tasks = [asyncio.create_task(watcher.run(stop), name="config watch"),
                 asyncio.create_task(view.run(stop), name="registry view"),
                 asyncio.create_task(sleeping.run(stop), name="sleeping instances"),
                 asyncio.create_task(collector.run_scrapes(stop), name="scrapes"),
                 asyncio.create_task(collector.run_resyncs(stop), name="resyncs"),
                 asyncio.create_task(ownership.run(stop, collector.pool_idents,
                                                   collector.follow_ownership),
                                     name="pool ownership")]
        listener = await start_listener(prom, "collector", cfg.metrics)
        log.info("Collector %s running: %d configured pools (%d served here, lease %g ms), "
                 "scrape every %s", me, len(cfg.pools),
                 len(ownership.active(collector.pool_idents())),
                 ownership.lease_s * 1000,
                 f"{cfg.scheduler.metrics_fetch_interval:g} ms"
                 if cfg.scheduler.metrics_fetch_interval is not None else
                 f"{cfg.scheduler.fast_scrape_interval:g} ms (pools of up to "
                 f"{cfg.scheduler.fast_scrape_max_members} members), 1 s (larger ones)")
        try:
            await stop.wait()
        finally:
            if listener is not None:
                await listener.stop()
            await cancel_and_wait(tasks)
            for sub in (changes, resyncs):
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
            await ownership.leave()  # the others take this one's pools over at once
            await collector.close()
            await sources.close()
            await registry.close()
            await lease_redis.aclose()
            with contextlib.suppress(Exception):
                await nc.drain()
