"""Keeps a decision core's view current from the bus, as every scheduler replica does.

Pool snapshots and metrics batches from the collectors, the selections other replicas made,
request outcomes and KV-cache updates: every holder of a :class:`SchedulerCore` (a scheduler
replica, or an API process routing its gateway requests in-process) applies all of them, so
all hold the same view and count the same requests in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from shared.messages import REMOVED, MetricsBatch, PoolSnapshot
from shared.prefix_events import KvUpdate, kv_subject_all
from shared.routing import OutcomeEvent, SelectionEvent
from shared.runtime import sleep_or_stop
from shared.scheduling.core import SchedulerCore
from shared.scheduling.view import ClusterView, MemberState
from shared.state import StateStore
from shared.subjects import RedisKeys, Subjects

log = logging.getLogger("llmsched.scheduling")

RESYNC_WAIT_S = 0.5
"""At start, how long a holder waits (counted from its resync request, warm-up included)
for the collectors' answers, when pools are still unknown."""
RECONNECT_POLL_S = 0.5

SnapshotHook = Callable[[tuple[str, str], bytes], None]
MetricsHook = Callable[[tuple[str, str]], None]
OutcomeHook = Callable[[OutcomeEvent], None]


def _ignore_snapshot(_ident: tuple[str, str], _raw: bytes) -> None:
    return None


def _ignore_metrics(_ident: tuple[str, str]) -> None:
    return None


def _ignore_outcome(_event: OutcomeEvent) -> None:
    return None


