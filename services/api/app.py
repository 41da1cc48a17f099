"""The HTTP front: the F5 select API, pool status, simulate/analyze; health in health.py."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import msgspec
from fastapi import FastAPI, Request, Response

from services.api.fastpath import UNAVAILABLE, select_response
from services.api.health import health_router
from services.api.scheduler_client import SchedulerClient, SchedulerError, SchedulerUnavailable
from services.api.validation import check_iterations, decode_select
from shared.config import Config
from shared.errors import BadRequest, error_response, install_error_handlers
from shared.messages import SimulateRequest
from shared.state import StateStore

log = logging.getLogger("llmsched.api")

MAX_SIMULATE = 100_000
MAX_ANALYZE = 100_000

_SELECT_SCHEMA: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {
            "type": "object", "required": ["pool_name", "members"],
            "properties": {
                "pool_name": {"type": "string"},
                "partition": {"type": "string", "default": "Common"},
                "members": {"type": "array", "items": {"type": "string"},
                            "example": ["10.10.10.10:8001", "10.10.10.10:8002"]},
            },
        }}},
    },
    "responses": {"200": {"description": "`ip:port`, `none` or `fallback`",
                          "content": {"text/plain": {}}}},
}


@dataclass
class ApiState:
    """What the handlers need; built by the composition root and swapped on reload."""

    scheduler: SchedulerClient
    config: Config
    config_version: str
    store: StateStore | None = None
    fallback_pools: set[tuple[str, str]] = field(default_factory=set)

    def set_config(self, config: Config, version: str) -> None:
        self.config = config
        self.config_version = version
        self.fallback_pools = {p.ident for p in config.pools if p.fallback.pool_fallback}


def create_app(state: ApiState) -> FastAPI:
    """The FastAPI app over ``state`` (no globals: everything hangs off this closure)."""
    app = FastAPI(title="llmsched", version="0.1.0",
                  description="Select API for F5/gateways, pool status and analysis.")
    app.state.api = state
    encode = msgspec.json.Encoder().encode

    install_error_handlers(app)

    @app.exception_handler(SchedulerUnavailable)
    async def _unavailable(_req: Request, exc: SchedulerUnavailable) -> Response:
        log.warning("Scheduler unavailable: %s", exc)
        return error_response(503, UNAVAILABLE, None, "scheduler_unavailable",
                              {"Retry-After": "1"})

    @app.exception_handler(SchedulerError)
    async def _refused(_req: Request, exc: SchedulerError) -> Response:
        status = exc.code if 400 <= exc.code < 600 else 500
        if status >= 500:
            log.warning("Scheduler error %d: %s", exc.code, exc.message)
        return error_response(status, exc.message, None, "scheduler_error")

    @app.post("/scheduler/select", response_class=Response, openapi_extra=_SELECT_SCHEMA,
              summary="Pick the member for one request")
    async def select(request: Request) -> Response:
        # Served by SelectFastPath in front of this app; kept for /docs and direct use.
        status, headers, body = await select_response(state, await request.body(), encode)
        return Response(body, status, headers={k.decode(): v.decode() for k, v in headers})

    @app.get("/pools/status", summary="Status of every pool")
    async def pools_status() -> Response:
        reply = await state.scheduler.status()
        return Response(encode({"pools": reply.pools}), media_type="application/json")

    @app.get("/pools/{pool_name}/{partition}/status", summary="Status of one pool")
    async def pool_status(pool_name: str, partition: str) -> Response:
        try:
            reply = await state.scheduler.status(pool_name, partition)
        except SchedulerError as err:
            if err.code == 404:
                return error_response(404, f"pool {pool_name} in partition {partition} is"
                                      " unknown", "pool_name", "pool_not_found")
            raise
        return Response(encode(reply.pools[0]), media_type="application/json")

    async def _sim_body(request: Request, pool_name: str, partition: str,
                        iterations: int) -> bytes:
        body = decode_select(await request.body())
        if body.pool_name != pool_name:
            raise BadRequest("pool_name", f"body pool_name {body.pool_name!r} differs from"
                             f" the path's {pool_name!r}", code="path_mismatch")
        if body.partition != partition:
            raise BadRequest("partition", f"body partition {body.partition!r} differs from"
                             f" the path's {partition!r}", code="path_mismatch")
        return encode(SimulateRequest(pool_name=pool_name, partition=partition,
                                      members=body.members, iterations=iterations))

    @app.post("/pools/{pool_name}/{partition}/simulate", openapi_extra=_SELECT_SCHEMA,
              summary="Run N selections against the current scores")
    async def simulate(request: Request, pool_name: str, partition: str) -> Response:
        n = check_iterations(request.query_params.get("iterations"), 100, MAX_SIMULATE)
        reply = await state.scheduler.simulate(await _sim_body(request, pool_name, partition, n))
        return Response(encode(reply), media_type="application/json")

    @app.post("/pools/{pool_name}/{partition}/analyze", openapi_extra=_SELECT_SCHEMA,
              summary="Theoretical vs observed selection probabilities")
    async def analyze(request: Request, pool_name: str, partition: str) -> Response:
        n = check_iterations(request.query_params.get("iterations"), 1000, MAX_ANALYZE)
        reply = await state.scheduler.analyze(await _sim_body(request, pool_name, partition, n))
        return Response(encode(reply), media_type="application/json")

    app.include_router(health_router(state))

    return app
