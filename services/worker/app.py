"""The worker's HTTP API (SPEC §2.3): instances, their status, sleep/wake and the proxy."""

from __future__ import annotations

import hmac
import logging
import time
from dataclasses import dataclass, field
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Depends, FastAPI, Path, Request, Response

from services.worker.instance import Instance
from services.worker.instances import InstanceManager
from services.worker.models import (
    BACKENDS,
    InstanceInfo,
    InstanceStatus,
    ModelSpec,
    SleepRequest,
)
from services.worker.proxy import fetch, proxy
from services.worker.replies import InstanceList, Probe, Stopped, WorkerHealth, WorkerInfo
from shared.access_log import AccessLog
from shared.decoding import decode_object
from shared.errors import BadRequest, install_error_handlers
from shared.openapi import Responses, body, errors, install_schemas, merge, probe, query, ref, reply
from shared.swagger import serve_swagger_ui

log = logging.getLogger("llmsched.worker")

AliasPath = Annotated[str, Path(description="instance name (alias, alias-r2, ...)",
                                examples=["fake-model"])]

VERSION = "0.1.0"

_SPEC_EXAMPLE = {"alias": "fake-model", "model_name": "__fake__", "fake": True,
                 "fake_response": "FAKE_OK", "fake_delay_ms": 3000, "fake_capacity": 1}
_OPENAI_BODY = body({"type": "object", "description": "an OpenAI request; stream: true is "
                     "relayed as Server-Sent Events"},
                    example={"model": "fake-model",
                             "messages": [{"role": "user", "content": "hi"}]})
_RELAYED = {"description": "The engine's own answer, relayed as it is",
            "content": {"application/json": {"schema": {"type": "object"}}}}
_PROXY_RESPONSES: Responses = {
    200: {"description": "The engine's answer (JSON, or text/event-stream when streaming)",
          "content": {"application/json": {"schema": {"type": "object"}},
                      "text/event-stream": {"schema": {"type": "string"}}}},
    **errors(401, 404, 502, 503, e502="The engine is unreachable",
             e503="The instance is not taking requests (starting, asleep, draining)"),
    "4XX": _RELAYED, "5XX": _RELAYED}
_MODELS_RESPONSES: Responses = {
    200: {"description": "The engine's model list: the alias and the instance name",
          "content": {"application/json": {"schema": {
              "type": "object", "required": ["object", "data"],
              "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": {
                  "type": "object", "required": ["id"],
                  "properties": {"id": {"type": "string"}}}}}}}}},
    **errors(401, 404, 502, 503, e502="The engine is unreachable",
             e503="The instance is starting or failed"),
    "4XX": _RELAYED, "5XX": _RELAYED}
_INSTANCE = reply(InstanceInfo)
_PROBE = {**reply(Probe), 503: {"description": "Shutting down",
                                "content": {"application/json": {"schema": ref(Probe)}}}}
SCHEMAS: list[type[Any]] = [WorkerHealth, Probe, WorkerInfo, InstanceList, InstanceInfo,
                            InstanceStatus, Stopped, ModelSpec, SleepRequest]
"""Every msgspec type the worker's OpenAPI document refers to."""


@dataclass
class WorkerIdentity:
    """Who this worker is and how callers must authenticate."""

    worker_id: str
    worker_url: str
    api_key: str | None = None
    """When set, every route but /health needs ``Authorization: Bearer <key>``."""
    started_at: float = field(default_factory=time.time)


def _json(value: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(value), status_code=status, media_type="application/json")


def _level(request: Request, body: SleepRequest) -> int:
    raw = request.query_params.get("level")
    if raw is None:
        return body.level or 1
    if raw.strip() not in ("1", "2"):
        raise BadRequest("level", f"level must be 1 or 2, got {raw!r}")
    return int(raw)


