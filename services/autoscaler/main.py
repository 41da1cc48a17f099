"""Composition root of the autoscaler: wakes, starts, sleeps and unloads instances (SPEC §2.4)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid

import httpx
import msgspec
from nats.aio.msg import Msg

from services.autoscaler.executor import WorkerActions
from services.autoscaler.lease import Lease
from services.autoscaler.metrics import AutoscalerMetrics
from services.autoscaler.scaler import Scaler
from shared.auth import admin_key_from_env
from shared.bus import connect_nats
from shared.config import LoadedConfig
from shared.config_watch import ConfigWatcher
from shared.logs import set_level
from shared.messages import LoadEvent
from shared.metrics import nats_drops, new_registry, start_listener
from shared.model_registry import ModelRegistry
from shared.registry_view import RegistryView, announce
from shared.routing import DemandEvent
from shared.runtime import run_service
from shared.scaling import ActionRecord, ScalingLog
from shared.subjects import Subjects
from shared.tasks import cancel_and_wait
from shared.workers import WorkerRegistry

log = logging.getLogger("llmsched.autoscaler")

LEASE_TTL_S = 3.0
"""A dead leader is replaced within this long (plus one tick)."""


def log_load(event: LoadEvent, serving: dict[tuple[str, str], bool]) -> None:
    """Load at DEBUG (it changes every tick); INFO when a pool gains or loses availability."""
    log.debug("Load %s:%s available=%d/%d running=%.0f waiting=%.0f kv_avg=%.2f",
              event.name, event.partition, event.available, event.members,
              event.running_req, event.waiting_queue, event.cache_usage_avg)
    ident = (event.name, event.partition)
    available = event.available > 0
    if serving.get(ident) != available:
        serving[ident] = available
        log.info("Pool %s:%s %s: %d of %d members available", event.name, event.partition,
                 "available" if available else "unavailable", event.available, event.members)


def run(loaded: LoadedConfig) -> int:
    """``llmsched autoscaler``."""
    return run_service("autoscaler", loaded, serve)


async def serve(loaded: LoadedConfig, stop: asyncio.Event, *, nats_url: str | None = None,
                redis_url: str | None = None) -> None:
    """Scale registered aliases until ``stop``; only the lease holder acts."""
    cfg = loaded.config
    prefix = cfg.global_.prefix
    subjects = Subjects(prefix)
    name = f"autoscaler-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    prom = new_registry()
    nc = await connect_nats("autoscaler", nats_url, on_dropped=nats_drops(prom))
    registry = WorkerRegistry(redis_url, prefix=prefix)
    models = ModelRegistry(registry.redis, prefix=prefix)
    view = RegistryView(models, registry)
    lease = Lease(registry.redis, f"{prefix}:autoscaler:leader", name, LEASE_TTL_S)
    encode = msgspec.json.Encoder().encode
    metrics: AutoscalerMetrics | None = None

    async def publish(record: ActionRecord) -> None:
        if metrics is not None:
            metrics.acted(record)
        await nc.publish(subjects.autoscaler_action, encode(record))

    async def leading() -> bool:
        lead = await lease.hold()
        if metrics is not None:
            metrics.leader = lead
        return lead

    async def announce_change(kind: str, item: str, op: str) -> None:
        await announce(nc, subjects.registry_changed, kind, item, op)

    async with httpx.AsyncClient() as http:
        scaler = Scaler(cfg, view, registry, ScalingLog(registry.redis, prefix),
                        WorkerActions(http, admin_key_from_env()), publish, announce_change,
                        name=name)
        metrics = AutoscalerMetrics(prom, scaler)
        watcher = ConfigWatcher(loaded)

        def on_config(_old: LoadedConfig, new: LoadedConfig) -> None:
            scaler.config = new.config
            set_level(new.config.global_.effective_log_level)

        watcher.subscribe(on_config)
        load_dec = msgspec.json.Decoder(LoadEvent)
        demand_dec = msgspec.json.Decoder(DemandEvent)

        serving: dict[tuple[str, str], bool] = {}  # pool → had an available member last time

        async def on_load(msg: Msg) -> None:
            try:
                event = load_dec.decode(msg.data)
            except msgspec.DecodeError as err:
                log.warning("Dropping malformed load event: %s", err)
                return
            log_load(event, serving)
            scaler.on_load(event)

        async def on_demand(msg: Msg) -> None:
            try:
                scaler.on_demand(demand_dec.decode(msg.data))
            except msgspec.DecodeError as err:
                log.warning("Dropping malformed demand event: %s", err)

        subs = [await nc.subscribe(subjects.load_all, cb=on_load),
                await nc.subscribe(subjects.autoscaler_demand, cb=on_demand),
                await nc.subscribe(subjects.registry_changed, cb=view.on_event)]
        tasks = [asyncio.create_task(watcher.run(stop)),
                 asyncio.create_task(view.run(stop)),
                 asyncio.create_task(scaler.run(stop, leading))]
        listener = await start_listener(prom, "autoscaler", cfg.metrics)
        log.info("Autoscaler %s running (leader lease %s)", name, lease.key)
        try:
            await stop.wait()
        finally:
            if listener is not None:
                await listener.stop()
            await cancel_and_wait(tasks)
            await lease.release()
            for sub in subs:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
            with contextlib.suppress(Exception):
                await nc.drain()
            await registry.close()
