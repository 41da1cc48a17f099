"""The FastAPI app of one simulated engine: OpenAI routes, probes, metrics, sleep and control."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Match

from services.enginesim import control
from services.enginesim.generation import error_response, handle_generation, json_response
from services.enginesim.http_stats import HttpStatsMiddleware
from services.enginesim.instance import EngineInstance
from services.enginesim.kv_events import start_publisher
from services.enginesim.kv_routes import kv_release
from services.enginesim.openai_shapes import models_list
from services.enginesim.promtext import CONTENT_TYPE
from services.enginesim.protocol import (
    ApiError,
    internal_error,
    parse_json,
    tokenize_messages_error,
)
from services.enginesim.tokenizer import encode_chat, encode_prompt

log = logging.getLogger("llmsched.enginesim")

SGLANG_METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
Handler = Callable[[EngineInstance, Request], Awaitable[Response]]


class VaryOriginMiddleware:
    """Adds ``vary: Origin`` to every response, as vLLM's CORS setup does."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_wrapper(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"vary", b"Origin")]
            await send(message)

        await self.app(scope, receive, send_wrapper)


async def _models(inst: EngineInstance, request: Request) -> Response:
    cfg = inst.config
    names = cfg.model_names
    perm_ids = [f"modelperm-{inst.hex(16)}" for _ in names]
    return json_response(models_list(names, cfg.model, cfg.max_model_len, int(time.time()),
                                     "sglang" if inst.is_sglang else "vllm", perm_ids))


async def _health(inst: EngineInstance, request: Request) -> Response:
    return Response(status_code=503 if inst.faults.unhealthy else 200)


async def _version(inst: EngineInstance, request: Request) -> Response:
    return json_response({"version": inst.config.version})


async def _load(inst: EngineInstance, request: Request) -> Response:
    return json_response({"server_load": inst.model.num_running + inst.model.num_waiting})


async def _tokenize(inst: EngineInstance, request: Request) -> Response:
    try:
        data = parse_json(inst.config, await request.body())
    except ApiError as err:
        return error_response(err)
    if "messages" in data:
        messages = data["messages"]
        if not isinstance(messages, list):
            return error_response(tokenize_messages_error(inst.config, data))
        # The chat template as /v1/chat/completions renders it, so counts agree.
        tokens = encode_chat([m for m in messages if isinstance(m, dict)])
    else:
        tokens = encode_prompt(str(data.get("prompt", "")))
    return json_response({"count": len(tokens), "max_model_len": inst.config.max_model_len,
                          "tokens": tokens, "token_strs": None})


async def _metrics(inst: EngineInstance, request: Request) -> Response:
    faults = inst.faults
    if faults.metrics_delay_ms > 0:
        await asyncio.sleep(faults.metrics_delay_ms / 1000)
    if inst.dice.hit(faults.metrics_error_rate):
        return error_response(internal_error(inst.config, "metrics unavailable (injected fault)"))
    media = SGLANG_METRICS_TYPE if inst.is_sglang else CONTENT_TYPE
    return Response(inst.metrics_text(), media_type=media)


async def _model_info(inst: EngineInstance, request: Request) -> Response:
    cfg = inst.config
    return json_response({"model_path": cfg.model, "tokenizer_path": cfg.model,
                          "is_generation": True, "preferred_sampling_params": None})


async def _server_info(inst: EngineInstance, request: Request) -> Response:
    cfg = inst.config
    return json_response({"model_path": cfg.model, "served_model_name": cfg.model_names[0],
                          "max_running_requests": cfg.max_num_seqs,
                          "max_total_num_tokens": cfg.num_gpu_blocks * cfg.block_size,
                          "chunked_prefill_size": cfg.max_num_batched_tokens,
                          "page_size": cfg.block_size, "context_length": cfg.max_model_len,
                          "version": cfg.version})


def _routes(inst: EngineInstance) -> list[tuple[str, list[str], Handler]]:
    async def chat(i: EngineInstance, r: Request) -> Response:
        return await handle_generation(i, "chat", r)

    async def completions(i: EngineInstance, r: Request) -> Response:
        return await handle_generation(i, "completion", r)

    routes: list[tuple[str, list[str], Handler]] = [
        ("/v1/chat/completions", ["POST"], chat),
        ("/v1/completions", ["POST"], completions),
        ("/v1/models", ["GET"], _models),
        ("/health", ["GET"], _health),
        ("/ping", ["GET", "POST"], _health),
        ("/version", ["GET"], _version),
        ("/load", ["GET"], _load),
        ("/tokenize", ["POST"], _tokenize),
        ("/metrics", ["GET"], _metrics),
        ("/_sim/faults", ["GET"], control.get_faults),
        ("/_sim/faults", ["POST"], control.post_faults),
        ("/_sim/state", ["GET"], control.get_state),
        ("/_sim/kv/release", ["POST"], kv_release),
    ]
    if inst.is_sglang:
        routes += [
            ("/release_memory_occupation", ["POST"], control.release_memory),
            ("/resume_memory_occupation", ["POST"], control.resume_memory),
            ("/health_generate", ["GET"], _health),
            ("/get_model_info", ["GET"], _model_info),
            ("/get_server_info", ["GET"], _server_info),
        ]
    else:
        routes += [
            ("/sleep", ["POST"], control.sleep),
            ("/wake_up", ["POST"], control.wake_up),
            ("/is_sleeping", ["GET"], control.is_sleeping),
        ]
    return routes


def _bind(inst: EngineInstance, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            return await handler(inst, request)
        except ClientDisconnect:
            # A client that gives up mid-upload is normal traffic, not a server error.
            log.info("%s %s: client went away before its request body arrived",
                     request.method, request.url.path)
            return Response(status_code=499)

    endpoint.__name__ = getattr(handler, "__name__", "endpoint").lstrip("_")
    return endpoint


def build_app(inst: EngineInstance) -> FastAPI:
    """The ASGI app of ``inst``; its lifespan runs the engine's step loop."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        inst.runner.start()
        publisher = start_publisher(inst.model.pool, inst.config)
        try:
            yield
        finally:
            if publisher is not None:
                await publisher.close()
            await inst.runner.stop()

    app = FastAPI(title="enginesim", lifespan=lifespan)
    for path, methods, handler in _routes(inst):
        app.add_api_route(path, _bind(inst, handler), methods=methods,
                          include_in_schema=not path.startswith("/_sim"))

    def resolve(scope: Any) -> str:
        for route in app.router.routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return str(getattr(route, "path", "none"))
        return "none"

    app.add_middleware(HttpStatsMiddleware, stats=inst.http_stats, resolve=resolve)
    if not inst.is_sglang:
        app.add_middleware(VaryOriginMiddleware)
    return app
