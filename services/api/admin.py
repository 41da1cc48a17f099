"""The admin API (SPEC §2.2): register and delete models, list them, the fleet's status."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from fastapi import APIRouter, Request, Response
from redis.exceptions import RedisError

from services.api.scheduler_client import SchedulerClient
from services.api.scheduler_errors import SchedulerError, SchedulerUnavailable
from shared.auth import AdminAuth
from shared.errors import BadRequest, error_response
from shared.model_registry import ModelRecord, ModelRegistry, parse_registration
from shared.openapi import errors
from shared.registry_view import RegistryView
from shared.scaling import ScalingLog, scaling_state
from shared.subjects import MODELS_PARTITION

log = logging.getLogger("llmsched.api.admin")

Announce = Callable[[str, str, str], Awaitable[None]]
"""(kind, name, op) → publish ``registry.changed``."""

_REGISTER_DOC: dict[str, Any] = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["alias"],
        "description": "The seed's body: alias, model_name and engine arguments (fake-model "
                       "fields included), plus an optional `autoscaling` object.",
        "example": {"alias": "fake-model", "model_name": "__fake__", "fake": True,
                    "fake_response": "FAKE_OK", "fake_delay_ms": 3000, "fake_capacity": 1,
                    "autoscaling": {"min_replicas": 0, "max_replicas": 3}},
    }}}},
}


_REGISTERED: dict[str, Any] = {
    "type": "object", "required": ["alias", "created", "ignored_fields", "model"],
    "properties": {"alias": {"type": "string"}, "created": {"type": "boolean"},
                   "ignored_fields": {"type": "array", "items": {"type": "string"}},
                   "model": {"type": "object"}}}
_DELETED: dict[str, Any] = {
    "type": "object", "required": ["alias", "deleted"],
    "properties": {"alias": {"type": "string"}, "deleted": {"type": "boolean"}}}
_MODELS: dict[str, Any] = {
    "type": "object", "required": ["models"],
    "properties": {"models": {"type": "array", "items": {"type": "object"}}}}
_STATUS: dict[str, Any] = {
    "type": "object", "required": ["models", "workers", "actions"],
    "properties": {"models": {"type": "array", "items": {"type": "object"}},
                   "workers": {"type": "object"},
                   "actions": {"type": "array", "items": {"type": "object"}}}}


def _json(value: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(value), status_code=status, media_type="application/json")


def _unavailable(err: Exception) -> Response:
    log.warning("Model registry unavailable: %s", err)
    return error_response(503, "model registry unavailable (state store)", None,
                          "registry_unavailable", {"Retry-After": "1"})


def admin_router(models: ModelRegistry, view: RegistryView, scaling: ScalingLog,
                 scheduler: SchedulerClient, announce: Announce, auth: AdminAuth) -> APIRouter:
    """``/admin/models...`` and ``/admin/status``; the admin key guards all."""
    router = APIRouter(tags=["admin"])

    @router.post("/admin/models/register", summary="Register (or update) a model alias",
                 openapi_extra=_REGISTER_DOC, status_code=201,
                 responses={201: {"description": "Registered (a new alias)",
                                  "content": {"application/json": {"schema": _REGISTERED}}},
                            200: {"description": "Updated (the alias existed)",
                                  "content": {"application/json": {"schema": _REGISTERED}}},
                            **errors(400, 401, 503)})
    async def register(request: Request) -> Response:
        if (refusal := auth.denied(request)) is not None:
            return refusal
        try:
            spec, autoscaling, ignored = parse_registration(await request.body())
            record, created = await models.register(spec, autoscaling)
        except BadRequest as err:
            return err.response()
        except (RedisError, OSError) as err:
            return _unavailable(err)
        await announce("model", spec.alias, "register")
        await view.refresh()  # this process serves the alias as soon as it answers
        return _json({"alias": spec.alias, "created": created, "ignored_fields": ignored,
                      "model": record.public()}, 201 if created else 200)

    @router.delete("/admin/models/{alias}", summary="Forget a model alias",
                   responses={200: {"description": "Deleted; the autoscaler unloads its "
                                                   "instances",
                                    "content": {"application/json": {"schema": _DELETED}}},
                              **errors(401, 404, 503)})
    async def delete(alias: str, request: Request) -> Response:
        if (refusal := auth.denied(request)) is not None:
            return refusal
        try:
            old = await models.delete(alias)
        except (RedisError, OSError) as err:
            return _unavailable(err)
        if old is None:
            return error_response(404, f"model {alias!r} is not registered", "alias",
                                  "model_not_found")
        await announce("model", alias, "delete")
        await view.refresh()
        return _json({"alias": alias, "deleted": True})

    @router.get("/admin/models", summary="Every registered model alias",
                responses={200: {"description": "The registrations",
                                 "content": {"application/json": {"schema": _MODELS}}},
                           **errors(401, 503)})
    async def list_models(request: Request) -> Response:
        if (refusal := auth.denied(request)) is not None:
            return refusal
        try:
            records = await models.all()
        except (RedisError, OSError) as err:
            return _unavailable(err)
        return _json({"models": [r.public() for r in records.values()]})

    @router.get("/admin/status", summary="Each alias: instances by state, in-flight, load; "
                "recent autoscaler actions",
                responses={200: {"description": "The fleet by alias",
                                 "content": {"application/json": {"schema": _STATUS}}},
                           **errors(401, 503)})
    async def status(request: Request) -> Response:
        if (refusal := auth.denied(request)) is not None:
            return refusal
        try:
            await view.refresh()
            actions = await scaling.recent(50)
            unloaded = await scaling.all_unloaded()
        except (RedisError, OSError) as err:
            return _unavailable(err)
        aliases = []
        for alias, record in sorted(view.models.items()):
            inflight = await _inflight(scheduler, alias)
            aliases.append(_alias_status(alias, record, view, inflight,
                                         [u for u in unloaded if u.alias == alias]))
        return _json({
            "models": aliases,
            "workers": {"active": sum(w.state == "active" for w in view.workers),
                        "lost": sum(w.state == "lost" for w in view.workers)},
            "actions": [msgspec.to_builtins(a) for a in actions],
        })

    return router


async def _inflight(scheduler: SchedulerClient, alias: str) -> dict[str, int]:
    """Member key → fleet-wide in-flight requests (empty when the scheduler can't say)."""
    try:
        reply = await scheduler.status(alias, MODELS_PARTITION)
    except (SchedulerUnavailable, SchedulerError):
        return {}
    return {m.key: m.inflight for m in reply.pools[0].members} if reply.pools else {}


def _alias_status(alias: str, record: ModelRecord, view: RegistryView,
                  inflight: dict[str, int], unloaded: list[Any]) -> dict[str, Any]:
    instances: list[dict[str, Any]] = []
    for worker in view.workers:
        for inst in worker.instances:
            if inst.model_alias != alias:
                continue
            key = inst.url.split("//", 1)[-1].rstrip("/")
            state = "LOST" if worker.state == "lost" else scaling_state(inst.state,
                                                                       inst.sleep_level)
            instances.append({"instance": inst.alias, "worker_id": worker.worker_id,
                              "url": inst.url, "state": state, "sleep_level": inst.sleep_level,
                              "capacity": inst.capacity, "inflight": inflight.get(key, 0),
                              "ttft_avg": inst.ttft_avg, "e2e_avg": inst.e2e_avg})
    names = {i["instance"] for i in instances}
    for slot in unloaded:
        if slot.instance not in names:
            instances.append({"instance": slot.instance, "worker_id": slot.worker_id,
                              "url": None, "state": "UNLOADED", "sleep_level": None,
                              "capacity": 0, "inflight": 0, "ttft_avg": None, "e2e_avg": None})
    active = [i for i in instances if i["state"] == "ACTIVE"]
    capacity = sum(max(1, i["capacity"]) for i in active)
    total = sum(i["inflight"] for i in instances)
    return {"alias": alias, "model_name": record.model_name, "fake": record.spec.fake,
            "load": round(total / capacity, 4) if capacity else None,
            "inflight": total, "capacity": capacity,
            "instances": sorted(instances, key=lambda i: i["instance"]),
            "autoscaling": msgspec.to_builtins(record.autoscaling)}
