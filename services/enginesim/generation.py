"""Chat and completion requests: validate, queue on the engine, answer whole or streamed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from services.enginesim import openai_shapes as shapes
from services.enginesim.instance import EngineInstance
from services.enginesim.kv_events import note_prompt
from services.enginesim.kv_routes import release_when_pulled
from services.enginesim.model import SimRequest
from services.enginesim.protocol import (
    ApiError,
    Kind,
    ParsedRequest,
    internal_error,
    parse_json,
    parse_request,
)
from services.enginesim.runner import TokenSink
from services.enginesim.tokenizer import block_hashes

log = logging.getLogger("llmsched.enginesim")


def json_response(body: Any, status: int = 200) -> Response:
    """A JSON response with vLLM's compact encoding."""
    return Response(shapes.dumps(body), status_code=status, media_type="application/json")


def error_response(err: ApiError) -> Response:
    """An engine-shaped error."""
    return json_response(err.body, err.status)


async def wait_disconnect(request: Request) -> None:
    """Return when the client has gone away (the body must already be read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _sim_request(inst: EngineInstance, parsed: ParsedRequest) -> SimRequest:
    cfg = inst.config
    params = parsed.kv_transfer_params or {}
    external = 0
    if params.get("do_remote_prefill") and cfg.role in ("decode", "both"):
        ids = params.get("remote_block_ids") or []
        external = min(len(ids) * cfg.block_size, len(parsed.prompt_ids) - 1)
    remote_decode = bool(params.get("do_remote_decode")) and cfg.role in ("prefill", "both")
    hashes = block_hashes(parsed.prompt_ids, cfg.block_size)
    note_prompt(inst.model.pool, parsed.prompt_ids, hashes)
    return SimRequest(inst.hex(16), len(parsed.prompt_ids), hashes,
                      max_tokens=parsed.max_tokens, target=parsed.target,
                      external_tokens=max(0, external), remote_decode=remote_decode, n=parsed.n)


def _transfer_params(inst: EngineInstance, req: SimRequest) -> dict[str, Any] | None:
    if not req.remote_decode or req.finish_reason == "abort":
        return None
    return {"do_remote_prefill": True, "do_remote_decode": False,
            "remote_block_ids": list(req.transfer_blocks), "remote_engine_id": inst.engine_id,
            "remote_request_id": req.rid, "remote_host": inst.host, "remote_port": inst.port,
            "tp_size": 1}


async def handle_generation(inst: EngineInstance, kind: Kind, request: Request) -> Response:
    """POST /v1/chat/completions and /v1/completions."""
    received = inst.runner.clock.now()
    cfg = inst.config
    raw = await request.body()
    try:
        parsed = parse_request(cfg, kind, parse_json(cfg, raw))
    except ApiError as err:
        return error_response(err)
    faults = inst.faults
    if faults.latency_ms > 0:
        await asyncio.sleep(faults.latency_ms / 1000)
    if faults.hang:
        await wait_disconnect(request)
        return Response(status_code=499)
    if inst.dice.hit(faults.error_rate):
        return error_response(internal_error(cfg, "The engine failed to process the request "
                                             "(injected fault)."))
    req = _sim_request(inst, parsed)
    sink = inst.runner.submit(req, received)
    if cfg.role in ("decode", "both"):
        release_when_pulled(inst, parsed.kv_transfer_params, req, sink)
    texts = inst.filler.tokens(hash(tuple(parsed.prompt_ids[-32:])), req.target)
    rid = ("chatcmpl-" if kind == "chat" else "cmpl-") + req.rid
    created = int(time.time())
    if parsed.stream:
        return StreamingResponse(_stream(inst, kind, parsed, req, sink, texts, rid, created),
                                 media_type="text/event-stream")
    return await _whole(inst, kind, parsed, req, sink, texts, rid, created, request)


async def _whole(inst: EngineInstance, kind: Kind, parsed: ParsedRequest, req: SimRequest,
                 sink: TokenSink, texts: list[str], rid: str, created: int,
                 request: Request) -> Response:
    if req.finish_reason is None:
        watcher = asyncio.ensure_future(wait_disconnect(request))
        waiter = asyncio.ensure_future(sink.wait_done())
        try:
            await asyncio.wait((waiter, watcher), return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            waiter.cancel()
        if req.finish_reason is None:
            inst.runner.abort(req)
            _log_abort(rid, req)
            return Response(status_code=499)
    text = "".join(texts[:req.num_output])
    args: dict[str, Any] = {
        "rid": rid, "created": created, "model": parsed.model,
        "finish_reason": req.finish_reason, "prompt_tokens": req.prompt_len,
        "completion_tokens": req.num_output, "fingerprint": inst.fingerprint,
        "kv_transfer_params": _transfer_params(inst, req)}
    if kind == "chat":
        return json_response(shapes.chat_response(content=text, **args))
    return json_response(shapes.completion_response(text=text, **args))


async def _stream(inst: EngineInstance, kind: Kind, parsed: ParsedRequest, req: SimRequest,
                  sink: TokenSink, texts: list[str], rid: str, created: int
                  ) -> AsyncIterator[bytes]:
    model = parsed.model
    chunk = shapes.chat_chunk if kind == "chat" else shapes.completion_chunk
    delivered = 0
    started = False
    try:
        while True:
            count = req.num_output
            finish = req.finish_reason
            if count == delivered and finish is None:
                await sink.wait()
                continue
            parts: list[bytes] = []
            if not started and kind == "chat":
                parts.append(shapes.chat_role_chunk(rid, created, model))
            started = True
            for index in range(delivered, count):
                last = finish is not None and index == count - 1
                parts.append(chunk(rid, created, model, texts[index], finish if last else None))
            if finish is not None and count == delivered:
                parts.append(chunk(rid, created, model, "", finish))
            if delivered == 0 and count and req.first_token is not None:
                inst.runner.record_egress(inst.runner.clock.now() - req.first_token)
            delivered = count
            yield b"".join(parts)
            if finish is not None:
                break
        if parsed.include_usage:
            obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
            yield shapes.usage_chunk(rid, obj, created, model, req.prompt_len, req.num_output,
                                     inst.fingerprint)
        yield shapes.DONE
    finally:
        if req.finish_reason is None:
            with contextlib.suppress(Exception):
                inst.runner.abort(req)
            _log_abort(rid, req)


def _log_abort(rid: str, req: SimRequest) -> None:
    log.info("Aborted request %s after %d of %d tokens: the client went away",
             rid, req.num_output, req.target)
