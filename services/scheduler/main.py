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
from nats.aio.msg import Msg

from services.scheduler.endpoints import SchedulerEndpoints, start_service
from services.scheduler.metrics import PoolsCollector, SchedulerMetrics
from services.scheduler.persist import StatePersister, warm_up
from services.scheduler.selections import RedisSelectionStore
from shared.bus import EventBatch, connect_nats
from shared.config import LoadedConfig
from shared.config_watch import ConfigWatcher
from shared.lease import Lease
from shared.logs import set_level
from shared.messages import REMOVED, LoadEvent, MetricsBatch, PoolSnapshot
from shared.metrics import nats_drops, new_registry, start_listener
from shared.prefix_events import KvUpdate, kv_subject_all
from shared.routing import OutcomeEvent, SelectionEvent
from shared.runtime import run_service, sleep_or_stop
from shared.scheduling.core import SchedulerCore
from shared.scheduling.plugins.registry import default_registry
from shared.scheduling.view import MemberState
from shared.state import RedisStateStore, connect_redis
from shared.subjects import RedisKeys, Subjects

log = logging.getLogger("llmsched.scheduler")

PERSIST_STOP_TIMEOUT_S = 5.0
LOAD_PERIOD_S = 1.0
LOAD_LEASE_TTL_S = 3.0
"""Load events come from the replica holding this lease; a dead holder is replaced within
this long plus one tick."""
RESYNC_WAIT_S = 0.5
"""At start, how long a replica waits (counted from its resync request, warm-up included)
for the collectors' answers before joining the queue group, when pools are still unknown."""
RECONNECT_POLL_S = 0.5


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
    snap_dec = msgspec.json.Decoder(PoolSnapshot)
    met_dec = msgspec.json.Decoder(MetricsBatch)

    arrived = asyncio.Event()

    async def on_snapshot(msg: Msg) -> None:
        arrived.set()
        try:
            snap = snap_dec.decode(msg.data)
        except msgspec.DecodeError as err:
            log.warning("Dropping malformed pool snapshot on %s: %s", msg.subject, err)
            return
        if not core.accept_snapshot(snap):
            if snap.source == REMOVED:  # so a restarted replica does not bring it back
                persister.snapshot_changed((snap.pool, snap.partition), msg.data)
            return
        before = core.view.get(snap.pool, snap.partition)
        old_keys = set(before.members) if before else set()
        state = core.view.apply_snapshot(snap)
        core.sync_pool(state)
        if set(state.members) != old_keys:
            log.info("Pool %s:%s membership: %d members (%d available)", snap.pool,
                     snap.partition, len(state.members),
                     sum(1 for m in state.members.values() if m.available))
        persister.snapshot_changed((snap.pool, snap.partition), msg.data)

    async def on_metrics(msg: Msg) -> None:
        try:
            batch = met_dec.decode(msg.data)
        except msgspec.DecodeError as err:
            log.warning("Dropping malformed metrics batch on %s: %s", msg.subject, err)
            return
        if _seen(core, batch):
            return  # a resync's copy of a batch this replica already has: learn nothing twice
        sleep_changes: list[MemberState] = []
        if core.view.apply_metrics(batch, sleep_changes) is not None:
            persister.metrics_changed((batch.pool, batch.partition))
        for member in sleep_changes:
            if member.asleep:
                log.info("Pool %s:%s member %s asleep (%s): out of selection until awake",
                         batch.pool, batch.partition, member.key, member.asleep_reason)
            else:
                log.info("Pool %s:%s member %s awake: back in selection", batch.pool,
                         batch.partition, member.key)

    sel_dec = msgspec.json.Decoder(SelectionEvent | list[SelectionEvent])  # one, or a batch
    out_dec = msgspec.json.Decoder(OutcomeEvent | list[OutcomeEvent])  # one, or a batch

    async def on_selection(msg: Msg) -> None:
        try:
            events = sel_dec.decode(msg.data)
        except msgspec.DecodeError as err:
            log.warning("Dropping malformed selection event: %s", err)
            return
        if isinstance(events, list):
            for event in events:
                core.apply_selection(event)
        else:
            core.apply_selection(events)

    async def on_outcome(msg: Msg) -> None:
        try:
            outcomes = out_dec.decode(msg.data)
        except msgspec.DecodeError as err:
            log.warning("Dropping malformed outcome event: %s", err)
            return
        if isinstance(outcomes, list):
            for outcome in outcomes:
                core.apply_outcome(outcome)
        else:
            core.apply_outcome(outcomes)

    kv_dec = msgspec.json.Decoder(KvUpdate)

    async def on_kv(msg: Msg) -> None:
        try:
            core.apply_kv(kv_dec.decode(msg.data))
        except (msgspec.DecodeError, msgspec.ValidationError) as err:
            log.warning("Dropping malformed KV update: %s", err)

    # Past this many unread messages nats-py drops the next ones (counted and logged, see
    # shared/slow_consumer.py). The micro endpoints keep nats-py's default: add_endpoint
    # takes no pending limits.
    limit = cfg.scheduler.pending_msgs_limit
    subs = [
        await nc.subscribe(subject, cb=cb, pending_msgs_limit=limit)
        for subject, cb in ((subjects.pool_snapshot_all, on_snapshot),
                            (subjects.member_metrics_all, on_metrics),
                            (subjects.selection, on_selection),
                            (subjects.request_outcome, on_outcome),
                            (kv_subject_all(cfg.global_.prefix), on_kv))
    ]
    asked = time.monotonic()
    await _ask_resync(nc, subjects, replica)  # after subscribing: the answers reach us
    try:
        restored = await warm_up(store, keys, core.view, accept=core.accept_snapshot)
        log.info("Warmed up from the state store: %d pools", restored)
    except Exception as err:
        health["ok"] = False
        log.warning("State store unreachable at start (%s); starting from live events only", err)
    await _await_pools(core, arrived, asked + RESYNC_WAIT_S)
    seeded = core.seed_static_pools()
    if seeded:
        log.info("No snapshot yet for static pool(s) %s: serving their configured members "
                 "until the collector's first snapshot", ", ".join(seeded))
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
        asyncio.create_task(_expire_inflight(core, stop)),
        asyncio.create_task(_resync_on_reconnect(nc, subjects, replica, stop)),
    ]
    try:
        await stop.wait()
    finally:
        if listener is not None:
            await listener.stop()
        with contextlib.suppress(Exception):
            await service.stop()
        for sub in subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await publisher.release()  # another replica publishes from its next tick
        await lease_redis.aclose()
        # The persister ends by itself after a last flush; cancelled in the middle of one,
        # its selection counts could be added twice. Then the answers given since.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(persisting, PERSIST_STOP_TIMEOUT_S)
            await persister.flush()
        with contextlib.suppress(Exception):
            await nc.drain()
        await counts.close()
        await store.close()