def create_app(manager: InstanceManager, identity: WorkerIdentity) -> FastAPI:
    """The FastAPI app of one worker (no globals: everything hangs off this closure)."""
    app = FastAPI(title="llmsched worker", version=VERSION,
                  description="Starts, sleeps, wakes and proxies this host's engine instances.",
                  docs_url=None, redoc_url=None)
    serve_swagger_ui(app)
    app.add_middleware(AccessLog, log=logging.getLogger("llmsched.worker.access"))

    install_error_handlers(app)

    async def authorised(request: Request) -> None:
        key = identity.api_key
        if not key:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(),
                                                                  key.encode()):
            raise BadRequest(None, "missing or wrong API key (Authorization: Bearer <key>)", 401,
                             "unauthorized")

    @probe(app, "/health", {**reply(WorkerHealth), 503: {
        "description": "Shutting down", "content": {"application/json": {
            "schema": ref(WorkerHealth)}}}}, summary="Health: serving, instance count")
    async def health() -> Response:
        if manager.stopping:
            return _json(WorkerHealth(status="unhealthy", worker_id=identity.worker_id,
                                      instances=len(manager.instances),
                                      message="shutting down"), 503)
        return _json(WorkerHealth(status="healthy", worker_id=identity.worker_id,
                                  instances=len(manager.instances)))

    @probe(app, "/livez", reply(Probe),
           summary="Liveness: the process serves HTTP (always 200)")
    async def livez() -> Response:
        return _json(Probe(status="alive"))

    @probe(app, "/readyz", _PROBE,
           summary="Readiness: takes instance and proxy requests (503 when stopping)")
    async def readyz() -> Response:
        if manager.stopping:
            return _json(Probe(status="not_ready", message="shutting down"), 503)
        return _json(Probe(status="ready", message=f"{len(manager.instances)} instance(s)"))

    api = APIRouter(dependencies=[Depends(authorised)])

    @api.get("/info", summary="This worker: identity, host GPUs, backends",
             responses={**reply(WorkerInfo), **errors(401)})
    async def info() -> Response:
        s = manager.settings
        return _json(WorkerInfo(
            worker_id=identity.worker_id, worker_url=identity.worker_url,
            version=VERSION, engine_host=s.engine_host, advertise_host=s.advertise_host,
            gpu=s.gpu, gpu_info=await manager.host_gpu(),
            default_backend=s.default_backend, backends=list(BACKENDS),
            vllm_python=s.vllm_python, instances=len(manager.instances),
            started_at=identity.started_at,
            uptime_s=round(time.time() - identity.started_at, 3)))

    @api.post("/instances/start", status_code=201, summary=(
        "Start an instance of a model (201 ready, 202 still starting)"),
        openapi_extra=merge(body(ModelSpec, example=_SPEC_EXAMPLE), query(
            "wait", {"type": "boolean", "default": False},
            "answer only once the instance is ready or failed")),
        responses={**reply(InstanceInfo, "Started and ready", 201),
                   **reply(InstanceInfo, "Starting (a process engine boots)", 202),
                   **errors(400, 401, 409, 502, e409="The name is taken (or the port)",
                            e502="The engine failed to start")})
    async def start(request: Request) -> Response:
        spec, ignored = decode_object(await request.body(), ModelSpec)
        wait = request.query_params.get("wait", "").lower() in ("1", "true", "yes")
        inst = await manager.start(spec, ignored, wait=wait)
        status = 202 if inst.state == "starting" else 201
        if inst.state == "failed":
            raise BadRequest(None, f"instance {inst.name} failed to start: {inst.error}", 502,
                             "engine_failed")
        return _json(inst.info(manager.settings.advertise_host), status)

    @api.get("/instances", summary="Every instance",
             responses={**reply(InstanceList), **errors(401)})
    async def instances() -> Response:
        return _json({"instances": manager.infos()})

    @api.get("/instances/{alias}", summary="One instance",
             responses={**_INSTANCE, **errors(401, 404)})
    async def instance(alias: AliasPath) -> Response:
        return _json(manager.get(alias).info(manager.settings.advertise_host))

    @api.get("/instances/{alias}/status", summary="Live status from the engine and the proxy",
             responses={**reply(InstanceStatus), **errors(401, 404)})
    async def status(alias: AliasPath) -> Response:
        return _json(await manager.status(alias))

    @api.post("/instances/{alias}/stop", summary="Stop (unload) an instance",
              responses={**reply(Stopped), **errors(401, 404)})
    async def stop(alias: AliasPath) -> Response:
        return _json(Stopped(stopped=True, instance=await manager.stop(alias)))

    @api.post("/instances/{alias}/sleep", summary=(
        "Drain, then sleep at level 1 or 2 (?level= or body)"),
        openapi_extra=merge(body(SleepRequest, required=False), query(
            "level", {"type": "integer", "enum": [1, 2]}, "sleep level (default: body, else 1)")),
        responses={**_INSTANCE, **errors(400, 401, 404, 409, 502,
                                          e409="The instance is starting or failed")})
    async def sleep(alias: AliasPath, request: Request) -> Response:
        manager.get(alias)
        body, _ = decode_object(await request.body(), SleepRequest, empty_ok=True)
        inst = await manager.sleep(alias, _level(request, body), body.drain_timeout_s)
        return _json(inst.info(manager.settings.advertise_host))

    @api.post("/instances/{alias}/wake", summary="Wake a sleeping instance",
              responses={**_INSTANCE, **errors(401, 404, 409, 502,
                                                e409="The instance is starting or failed")})
    async def wake(alias: AliasPath) -> Response:
        inst = await manager.wake(alias)
        return _json(inst.info(manager.settings.advertise_host))

    def proxied(alias: str) -> Instance:
        inst: Instance | None = manager.instances.get(alias)
        if inst is None:
            raise BadRequest("alias", f"no instance named {alias!r} on this worker", 404,
                             "model_not_found")
        return inst

    async def relay(alias: str, request: Request, path: str) -> Response:
        return await proxy(proxied(alias), manager.http, request, path)

    @api.get("/proxy/{alias}/v1/models", responses=_MODELS_RESPONSES,
             summary="OpenAI model list of one instance (the engine's answer)")
    async def proxy_models(alias: AliasPath) -> Response:
        return await fetch(proxied(alias), manager.http, "/v1/models")

    @api.post("/proxy/{alias}/v1/chat/completions", openapi_extra=_OPENAI_BODY,
              responses=_PROXY_RESPONSES,
              summary="OpenAI chat completions on one instance (streamed through)")
    async def proxy_chat(alias: AliasPath, request: Request) -> Response:
        return await relay(alias, request, "/v1/chat/completions")

    @api.post("/proxy/{alias}/v1/completions", openapi_extra=_OPENAI_BODY,
              responses=_PROXY_RESPONSES,
              summary="OpenAI completions on one instance (streamed through)")
    async def proxy_completions(alias: AliasPath, request: Request) -> Response:
        return await relay(alias, request, "/v1/completions")

    app.include_router(api)
    install_schemas(app, SCHEMAS)
    return app
