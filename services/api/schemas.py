"""Reply shapes of the API's JSON routes and their OpenAPI fragments (what /docs shows)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from services.api.health import HealthReply, LiveReply
from services.api.validation import MAX_MEMBERS, OutcomeReport
from shared.messages import AnalyzeReply, PoolStatus, SimulateReply
from shared.openapi import body, errors, merge, query
from shared.workers import HeartbeatRequest, InstanceSummary, RegisterRequest

MAX_SIMULATE = 100_000
MAX_ANALYZE = 100_000


class SelectBody(msgspec.Struct, kw_only=True):
    """Body of select, simulate and analyze (as documented; decoded as SelectRequest)."""

    pool_name: Annotated[str, msgspec.Meta(min_length=1)]
    members: Annotated[list[str], msgspec.Meta(max_length=MAX_MEMBERS)]
    """Member keys ``ip:port`` (``[v6]:port``) the caller may use now."""
    partition: Annotated[str, msgspec.Meta(min_length=1)] = "Common"


class PoolsReply(msgspec.Struct, kw_only=True):
    """``GET /pools/status``."""

    pools: list[PoolStatus]


class RegisterReply(msgspec.Struct, kw_only=True):
    """``POST /workers/register``."""

    worker_id: str
    state: str
    lost_after_s: float


class HeartbeatReply(msgspec.Struct, kw_only=True):
    """``POST /workers/{worker_id}/heartbeat``."""

    worker_id: str
    state: str


class UnregisterReply(msgspec.Struct, kw_only=True):
    """``DELETE /workers/{worker_id}/unregister``."""

    worker_id: str
    unregistered: bool


class WorkerView(msgspec.Struct, kw_only=True):
    """One worker in ``GET /admin/workers``."""

    worker_id: str
    worker_url: str
    gpu_info: dict[str, Any]
    instances: list[InstanceSummary]
    heartbeat_interval_s: float | None
    registered_at: float
    last_heartbeat: float
    state: str
    lost_at: float | None
    heartbeats: int
    heartbeat_age_s: float
    lost_after_s: float


class WorkersReply(msgspec.Struct, kw_only=True):
    """``GET /admin/workers``."""

    workers: list[WorkerView]


SCHEMAS: list[type[Any]] = [SelectBody, OutcomeReport, PoolsReply, PoolStatus, SimulateReply,
                            AnalyzeReply, HealthReply, LiveReply, RegisterRequest,
                            HeartbeatRequest, RegisterReply, HeartbeatReply, UnregisterReply,
                            WorkersReply]
"""Every msgspec type the API's OpenAPI document refers to."""

SELECT_EXAMPLE = {"pool_name": "llm_pool", "partition": "Common",
                  "members": ["10.10.10.10:8001", "10.10.10.10:8002"]}
SELECT_BODY = body(SelectBody, example=SELECT_EXAMPLE)
SELECT_RESPONSES = {
    200: {"description": "`ip:port` of the chosen member, `none`, `fallback`, or `busy` (a pool"
                         " with admission control: every candidate is past its limits)",
          "content": {"text/plain": {"schema": {"type": "string"}}}},
    **errors(400, 413, 500, 503, e500="The scheduler failed internally")}
OUTCOME_BODY = body(OutcomeReport, example={
    "pool_name": "llm_pool", "partition": "Common", "member": "10.10.10.10:8001",
    "status": 200, "ttft_ms": 182.0})
OUTCOME_RESPONSES = {
    202: {"description": "Published to the scheduler replicas (empty body)"},
    **errors(400, 413, 503, e503="The message bus is down: the outcome was not recorded")}


def iterations(default: int, maximum: int) -> dict[str, Any]:
    """The ``iterations`` query parameter of simulate/analyze."""
    return query("iterations", {"type": "integer", "minimum": 1, "maximum": maximum,
                                "default": default},
                 f"selections to run (1..{maximum}; 400 outside)")


SIMULATE = merge(SELECT_BODY, iterations(100, MAX_SIMULATE))
ANALYZE = merge(SELECT_BODY, iterations(1000, MAX_ANALYZE))
SIM_RESPONSES = {**errors(400, 404, 413, 503, e404="The pool is unknown to the scheduler")}
REGISTER_BODY = body(RegisterRequest, example={
    "worker_id": "gpu-a", "worker_url": "http://10.0.0.5:8100",
    "gpu_info": {"available_memory_gb": 70.5, "utilization": 0.1},
    "heartbeat_interval_s": 5, "instances": []})
HEARTBEAT_BODY = body(HeartbeatRequest, required=False,
                      example={"instances": [], "gpu_info": {"available_memory_gb": 70.5}})
