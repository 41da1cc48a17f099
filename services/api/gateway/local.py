"""The gateway's routing decision taken in the API process (``gateway.decide: local``).

The API holds the scheduling core itself, kept current from the bus exactly as a scheduler
replica keeps its own (shared/scheduling/follower.py): pool snapshots, metrics, every
replica's selections and every outcome. A routed request costs no NATS round trip and no
second process; the selection event it publishes lets the scheduler replicas (load events,
the F5 select path, status) and the other API processes count it, as they count a
scheduler's; its answer counts go to the fleet-wide totals in Redis that a pool's status
shows, as a replica's do. Trade-off: each API process holds the view and decodes every
state event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from nats.aio.client import Client as NATS

from services.api.gateway.admission import AdmissionLines
from shared.bus import EventBatch, connect_nats
from shared.config import Config
from shared.routing import OutcomeEvent, RouteReply, RouteRequest, SelectionEvent
from shared.scheduling.core import SchedulerCore
from shared.scheduling.follower import ViewFollower, expire_inflight, join, resync_on_reconnect
from shared.scheduling.plugins.registry import default_registry
from shared.scheduling.selection_counts import RedisSelectionStore, flush_selections_every
from shared.slow_consumer import OnDropped
from shared.state import StateStore
from shared.subjects import RedisKeys, Subjects
from shared.tasks import cancel_and_wait

log = logging.getLogger("llmsched.api.gateway")


OnDecided = Callable[[str, str], None]
"""Told each decision's (answer, reason): the process's decision count."""


class LocalRouter:
    """``route`` answered by this process's own core; the selection goes out as an event."""

    def __init__(self, core: SchedulerCore, selections: EventBatch[SelectionEvent],
                 on_decided: OnDecided | None = None) -> None:
        self.core = core
        self._selections = selections
        self._on_decided = on_decided

    async def route(self, request: RouteRequest) -> RouteReply:
        reply, event = self.core.route(request)
        if event is not None:
            self._selections.add(event)
        if self._on_decided is not None:
            self._on_decided(reply.answer, reply.reason)
        return reply

    async def close(self) -> None:
        """Publish the selections still waiting for their pace."""
        await self._selections.close()


OTHERS_FREED_DELAY_S = 0.003
"""A slot freed by another process's request is offered to this process's waiting line
this much later: the process that ran the request may fill it first, and its selection
reaches every other process within about two milliseconds (one of pacing, see
``shared.bus.EventBatch``, and the bus), so two lines do not both take the one slot."""


COUNTS_CLOSE_TIMEOUT_S = 2.0
"""How long closing waits for the answer counts' last write to Redis."""


class LocalRouting:
    """The core, its own NATS connection (no echo: its selections and outcomes need no copy
    back) and the tasks that keep its view current; :meth:`close` ends them.

    This process's outcomes are applied to the core at once and published from here; the
    other processes' arrive through the follower. Either way, while requests wait in the
    gateway's admission line, it hears of the pool after the core has let the request go,
    so the one that tries again sees the slot."""

    def __init__(self, core: SchedulerCore, nc: NATS, follower: ViewFollower,
                 tasks: list[asyncio.Task[None]], *,
                 counting: tuple[asyncio.Task[None], RedisSelectionStore] | None = None,
                 on_decided: OnDecided | None = None) -> None:
        self.core = core
        self.nc = nc
        subjects = Subjects(core.config.global_.prefix)
        self.router = LocalRouter(core, EventBatch[SelectionEvent](
            nc, subjects.selection, "selection event(s)"), on_decided)
        self._outcomes = EventBatch[OutcomeEvent](nc, subjects.request_outcome,
                                                  "outcome event(s)")
        self.admission: AdmissionLines | None = None
        self._follower = follower
        follower.on_outcome = self._others_outcome
        self._tasks = tasks
        self._counting = counting

    def outcome(self, event: OutcomeEvent) -> None:
        """One of this process's attempts ended: out of the count now, then on the bus."""
        self.core.apply_outcome(event)
        self._outcomes.add(event)
        if self.admission is not None and self.admission.busy:
            self.admission.freed((event.pool, event.partition))

    def _others_outcome(self, event: OutcomeEvent) -> None:
        # No timer per outcome while nobody waits: a request that joins the line later was
        # answered busy by a core that had already let this one go.
        if self.admission is not None and self.admission.busy:
            asyncio.get_running_loop().call_later(OTHERS_FREED_DELAY_S, self.admission.freed,
                                                  (event.pool, event.partition))

    def apply_config(self, config: Config) -> None:
        self.core.apply_config(config)

    async def close(self) -> None:
        """Stop following; the answer counts' last flush (begun when the API's stop was set)
        gets a moment to finish."""
        await self._follower.unsubscribe()
        if self._counting is not None:
            flushing, counts = self._counting
            with contextlib.suppress(Exception):
                await asyncio.wait_for(flushing, COUNTS_CLOSE_TIMEOUT_S)
            await counts.close()
        await cancel_and_wait(self._tasks)
        await self.router.close()
        await self._outcomes.close()
        with contextlib.suppress(Exception):
            await self.nc.drain()


async def start_local_routing(cfg: Config, store: StateStore, replica: str,
                              stop: asyncio.Event, *, nats_url: str | None = None,
                              redis_url: str | None = None,
                              on_dropped: OnDropped | None = None,
                              on_decided: OnDecided | None = None) -> LocalRouting:
    """Join the bus as a holder of the view: subscribe, ask the collectors for a resync,
    warm up from the state store (fail open), wait briefly for the configured pools; add
    this process's answers to the fleet-wide counts every half second."""
    subjects = Subjects(cfg.global_.prefix)
    core = SchedulerCore(cfg, default_registry(), replica=replica)
    nc = await connect_nats(f"api-routing-{replica}", nats_url, no_echo=True,
                            on_dropped=on_dropped)
    follower = ViewFollower(core)
    await join(core, follower, nc, subjects, store, replica, cfg.scheduler.pending_msgs_limit)
    tasks = [asyncio.create_task(expire_inflight(core, stop)),
             asyncio.create_task(resync_on_reconnect(nc, subjects, replica, stop))]
    counts = RedisSelectionStore(redis_url)
    flushing = asyncio.create_task(flush_selections_every(
        core.view, counts, RedisKeys(cfg.global_.prefix), cfg.scheduler.state_ttl, stop))
    return LocalRouting(core, nc, follower, tasks, counting=(flushing, counts),
                        on_decided=on_decided)
