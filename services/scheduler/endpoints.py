"""The scheduler's nats.micro endpoints: select, simulate, analyze, status."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import msgspec
from nats.aio.client import Client as NATS
from nats.micro import add_service
from nats.micro.request import Request, ServiceError
from nats.micro.service import Service

from services.scheduler.metrics import SchedulerMetrics
from shared.messages import (
    SelectReply,
    SelectRequest,
    SimulateRequest,
    StatusReply,
    StatusRequest,
)
from shared.routing import RecordsRequest, RouteReply, RouteRequest, SelectionEvent
from shared.scheduling.core import SchedulerCore
from shared.subjects import Subjects

log = logging.getLogger("llmsched.scheduler.endpoints")

T = TypeVar("T")

MAX_ITERATIONS = 100_000
MAX_BATCH = 256
"""Calls per ``select_many`` / ``route_many`` request at most (the API sends up to 64)."""


def _bad_request(err: msgspec.ValidationError | msgspec.DecodeError) -> ServiceError:
    return ServiceError("400", str(err))


class SchedulerEndpoints:
    """Decodes requests, calls the core, encodes replies; errors become ServiceError."""

    def __init__(self, core: SchedulerCore, *, replica: str, config_version: str,
                 store_ok: dict[str, bool],
                 announce: Callable[[SelectionEvent], Awaitable[None]] | None = None,
                 metrics: SchedulerMetrics | None = None) -> None:
        self.core = core
        self.metrics = metrics
        self.announce = announce
        self.replica = replica
        self.config_version = config_version
        self._store_ok = store_ok
        self._select_dec = msgspec.json.Decoder(SelectRequest)
        self._route_dec = msgspec.json.Decoder(RouteRequest)
        self._selects_dec = msgspec.json.Decoder(list[SelectRequest])
        self._routes_dec = msgspec.json.Decoder(list[RouteRequest])
        self._records_dec = msgspec.json.Decoder(RecordsRequest)
        self._sim_dec = msgspec.json.Decoder(SimulateRequest)
        self._status_dec = msgspec.json.Decoder(StatusRequest)
        self._enc = msgspec.json.Encoder()

    async def select(self, req: Request) -> None:
        try:
            body = self._select_dec.decode(req.data)
        except (msgspec.ValidationError, msgspec.DecodeError) as err:
            raise _bad_request(err) from None
        reply, event = self._select_one(body)
        await req.respond(self._enc.encode(reply))
        if event is not None and self.announce is not None:
            await self.announce(event)

    def _select_one(self, body: SelectRequest) -> tuple[SelectReply, SelectionEvent | None]:
        decision, event = self.core.select(body)
        if self.metrics is not None:
            self.metrics.decided("select", body.pool_name, body.partition, decision.answer,
                                 decision.reason)
        return SelectReply(answer=decision.answer, reason=decision.reason), event

    async def route(self, req: Request) -> None:
        """The gateway's pick among a pool's members; the selection is announced to all."""
        try:
            body = self._route_dec.decode(req.data)
        except (msgspec.ValidationError, msgspec.DecodeError) as err:
            raise _bad_request(err) from None
        reply, event = self._route_one(body)
        await req.respond(self._enc.encode(reply))
        if event is not None and self.announce is not None:
            await self.announce(event)

    def _route_one(self, body: RouteRequest) -> tuple[RouteReply, SelectionEvent | None]:
        reply, event = self.core.route(body)
        if self.metrics is not None:
            self.metrics.decided("route", body.pool, body.partition, reply.answer, reply.reason)
        return reply, event

    async def select_many(self, req: Request) -> None:
        """Several selects in one request (an API's selects of one loop pass), answered
        as an array in the same order; each decided and announced as by ``select``."""
        done = [self._select_one(body) for body in _batch(self._selects_dec, req.data)]
        await req.respond(self._enc.encode([reply for reply, _ in done]))
        await self._announce_all([event for _, event in done if event is not None])

    async def route_many(self, req: Request) -> None:
        """Several route calls in one request, answered as an array in the same order."""
        done = [self._route_one(body) for body in _batch(self._routes_dec, req.data)]
        await req.respond(self._enc.encode([reply for reply, _ in done]))
        await self._announce_all([event for _, event in done if event is not None])

    async def _announce_all(self, events: list[SelectionEvent]) -> None:
        if self.announce is not None:
            for event in events:
                await self.announce(event)

    async def records(self, req: Request) -> None:
        """The pool's recent TTFTs joined with the state they were routed on (JSON lines)."""
        try:
            body = self._records_dec.decode(req.data or b"{}")
        except (msgspec.ValidationError, msgspec.DecodeError) as err:
            raise _bad_request(err) from None
        if self.core.pool_config(body.pool_name, body.partition) is None:
            raise ServiceError("404", f"pool {body.pool_name}:{body.partition} is unknown")
        rows = self.core.records(body.pool_name, body.partition, body.limit)
        await req.respond(b"".join(self._enc.encode(row) + b"\n" for row in rows))

    def _sim_body(self, req: Request) -> SimulateRequest:
        try:
            body = self._sim_dec.decode(req.data)
        except (msgspec.ValidationError, msgspec.DecodeError) as err:
            raise _bad_request(err) from None
        if not 1 <= body.iterations <= MAX_ITERATIONS:
            raise ServiceError("400", f"iterations must be 1..{MAX_ITERATIONS}")
        return body

    async def simulate(self, req: Request) -> None:
        body = self._sim_body(req)
        sel = SelectRequest(pool_name=body.pool_name, partition=body.partition,
                            members=body.members)
        await req.respond(self._enc.encode(self.core.simulate(sel, body.iterations)))

    async def analyze(self, req: Request) -> None:
        body = self._sim_body(req)
        sel = SelectRequest(pool_name=body.pool_name, partition=body.partition,
                            members=body.members)
        await req.respond(self._enc.encode(self.core.analyze(sel, body.iterations)))

    async def status(self, req: Request) -> None:
        try:
            body = self._status_dec.decode(req.data or b"{}")
        except (msgspec.ValidationError, msgspec.DecodeError) as err:
            raise _bad_request(err) from None
        if body.pool_name:
            one = self.core.pool_status(body.pool_name, body.partition or "Common")
            if one is None:
                raise ServiceError("404", f"pool {body.pool_name}:{body.partition} is unknown")
            pools = [one]
        else:
            pools = self.core.all_status()
        reply = StatusReply(pools=pools, replica=self.replica,
                            config_version=self.config_version,
                            state_store="ok" if self._store_ok.get("ok", False) else "degraded")
        await req.respond(self._enc.encode(reply))


def _batch(decoder: msgspec.json.Decoder[list[T]], data: bytes) -> list[T]:
    try:
        bodies = decoder.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError) as err:
        raise _bad_request(err) from None
    if not 1 <= len(bodies) <= MAX_BATCH:
        raise ServiceError("400", f"a batch holds 1..{MAX_BATCH} calls, got {len(bodies)}")
    return bodies


async def start_service(nc: NATS, subjects: Subjects, endpoints: SchedulerEndpoints,
                        version: str = "0.1.0") -> Service:
    """Register the micro service in the scheduler queue group."""
    service = await add_service(
        nc, name=subjects.scheduler_service, version=version,
        description="llmsched scheduler: picks the member for each request",
        queue_group=subjects.scheduler_queue,
        metadata={"replica": endpoints.replica, "prefix": subjects.prefix},
    )
    group = service.add_group(name=subjects.scheduler_group, queue_group=subjects.scheduler_queue)
    await group.add_endpoint(name="select", handler=endpoints.select)
    await group.add_endpoint(name="route", handler=endpoints.route)
    await group.add_endpoint(name="select_many", handler=endpoints.select_many)
    await group.add_endpoint(name="route_many", handler=endpoints.route_many)
    await group.add_endpoint(name="records", handler=endpoints.records)
    await group.add_endpoint(name="simulate", handler=endpoints.simulate)
    await group.add_endpoint(name="analyze", handler=endpoints.analyze)
    await group.add_endpoint(name="status", handler=endpoints.status)
    return service
