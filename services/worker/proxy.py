"""Stream-through proxy to one instance's OpenAI routes, measuring TTFT and end-to-end latency."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import msgspec
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from services.worker.instance import Instance
from shared.errors import error_response

log = logging.getLogger("llmsched.worker")

FORWARD_REQUEST = ("content-type", "accept", "x-request-id", "traceparent", "tracestate")
FORWARD_RESPONSE = ("content-type", "content-encoding", "x-request-id", "cache-control")
INSTANCE_HEADER = "x-llmsched-instance"
# Generations may run for minutes: only connecting is bounded.
UPSTREAM_TIMEOUT = httpx.Timeout(None, connect=5.0)
METADATA_TIMEOUT_S = 10.0


def _rewrite_model(raw: bytes, inst: Instance) -> bytes:
    # The path already names the instance, so any model name the client sent is accepted.
    try:
        data = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return raw  # the engine answers malformed JSON in its own words
    if not isinstance(data, dict) or data.get("model") in inst.served_names:
        return raw
    data["model"] = inst.spec.alias
    return msgspec.json.encode(data)


class _Relay(StreamingResponse):
    """Relays an upstream response chunk by chunk; books the request when it ends."""

    def __init__(self, upstream: httpx.Response, inst: Instance, started: float,
                 gated: bool) -> None:
        self.upstream = upstream
        self.inst = inst
        self.started = started
        self.gated = gated
        self.completed = False
        headers = {k: v for k in FORWARD_RESPONSE if (v := upstream.headers.get(k))}
        headers[INSTANCE_HEADER] = inst.name
        super().__init__(self._chunks(), status_code=upstream.status_code, headers=headers)

    async def _chunks(self) -> AsyncIterator[bytes]:
        first = True
        async for chunk in self.upstream.aiter_raw():
            if first and chunk:
                first = False
                if self.status_code < 400:
                    self.inst.stats.first_byte(time.perf_counter() - self.started)
            yield chunk
        self.completed = True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                iterator: Any = self.body_iterator
                await iterator.aclose()  # a client that left: stop reading upstream now
                await self.upstream.aclose()
                ok = self.completed and self.status_code < 400
                finish(self.inst, time.perf_counter() - self.started if ok else None,
                       self.gated)


def finish(inst: Instance, e2e: float | None, gated: bool) -> None:
    """Book the end of a proxied request and free its capacity slot."""
    inst.stats.end(e2e)
    if gated and inst.gate is not None:
        inst.gate.release()


async def proxy(inst: Instance, http: httpx.AsyncClient, request: Request, path: str
                ) -> Response:
    """Forward ``request`` to ``inst``'s ``path`` and stream the answer back unbuffered."""
    if not inst.accepting():
        return error_response(503, f"instance {inst.name} is {inst.state}; retry elsewhere",
                              None, "instance_unavailable", {"Retry-After": "1"})
    try:
        raw = await request.body()
    except ClientDisconnect:  # a normal event: one line, no traceback
        log.info("proxy %s: client went away before its request body arrived", inst.name)
        return Response(status_code=499)
    body = _rewrite_model(raw, inst)
    headers = {k: v for k in FORWARD_REQUEST if (v := request.headers.get(k))}
    # Relayed bytes are passed through untouched, so ask for what the client accepts.
    headers["accept-encoding"] = request.headers.get("accept-encoding", "identity")
    started = time.perf_counter()
    inst.stats.begin()
    gated = False
    try:
        if inst.gate is not None:
            await inst.gate.acquire()
            gated = True
        upstream = await http.send(http.build_request("POST", inst.local_url + path,
                                                      content=body, headers=headers,
                                                      timeout=UPSTREAM_TIMEOUT),
                                   stream=True)
    except httpx.HTTPError as err:
        finish(inst, None, gated)
        return error_response(502, f"instance {inst.name} unreachable: {type(err).__name__} "
                              f"{err}".strip(), None, "upstream_unreachable")
    except BaseException:
        finish(inst, None, gated)
        raise
    return _Relay(upstream, inst, started, gated)


async def fetch(inst: Instance, http: httpx.AsyncClient, path: str) -> Response:
    """GET ``path`` of ``inst`` (metadata such as /v1/models): the engine's answer, relayed."""
    if inst.engine is None or inst.state in ("starting", "failed"):
        return error_response(503, f"instance {inst.name} is {inst.state}; retry elsewhere",
                              None, "instance_unavailable", {"Retry-After": "1"})
    try:
        upstream = await http.get(inst.local_url + path, headers={"accept-encoding": "identity"},
                                  timeout=METADATA_TIMEOUT_S)
    except httpx.HTTPError as err:
        return error_response(502, f"instance {inst.name} unreachable: {type(err).__name__} "
                              f"{err}".strip(), None, "upstream_unreachable")
    headers = {INSTANCE_HEADER: inst.name}
    if content_type := upstream.headers.get("content-type"):
        headers["content-type"] = content_type
    return Response(upstream.content, upstream.status_code, headers=headers)