async def _ask_resync(nc: NATS, subjects: Subjects, replica: str) -> None:
    """Ask the collectors to republish their pools now (fail open: none answering, the
    replica keeps what it has and the next fetches bring the rest)."""
    try:
        await nc.publish(subjects.pool_resync, replica.encode())
        await nc.flush(timeout=2)
    except Exception as err:
        log.warning("Resync request not sent (%s); pools arrive with the next fetches", err)


async def _await_pools(core: SchedulerCore, arrived: asyncio.Event, deadline: float) -> None:
    """Wait until every configured pool is known, at most until ``deadline`` (monotonic);
    ``arrived`` is set on each snapshot."""
    wanted = {pool.ident for pool in core.config.pools}
    while not wanted <= core.view.pools.keys():
        arrived.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(arrived.wait(), deadline - time.monotonic())
        if time.monotonic() >= deadline:
            return


async def _resync_on_reconnect(nc: NATS, subjects: Subjects, replica: str,
                               stop: asyncio.Event) -> None:
    """After a NATS outage, ask for a resync: snapshots published meanwhile were lost."""
    seen = nc.stats["reconnects"]
    while not await sleep_or_stop(stop, RECONNECT_POLL_S):
        if nc.stats["reconnects"] != seen and nc.is_connected:
            seen = nc.stats["reconnects"]
            log.info("Reconnected to NATS: asking the collectors for a resync")
            await _ask_resync(nc, subjects, replica)


def _seen(core: SchedulerCore, batch: MetricsBatch) -> bool:
    """Whether every member of ``batch`` was already applied from this very scrape."""
    pool = core.view.get(batch.pool, batch.partition)
    if pool is None:
        return False
    for m in batch.members:
        member = pool.members.get(m.key)  # members the pool lacks are ignored anyway
        if member is not None and (member.last_scrape_at is None
                                   or m.scraped_at > member.last_scrape_at):
            return False
    return True


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


async def _expire_inflight(core: SchedulerCore, stop: asyncio.Event) -> None:
    """Once a second: requests whose outcome never came stop counting at their expiry."""
    while not await sleep_or_stop(stop, 1.0):
        dropped = core.expire_inflight()
        if dropped:
            log.info("%d routed request(s) expired without an outcome report", dropped)

