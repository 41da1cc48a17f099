"""The gateway's NATS side: route calls to the scheduler, outcome and demand events."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import msgspec
from nats.aio.client import Client as NATS

from services.api.gateway.proxy import RouterUnavailable
from services.api.scheduler_client import SchedulerClient
from services.api.scheduler_errors import SchedulerError, SchedulerUnavailable
from shared.bus import EventBatch
from shared.routing import DemandEvent, OutcomeEvent, RouteReply, RouteRequest
from shared.subjects import Subjects

log = logging.getLogger("llmsched.api.gateway")


class NatsRouter:
    """``route`` on the scheduler queue group; asked again within the budget (``ask``), the
    calls of one loop pass together (``route_many``)."""

    def __init__(self, client: SchedulerClient) -> None:
        self.client = client
        self._encode = msgspec.json.Encoder().encode
        self._decode = msgspec.json.Decoder(RouteReply).decode

    async def route(self, request: RouteRequest) -> RouteReply:
        try:
            raw = await self.client.route(self._encode(request))
        except SchedulerUnavailable as err:
            raise RouterUnavailable(str(err)) from None
        except SchedulerError as err:
            raise RouterUnavailable(f"scheduler refused the route call: {err.message}") from None
        return self._decode(raw)


class NatsEvents:
    """Publishes outcomes and demand without waiting (a lost event is covered by expiry)."""

    def __init__(self, nc: NATS, subjects: Subjects, gateway_id: str, *,
                 outcomes: Callable[[OutcomeEvent], None] | None = None) -> None:
        self.nc = nc
        self.subjects = subjects
        self.gateway_id = gateway_id
        self._encode = msgspec.json.Encoder().encode
        self._pending: set[asyncio.Future[None]] = set()
        self._outcomes = EventBatch[OutcomeEvent](nc, subjects.request_outcome,
                                                  "outcome event(s)")
        self._sink = outcomes if outcomes is not None else self._outcomes.add

    async def outcome(self, event: OutcomeEvent) -> None:
        """Outcomes of one loop pass go out together (the scheduler's expiry covers a loss);
        ``outcomes`` given, they go there instead (the in-process router publishes them)."""
        self._sink(event)

    async def close(self) -> None:
        """Publish the outcomes still waiting for their pace (before the connection drains)."""
        await self._outcomes.close()

    async def demand(self, alias: str, waiting: int) -> None:
        event = DemandEvent(alias=alias, waiting=waiting, gateway=self.gateway_id,
                            at=time.time())
        self._publish(self.subjects.autoscaler_demand, self._encode(event))

    def _publish(self, subject: str, data: bytes) -> None:
        task = asyncio.ensure_future(self.nc.publish(subject, data))
        self._pending.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Future[None]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("Gateway event not published: %s", task.exception())
