"""Composition root of the scheduler service."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid

import msgspec
from nats.aio.client import Client as NATS

from services.scheduler.endpoints import SchedulerEndpoints, start_service
from services.scheduler.metrics import PoolsCollector, SchedulerMetrics
from services.scheduler.persist import StatePersister
from shared.bus import EventBatch, connect_nats
from shared.config import LoadedConfig
from shared.config_watch import ConfigWatcher
from shared.lease import Lease
from shared.logs import set_level
from shared.messages import LoadEvent
from shared.metrics import nats_drops, new_registry, start_listener
from shared.routing import SelectionEvent
from shared.runtime import run_service, sleep_or_stop
from shared.scheduling.core import SchedulerCore
from shared.scheduling.follower import ViewFollower, expire_inflight, join, resync_on_reconnect
from shared.scheduling.plugins.registry import default_registry
from shared.scheduling.selection_counts import RedisSelectionStore
from shared.state import RedisStateStore, connect_redis
from shared.subjects import RedisKeys, Subjects
from shared.tasks import cancel_and_wait

log = logging.getLogger("llmsched.scheduler")

PERSIST_STOP_TIMEOUT_S = 5.0
LOAD_PERIOD_S = 1.0
LOAD_LEASE_TTL_S = 3.0
"""Load events come from the replica holding this lease; a dead holder is replaced within
this long plus one tick."""


def run(loaded: LoadedConfig) -> int:
    """``llmsched scheduler``."""
    return run_service("scheduler", loaded, serve)


async def serve(loaded: LoadedConfig, stop: asyncio.Event, *, nats_url: str | None = None,
                redis_url: str | None = None) -> None:
    """Run one scheduler replica until ``stop`` is set."""
    cfg = loaded.config
    replica = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    subjects = Subjects(cfg.global_.prefix)
    keys = RedisKeys(cfg.global_.prefix)
    core = SchedulerCore(cfg, default_registry(), replica=replica)
    prom = new_registry()
    metrics = SchedulerMetrics(prom, member_labels=cfg.metrics.member_labels)
    prom.register(PoolsCollector(core, member_labels=cfg.metrics.member_labels))
    core.feedback.on_learned = metrics.learned
    health: dict[str, bool] = {"ok": True}
    store = RedisStateStore(redis_url, keys=keys)
    counts = RedisSelectionStore(redis_url)
    persister = StatePersister(store, keys, core.view, cfg.scheduler.state_ttl, health,
                               counts=counts)
    watcher = ConfigWatcher(loaded)
    nc = await connect_nats(f"scheduler-{replica}", nats_url, no_echo=True,
                            on_dropped=nats_drops(prom))
    # A lost selection only costs the other replicas this request's count until its outcome
    # or expiry.
    selections = EventBatch[SelectionEvent](nc, subjects.selection, "selection event(s)")

    async def announce(event: SelectionEvent) -> None:
        selections.add(event)

    endpoints = SchedulerEndpoints(core, replica=replica, config_version=loaded.version,
                                   store_ok=health, announce=announce, metrics=metrics)

    def on_config(_old: LoadedConfig, new: LoadedConfig) -> None:
        core.apply_config(new.config)
        endpoints.config_version = new.version
        set_level(new.config.global_.effective_log_level)

    watcher.subscribe(on_config)
    follower = ViewFollower(core, on_snapshot=persister.snapshot_changed,
                            on_metrics=persister.metrics_changed)
    # The micro endpoints keep nats-py's default pending limits: add_endpoint takes none.
    if not await join(core, follower, nc, subjects, store, replica,
                      cfg.scheduler.pending_msgs_limit):
        health["ok"] = False
    service = await start_service(nc, subjects, endpoints)
    listener = await start_listener(prom, "scheduler", cfg.metrics)
    log.info("Scheduler replica %s serving on %s.* (queue group %s)", replica,
             subjects.scheduler_group, subjects.scheduler_queue)
    persisting = asyncio.create_task(persister.run(stop))
    lease_redis = connect_redis(redis_url, socket_timeout=1.0, socket_connect_timeout=1.0,
                                retry_on_timeout=False)
    publisher = Lease(lease_redis, f"{cfg.global_.prefix}:scheduler:load-publisher", replica,
                      LOAD_LEASE_TTL_S, role="load publisher", logger=log)
    tasks = [
        asyncio.create_task(watcher.run(stop)),
        asyncio.create_task(_publish_load(nc, subjects, core, stop, publisher)),
        asyncio.create_task(expire_inflight(core, stop)),
        asyncio.create_task(resync_on_reconnect(nc, subjects, replica, stop)),
    ]
    try:
        await stop.wait()
    finally:
        if listener is not None:
            await listener.stop()
        with contextlib.suppress(Exception):
            await service.stop()
        await follower.unsubscribe()
        await cancel_and_wait(tasks)
        await publisher.release()  # another replica publishes from its next tick
        await lease_redis.aclose()
        # The persister ends by itself after a last flush; cancelled in the middle of one,
        # its selection counts could be added twice. Then the answers given since.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(persisting, PERSIST_STOP_TIMEOUT_S)
            await persister.flush()
        await selections.close()  # the selections still waiting for their pace
        with contextlib.suppress(Exception):
            await nc.drain()
        await counts.close()
        await store.close()






async def _publish_load(nc: NATS, subjects: Subjects, core: SchedulerCore,
                        stop: asyncio.Event, lease: Lease) -> None:
    """One load event per pool every tick (1 s), from the replica holding ``lease`` only.

    Every replica holds the same view, so one publisher is enough; the others renew
    nothing and try to take the lease each tick. With the state store unreachable a
    replica publishes anyway (fail open: duplicates beat silence).
    """
    enc = msgspec.json.Encoder()
    failing_open = False
    while True:
        if await sleep_or_stop(stop, LOAD_PERIOD_S):
            return
        held = await lease.hold()
        outage = not held and not lease.reachable
        if outage != failing_open:
            failing_open = outage
            if outage:
                log.warning("State store unreachable: replica %s publishes load events "
                            "itself until it answers (fail open)", lease.holder)
            else:
                log.info("State store reachable again: load events come from the lease "
                         "holder only")
        if not held and not outage:
            continue
        now = time.time()
        for pool in list(core.view.pools.values()):
            serving = [m for m in pool.members.values() if m.available and not m.asleep]
            stale_after = core.config.stale_after_s(len(pool.members))
            fresh = [m for m in serving if m.fresh(now, stale_after)]
            event = LoadEvent(
                name=pool.name, partition=pool.partition, members=len(pool.members),
                available=len(serving),
                waiting_queue=sum(m.waiting_queue or 0.0 for m in fresh),
                running_req=sum(m.running_req or 0.0 for m in fresh),
                cache_usage_avg=(sum(m.cache_usage or 0.0 for m in fresh) / len(fresh))
                if fresh else 0.0,
                at=now,
                inflight={m.key: m.inflight for m in pool.members.values() if m.inflight},
            )
            try:
                await nc.publish(subjects.load(pool.name), enc.encode(event))
            except Exception as err:
                log.debug("Load event not published: %s", err)