class ViewFollower:
    """Applies the bus's state events to ``core``; ``on_snapshot``/``on_metrics`` hear of
    every pool whose snapshot or metrics changed (a replica's persister), ``on_outcome`` of
    every outcome once the core has applied it (a freed slot is then visible to a decision)."""

    def __init__(self, core: SchedulerCore, *, on_snapshot: SnapshotHook = _ignore_snapshot,
                 on_metrics: MetricsHook = _ignore_metrics,
                 on_outcome: OutcomeHook = _ignore_outcome) -> None:
        self.core = core
        self.on_snapshot = on_snapshot
        self.on_metrics = on_metrics
        self.on_outcome = on_outcome
        self.arrived = asyncio.Event()
        """Set on every snapshot (:func:`await_pools` waits on it)."""
        self._subs: list[Subscription] = []
        self._snap_dec = msgspec.json.Decoder(PoolSnapshot)
        self._met_dec = msgspec.json.Decoder(MetricsBatch)
        self._sel_dec = msgspec.json.Decoder(SelectionEvent | list[SelectionEvent])
        self._out_dec = msgspec.json.Decoder(OutcomeEvent | list[OutcomeEvent])
        self._kv_dec = msgspec.json.Decoder(KvUpdate)

    async def subscribe(self, nc: NATS, subjects: Subjects, pending_msgs_limit: int) -> None:
        """Past ``pending_msgs_limit`` unread messages nats-py drops the next ones (counted
        and logged, see shared/slow_consumer.py)."""
        for subject, cb in ((subjects.pool_snapshot_all, self._on_snapshot),
                            (subjects.member_metrics_all, self._on_metrics),
                            (subjects.selection, self._on_selection),
                            (subjects.request_outcome, self._on_outcome),
                            (kv_subject_all(subjects.prefix), self._on_kv)):
            self._subs.append(await nc.subscribe(subject, cb=cb,
                                                 pending_msgs_limit=pending_msgs_limit))

    async def unsubscribe(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()

    async def _on_snapshot(self, msg: Msg) -> None:
        self.arrived.set()
        core = self.core
        try:
            snap = self._snap_dec.decode(msg.data)
        except msgspec.DecodeError as err:
            log.warning("Dropping malformed pool snapshot on %s: %s", msg.subject, err)
            return
        if not core.accept_snapshot(snap):
            if snap.source == REMOVED:  # so a restarted replica does not bring it back
                self.on_snapshot((snap.pool, snap.partition), msg.data)
            return
        before = core.view.get(snap.pool, snap.partition)
        old_keys = set(before.members) if before else set()
        state = core.view.apply_snapshot(snap)
        core.sync_pool(state)
        if set(state.members) != old_keys:
            log.info("Pool %s:%s membership: %d members (%d available)", snap.pool,
                     snap.partition, len(state.members),
                     sum(1 for m in state.members.values() if m.available))
        self.on_snapshot((snap.pool, snap.partition), msg.data)

    async def _on_metrics(self, msg: Msg) -> None:
        try:
            batch = self._met_dec.decode(msg.data)
        except msgspec.DecodeError as err:
            log.warning("Dropping malformed metrics batch on %s: %s", msg.subject, err)
            return
        if seen(self.core, batch):
            return  # a resync's copy of a batch already applied: learn nothing twice
        sleep_changes: list[MemberState] = []
        if self.core.view.apply_metrics(batch, sleep_changes) is not None:
            self.on_metrics((batch.pool, batch.partition))
        for member in sleep_changes:
            if member.asleep:
                log.info("Pool %s:%s member %s asleep (%s): out of selection until awake",
                         batch.pool, batch.partition, member.key, member.asleep_reason)
            else:
                log.info("Pool %s:%s member %s awake: back in selection", batch.pool,
                         batch.partition, member.key)

    async def _on_selection(self, msg: Msg) -> None:
        try:
            events = self._sel_dec.decode(msg.data)
        except msgspec.DecodeError as err:
            log.warning("Dropping malformed selection event: %s", err)
            return
        for event in events if isinstance(events, list) else (events,):
            self.core.apply_selection(event)

    async def _on_outcome(self, msg: Msg) -> None:
        try:
            outcomes = self._out_dec.decode(msg.data)
        except msgspec.DecodeError as err:
            log.warning("Dropping malformed outcome event: %s", err)
            return
        for outcome in outcomes if isinstance(outcomes, list) else (outcomes,):
            self.core.apply_outcome(outcome)
            self.on_outcome(outcome)

    async def _on_kv(self, msg: Msg) -> None:
        try:
            self.core.apply_kv(self._kv_dec.decode(msg.data))
        except (msgspec.DecodeError, msgspec.ValidationError) as err:
            log.warning("Dropping malformed KV update: %s", err)


async def join(core: SchedulerCore, follower: ViewFollower, nc: NATS, subjects: Subjects,
               store: StateStore, who: str, pending_msgs_limit: int) -> bool:
    """Start following: subscribe, ask the collectors for a resync, warm up from ``store``
    (fail open), wait up to RESYNC_WAIT_S for the configured pools, then serve static
    pools' configured members until their first snapshot. Returns whether the store
    answered."""
    await follower.subscribe(nc, subjects, pending_msgs_limit)
    asked = time.monotonic()
    await ask_resync(nc, subjects, who)  # after subscribing: the answers reach us
    store_ok = True
    try:
        restored = await warm_up(store, RedisKeys(subjects.prefix), core.view,
                                 accept=core.accept_snapshot)
        log.info("%s warmed up from the state store: %d pools", who, restored)
    except Exception as err:
        store_ok = False
        log.warning("State store unreachable at start (%s); %s starts from live events only",
                    err, who)
    await await_pools(core, follower.arrived, asked + RESYNC_WAIT_S)
    seeded = core.seed_static_pools()
    if seeded:
        log.info("No snapshot yet for static pool(s) %s: serving their configured members "
                 "until the collector's first snapshot", ", ".join(seeded))
    return store_ok


def seen(core: SchedulerCore, batch: MetricsBatch) -> bool:
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


async def ask_resync(nc: NATS, subjects: Subjects, who: str) -> None:
    """Ask the collectors to republish their pools now (fail open: none answering, the
    holder keeps what it has and the next fetches bring the rest)."""
    try:
        await nc.publish(subjects.pool_resync, who.encode())
        await nc.flush(timeout=2)
    except Exception as err:
        log.warning("Resync request not sent (%s); pools arrive with the next fetches", err)


async def await_pools(core: SchedulerCore, arrived: asyncio.Event, deadline: float) -> None:
    """Wait until every configured pool is known, at most until ``deadline`` (monotonic);
    ``arrived`` is set on each snapshot."""
    wanted = {pool.ident for pool in core.config.pools}
    while not wanted <= core.view.pools.keys():
        arrived.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(arrived.wait(), deadline - time.monotonic())
        if time.monotonic() >= deadline:
            return


async def resync_on_reconnect(nc: NATS, subjects: Subjects, who: str,
                              stop: asyncio.Event) -> None:
    """After a NATS outage, ask for a resync: snapshots published meanwhile were lost."""
    count = nc.stats["reconnects"]
    while not await sleep_or_stop(stop, RECONNECT_POLL_S):
        if nc.stats["reconnects"] != count and nc.is_connected:
            count = nc.stats["reconnects"]
            log.info("Reconnected to NATS: asking the collectors for a resync")
            await ask_resync(nc, subjects, who)


async def expire_inflight(core: SchedulerCore, stop: asyncio.Event) -> None:
    """Once a second: requests whose outcome never came stop counting at their expiry."""
    while not await sleep_or_stop(stop, 1.0):
        dropped = core.expire_inflight()
        if dropped:
            log.info("%d routed request(s) expired without an outcome report", dropped)


async def warm_up(store: StateStore, keys: RedisKeys, view: ClusterView,
                  timeout_s: float = 3.0,
                  accept: Callable[[PoolSnapshot], bool] = lambda _snap: True) -> int:
    """Load last snapshots (of pools ``accept`` keeps) and metrics; returns pools restored."""
    snap_dec = msgspec.json.Decoder(PoolSnapshot)
    met_dec = msgspec.json.Decoder(MetricsBatch)
    snaps = await asyncio.wait_for(store.get_pattern(keys.snapshot_pattern), timeout_s)
    metrics = await asyncio.wait_for(store.get_pattern(keys.metrics_pattern), timeout_s)
    restored = 0
    for raw in snaps.values():
        try:
            snap = snap_dec.decode(raw)
        except msgspec.DecodeError as err:
            log.warning("Ignoring unreadable snapshot in the state store: %s", err)
            continue
        if accept(snap):
            view.apply_snapshot(snap)
            restored += 1
    for raw in metrics.values():
        try:
            view.apply_metrics(met_dec.decode(raw))
        except msgspec.DecodeError as err:
            log.warning("Ignoring unreadable metrics in the state store: %s", err)
    return restored
