"""Composition root of the collector service."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import httpx

from services.collector.f5_client import F5Client, http_client_for
from services.collector.kv_events import KvEventsBridge
from services.collector.loops import Collector
from services.collector.membership import F5Source, MembershipSource, StaticSource
from services.collector.metrics import CollectorMetrics
from services.collector.scraper import MetricsScraper, open_clients
from services.collector.workers_source import SleepingInstances, WorkersSource
from shared.bus import connect_nats
from shared.config import Config, LoadedConfig
from shared.config_watch import ConfigWatcher
from shared.logs import set_level
from shared.metrics import new_registry, start_listener
from shared.model_registry import ModelRegistry
from shared.pd_registry import PDRegistry
from shared.pd_source import PDSource
from shared.prefix_events import kv_subject
from shared.registry_view import RegistryView
from shared.runtime import run_service
from shared.subjects import Subjects
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
    prom = new_registry()
    metrics = CollectorMetrics(prom)
    nc = await connect_nats("collector", nats_url)
    registry = WorkerRegistry(redis_url, prefix=cfg.global_.prefix)
    sources = _Sources(registry)
    # Many small clients: httpx's pool does per-request work that grows with its size.
    async with open_clients(SCRAPE_CLIENTS) as clients, MetricsScraper(clients) as scraper:
        sleeping = SleepingInstances(registry)
        collector = Collector(nc, Subjects(cfg.global_.prefix), scraper, cfg, sleeping=sleeping,
                              metrics=metrics)
        collector.kv = KvEventsBridge(nc.publish, lambda partition, pool: kv_subject(
            cfg.global_.prefix, partition, pool))
        collector.apply_config(cfg, await sources.sources(cfg))
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

        view.listeners.append(on_registry)
        changes = await nc.subscribe(Subjects(cfg.global_.prefix).registry_changed,
                                     cb=view.on_event)

        async def on_config(_old: LoadedConfig, new: LoadedConfig) -> None:
            set_level(new.config.global_.effective_log_level)
            collector.apply_config(new.config, await sources.sources(new.config))

        watcher.subscribe(on_config)
        tasks = [asyncio.create_task(watcher.run(stop)),
                 asyncio.create_task(view.run(stop)),
                 asyncio.create_task(sleeping.run(stop)),
                 asyncio.create_task(collector.run_scrapes(stop))]
        listener = await start_listener(prom, "collector", cfg.metrics)
        log.info("Collector running: %d configured pools, scrape every %s", len(cfg.pools),
                 f"{cfg.scheduler.metrics_fetch_interval:g} ms"
                 if cfg.scheduler.metrics_fetch_interval is not None else
                 f"{cfg.scheduler.fast_scrape_interval:g} ms (pools of up to "
                 f"{cfg.scheduler.fast_scrape_max_members} members), 1 s (larger ones)")
        try:
            await stop.wait()
        finally:
            if listener is not None:
                await listener.stop()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                await changes.unsubscribe()
            await collector.close()
            await sources.close()
            await registry.close()
            with contextlib.suppress(Exception):
                await nc.drain()
