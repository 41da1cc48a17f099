"""The worker registry's HTTP routes (SPEC §2.2): register, heartbeat, unregister, list."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from fastapi import APIRouter, Request, Response
from redis.exceptions import RedisError

from services.api.schemas import (
    HEARTBEAT_BODY,
    REGISTER_BODY,
    HeartbeatReply,
    RegisterReply,
    UnregisterReply,
    WorkersReply,
)
from shared.auth import AdminAuth
from shared.decoding import decode_object
from shared.errors import BadRequest, error_response
from shared.openapi import errors, reply
from shared.workers import (
    HeartbeatRequest,
    RegisterRequest,
    WorkerRegistry,
    instance_signature,
)

Announce = Callable[[str, str, str], Awaitable[None]]
"""(kind, name, op) → publish ``registry.changed``."""

log = logging.getLogger("llmsched.api")


def _json(value: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(value), status_code=status, media_type="application/json")


async def _no_announce(_kind: str, _name: str, _op: str) -> None:
    return None


def workers_router(registry: WorkerRegistry, *, admin_key: str | None = None,
                   announce: Announce = _no_announce) -> APIRouter:
    """Worker registration and ``GET /admin/workers``; a key (or $LLMSCHED_ADMIN_KEY) guards all."""
    auth = AdminAuth.from_env() if admin_key is None else AdminAuth(admin_key or None)
    denied = auth.denied
    router = APIRouter(tags=["workers"])

    def unavailable(err: Exception) -> Response:
        log.warning("Worker registry unavailable: %s", err)
        return error_response(503, "worker registry unavailable (state store)", None,
                              "registry_unavailable", {"Retry-After": "1"})

    @router.post("/workers/register", summary="A worker joins (or rejoins after a restart)",
                 openapi_extra=REGISTER_BODY,
                 responses={**reply(RegisterReply), **errors(400, 401, 503)})
    async def register(request: Request) -> Response:
        if (refusal := denied(request)) is not None:
            return refusal
        try:
            body, _ = decode_object(await request.body(), RegisterRequest)
            record = await registry.register(body)
            await announce("worker", record.worker_id, "register")
        except BadRequest as err:
            return err.response()
        except (RedisError, OSError) as err:
            return unavailable(err)
        return _json({"worker_id": record.worker_id, "state": record.state,
                      "lost_after_s": registry.lost_after(record)})

    @router.post("/workers/{worker_id}/heartbeat", summary="A worker is alive; its instances",
                 openapi_extra=HEARTBEAT_BODY, responses={
                     **reply(HeartbeatReply), **errors(400, 401, 404, 503, e404=(
                         "The worker is not registered: it must register again"))})
    async def heartbeat(worker_id: str, request: Request) -> Response:
        if (refusal := denied(request)) is not None:
            return refusal
        try:
            body, _ = decode_object(await request.body(), HeartbeatRequest, empty_ok=True)
            before = instance_signature(await registry.get(worker_id))
            record = await registry.heartbeat(worker_id, body)
            if record is not None and instance_signature(record) != before:
                await announce("worker", worker_id, "instances")
        except BadRequest as err:
            return err.response()
        except (RedisError, OSError) as err:
            return unavailable(err)
        if record is None:
            return error_response(404, f"worker {worker_id!r} is not registered; register again",
                                  "worker_id", "worker_not_found")
        return _json({"worker_id": worker_id, "state": record.state})

    @router.delete("/workers/{worker_id}/unregister", summary="A worker leaves",
                   responses={**reply(UnregisterReply), **errors(401, 404, 503)})
    async def unregister(worker_id: str, request: Request) -> Response:
        if (refusal := denied(request)) is not None:
            return refusal
        try:
            record = await registry.unregister(worker_id)
            if record is not None:
                await announce("worker", worker_id, "unregister")
        except (RedisError, OSError) as err:
            return unavailable(err)
        if record is None:
            return error_response(404, f"worker {worker_id!r} is not registered", "worker_id",
                                  "worker_not_found")
        return _json({"worker_id": worker_id, "unregistered": True})

    @router.get("/admin/workers", summary="Every registered worker, active or lost",
                responses={**reply(WorkersReply), **errors(401, 503)})
    async def admin_workers(request: Request) -> Response:
        if (refusal := denied(request)) is not None:
            return refusal
        try:
            records = await registry.workers()
        except (RedisError, OSError) as err:
            return unavailable(err)
        now = registry.clock()
        return _json({"workers": [
            {**msgspec.to_builtins(r), "heartbeat_age_s": round(now - r.last_heartbeat, 3),
             "lost_after_s": registry.lost_after(r)} for r in records]})

    return router
