"""Health of the API service: /livez (serving HTTP), /readyz (can select now), /health (all)."""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from fastapi import APIRouter, Response

from services.api.scheduler_client import SchedulerClient
from shared.openapi import probe, ref, reply
from shared.state import StateStore


class Checks(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What a health answer looked at."""

    nats: Literal["ok", "unreachable"]
    scheduler_replicas: int
    state_store: Literal["ok", "unreachable", "n/a"] | None = None
    config_version: str | None = None


class HealthReply(msgspec.Struct, kw_only=True):
    """``/health`` and ``/readyz``."""

    status: Literal["healthy", "degraded", "unhealthy", "ready", "not_ready"]
    message: str
    checks: Checks


class LiveReply(msgspec.Struct, kw_only=True):
    """``/livez``."""

    status: Literal["alive"]


HEALTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    **reply(HealthReply),
    503: {"description": "Not healthy / not ready: `message` says why",
          "content": {"application/json": {"schema": ref(HealthReply)}}}}

_encode = msgspec.json.Encoder().encode


def _reply(value: Any, status: int = 200) -> Response:
    return Response(_encode(value), status, media_type="application/json")


async def _bus(scheduler: SchedulerClient) -> tuple[Checks, str | None]:
    """NATS and the scheduler replicas; the reason selects cannot be answered, if any."""
    nats_ok = scheduler.nc.is_connected
    replicas = await scheduler.ping() if nats_ok else 0
    checks = Checks(nats="ok" if nats_ok else "unreachable", scheduler_replicas=replicas)
    if not nats_ok:
        return checks, "NATS bus unreachable"
    if replicas == 0:
        return checks, "no scheduler replica answered"
    return checks, None


def health_router(state: Any) -> APIRouter:
    """The three health routes over ``state`` (an ApiState: scheduler, store, config_version)."""
    router = APIRouter(tags=["health"])

    @probe(router, "/livez", reply(LiveReply),
           summary="Liveness: the process serves HTTP (always 200)")
    async def livez() -> Response:
        return _reply(LiveReply(status="alive"))

    @probe(router, "/readyz", HEALTH_RESPONSES,
           summary="Readiness: NATS connected and a scheduler replica answers")
    async def readyz() -> Response:
        checks, reason = await _bus(state.scheduler)
        if reason is not None:
            return _reply(HealthReply(status="not_ready", message=reason, checks=checks), 503)
        return _reply(HealthReply(status="ready", message=f"{checks.scheduler_replicas} "
                                  "scheduler replica(s) answering", checks=checks))

    @probe(router, "/health", HEALTH_RESPONSES,
           summary="Truthful health: bus, scheduler replicas, state store")
    async def health() -> Response:
        checks, reason = await _bus(state.scheduler)
        store: StateStore | None = state.store
        store_ok = await store.ping() if store is not None else None
        checks.state_store = "n/a" if store_ok is None else "ok" if store_ok else "unreachable"
        checks.config_version = state.config_version
        if reason is not None:
            return _reply(HealthReply(status="unhealthy", message=reason, checks=checks), 503)
        if store_ok is False:
            return _reply(HealthReply(status="degraded", message="state store unreachable;"
                                      " selects continue from memory", checks=checks))
        return _reply(HealthReply(status="healthy", message="Scheduler is running normally"
                                  f" ({checks.scheduler_replicas} replica(s))", checks=checks))

    return router
