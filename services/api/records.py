"""``GET /pools/{pool}/{partition}/records``: TTFTs joined with the state they were routed on."""

from __future__ import annotations

import msgspec
from fastapi import APIRouter, Request, Response

from services.api.scheduler_client import SchedulerClient
from services.api.scheduler_errors import SchedulerError
from shared.errors import error_response
from shared.openapi import errors
from shared.routing import RecordsRequest

MAX_RECORDS = 5000


def records_router(scheduler: SchedulerClient) -> APIRouter:
    """Export for offline study (JSON lines; greybox pools record, others return nothing)."""
    router = APIRouter(tags=["pools"])

    @router.get("/pools/{pool_name}/{partition}/records",
                summary="Recent requests: TTFT joined with the member state they were routed on",
                responses={200: {"description": "JSON lines, oldest first",
                                 "content": {"application/x-ndjson": {}}},
                           **errors(400, 404, 503)})
    async def records(pool_name: str, partition: str, request: Request) -> Response:
        raw = request.query_params.get("limit", "1000")
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_RECORDS:
            return error_response(400, f"limit must be 1..{MAX_RECORDS}", "limit",
                                  "invalid_parameter")
        body = msgspec.json.encode(RecordsRequest(pool_name=pool_name, partition=partition,
                                                  limit=int(raw)))
        try:
            data = await scheduler.call(scheduler.subjects.records, body, 10)
        except SchedulerError as err:
            if err.code == 404:
                return error_response(404, f"pool {pool_name} in partition {partition} is "
                                      "unknown", "pool_name", "pool_not_found")
            raise
        return Response(data, media_type="application/x-ndjson")

    return router
