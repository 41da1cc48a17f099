"""The HTTP front: the F5 select API, pool status, simulate/analyze; health in health.py."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Annotated

import msgspec
from fastapi import FastAPI, Path, Request, Response

from services.api.fastpath import ACCESS_LOGGER, UNAVAILABLE, outcome_response, select_response
from services.api.health import health_router
from services.api.scheduler_client import SchedulerClient
from services.api.scheduler_errors import SchedulerError, SchedulerUnavailable
from services.api.schemas import (
    ANALYZE,
    MAX_ANALYZE,
    MAX_SIMULATE,
    OUTCOME_BODY,
    OUTCOME_RESPONSES,
    SCHEMAS,
    SELECT_BODY,
    SELECT_RESPONSES,
    SIM_RESPONSES,
    SIMULATE,
    PoolsReply,
)
from services.api.validation import check_iterations, decode_select
from shared.access_log import AccessLog
from shared.config import Config
from shared.errors import BadRequest, error_response, install_error_handlers
from shared.messages import AnalyzeReply, PoolStatus, SimulateReply, SimulateRequest
from shared.openapi import errors, install_schemas, reply
from shared.state import StateStore
from shared.swagger import serve_swagger_ui

log = logging.getLogger("llmsched.api")

PoolName = Annotated[str, Path(description="F5 pool name", examples=["llm_pool"])]
Partition = Annotated[str, Path(description="F5 partition", examples=["Common"])]


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
                  description="Select API for F5/gateways, pool status and analysis.",
                  docs_url=None, redoc_url=None)
    serve_swagger_ui(app)
    # Every route but the select fast path (which logs its own requests) passes through here.
    app.add_middleware(AccessLog, log=logging.getLogger(ACCESS_LOGGER))
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

    @app.post("/scheduler/select", response_class=Response, openapi_extra=SELECT_BODY,
              responses=SELECT_RESPONSES, summary="Pick the member for one request")
    async def select(request: Request) -> Response:
        # Served by SelectFastPath in front of this app; kept for /docs and direct use.
        status, headers, body = await select_response(state, await request.body(), encode)
        return Response(body, status, headers={k.decode(): v.decode() for k, v in headers})

    @app.post("/scheduler/outcome", status_code=202, response_class=Response,
              openapi_extra=OUTCOME_BODY, responses=OUTCOME_RESPONSES,
              summary="Report how one selected request ended (the F5 iRule, fire-and-forget)")
    async def outcome(request: Request) -> Response:
        # Served by SelectFastPath in front of this app; kept for /docs and direct use.
        status, headers, body = await outcome_response(state, await request.body(), encode)
        return Response(body, status, headers={k.decode(): v.decode() for k, v in headers})

    @app.get("/pools/status", summary="Status of every pool",
             responses={**reply(PoolsReply), **errors(503)})
    async def pools_status() -> Response:
        status = await state.scheduler.status()
        return Response(encode(PoolsReply(pools=status.pools)), media_type="application/json")

    @app.get("/pools/{pool_name}/{partition}/status", summary="Status of one pool",
             responses={**reply(PoolStatus), **errors(404, 503)})
    async def pool_status(pool_name: PoolName, partition: Partition) -> Response:
        try:
            got = await state.scheduler.status(pool_name, partition)
        except SchedulerError as err:
            if err.code == 404:
                return error_response(404, f"pool {pool_name} in partition {partition} is"
                                      " unknown", "pool_name", "pool_not_found")
            raise
        return Response(encode(got.pools[0]), media_type="application/json")

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

    @app.post("/pools/{pool_name}/{partition}/simulate", openapi_extra=SIMULATE,
              responses={**reply(SimulateReply), **SIM_RESPONSES},
              summary="Run N selections against the current scores")
    async def simulate(request: Request, pool_name: PoolName, partition: Partition) -> Response:
        n = check_iterations(request.query_params.get("iterations"), 100, MAX_SIMULATE)
        sim = await state.scheduler.simulate(await _sim_body(request, pool_name, partition, n))
        return Response(encode(sim), media_type="application/json")

    @app.post("/pools/{pool_name}/{partition}/analyze", openapi_extra=ANALYZE,
              responses={**reply(AnalyzeReply), **SIM_RESPONSES},
              summary="Theoretical vs observed selection probabilities")
    async def analyze(request: Request, pool_name: PoolName, partition: Partition) -> Response:
        n = check_iterations(request.query_params.get("iterations"), 1000, MAX_ANALYZE)
        ana = await state.scheduler.analyze(await _sim_body(request, pool_name, partition, n))
        return Response(encode(ana), media_type="application/json")

    app.include_router(health_router(state))
    install_schemas(app, SCHEMAS)

    return app
