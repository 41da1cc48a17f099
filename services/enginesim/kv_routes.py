"""The KV-transfer handshake over HTTP: a decode engine tells its prefill the KV was pulled."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from services.enginesim.instance import EngineInstance
from services.enginesim.kvhold import notify_release, release_target
from services.enginesim.model import SimRequest
from services.enginesim.openai_shapes import dumps
from services.enginesim.protocol import ApiError, parse_json
from services.enginesim.runner import TokenSink


async def kv_release(inst: EngineInstance, request: Request) -> Response:
    """POST /_sim/kv/release ``{"request_id"}``: free the KV held for that request."""
    try:
        data = parse_json(inst.config, await request.body())
    except ApiError as err:
        return Response(dumps(err.body), status_code=err.status, media_type="application/json")
    rid = data.get("request_id")
    if not isinstance(rid, str):
        return Response(dumps({"error": "request_id must be a string"}), status_code=400,
                        media_type="application/json")
    released = inst.model.held.release(rid)
    return Response(dumps({"request_id": rid, "released": released}),
                    media_type="application/json")


def release_when_pulled(inst: EngineInstance, params: dict[str, Any] | None, req: SimRequest,
                        sink: TokenSink) -> None:
    """Decode side: once the request has its first token, free the prefill's copy of its KV.

    A decode that ends before its first token (aborted, failed) sends nothing: the prefill
    frees the blocks when their lease ends, as with a decode that died mid-transfer.
    """
    target = release_target(params or {})
    if target is None:
        return
    task = asyncio.ensure_future(_after_first_token(req, sink, *target))
    inst.kv_notices.add(task)
    task.add_done_callback(inst.kv_notices.discard)


async def _after_first_token(req: SimRequest, sink: TokenSink, host: str, port: int,
                             rid: str) -> None:
    while req.first_token is None and req.finish_reason is None:
        await sink.wait()
    if req.first_token is not None:
        await notify_release(host, port, rid)
