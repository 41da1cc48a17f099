"""The gateway's NATS side: route calls to the scheduler, outcome and demand events."""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec
from nats.aio.client import Client as NATS

from services.api.gateway.proxy import RouterUnavailable
from services.api.scheduler_client import SchedulerClient, SchedulerError, SchedulerUnavailable
from shared.routing import DemandEvent, OutcomeEvent, RouteReply, RouteRequest
from shared.subjects import Subjects

log = logging.getLogger("llmsched.api.gateway")


class NatsRouter:
    """``route`` on the scheduler queue group; a lost request is asked again once."""

    def __init__(self, client: SchedulerClient) -> None:
        self.client = client
        self._encode = msgspec.json.Encoder().encode
        self._decode = msgspec.json.Decoder(RouteReply).decode

    async def route(self, request: RouteRequest) -> RouteReply:
        payload = self._encode(request)
        half = self.client.timeout_s / 2
        try:
            try:
                raw = await self.client.call(self.client.subjects.route, payload, half)
            except SchedulerUnavailable:
                raw = await self.client.call(self.client.subjects.route, payload, half)
        except SchedulerUnavailable as err:
            raise RouterUnavailable(str(err)) from None
        except SchedulerError as err:
            raise RouterUnavailable(f"scheduler refused the route call: {err.message}") from None
        return self._decode(raw)


class NatsEvents:
    """Publishes outcomes and demand without waiting (a lost event is covered by expiry)."""

    def __init__(self, nc: NATS, subjects: Subjects, gateway_id: str) -> None:
        self.nc = nc
        self.subjects = subjects
        self.gateway_id = gateway_id
        self._encode = msgspec.json.Encoder().encode
        self._pending: set[asyncio.Future[None]] = set()

    async def outcome(self, event: OutcomeEvent) -> None:
        """nats-py only appends to its buffer here; its flusher writes in the background."""
        try:
            await self.nc.publish(self.subjects.request_outcome, self._encode(event))
        except Exception as err:  # bus down: the scheduler's expiry covers the lost outcome
            log.debug("Outcome event not published: %s", err)

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
