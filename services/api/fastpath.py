"""A bare ASGI handler for the F5's per-request calls in front of the FastAPI app.

``POST /scheduler/select`` (the F5 waits on it for every LLM request) and
``POST /scheduler/outcome`` (the iRule reports how each one ended) run once per LLM
request; FastAPI's request machinery costs more than the whole NATS round trip, so
they skip it. Every other route (and the documented routes in /docs) is served by
FastAPI as usual.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import msgspec

from services.api.gateway.body import BODY_IDLE_S
from services.api.metrics import SelectMetrics
from services.api.scheduler_errors import SchedulerError, SchedulerUnavailable
from services.api.validation import (
    MAX_BODY_BYTES,
    MAX_OUTCOME_BYTES,
    OutcomeReport,
    decode_outcome,
    decode_select,
)
from shared.access_log import log_request
from shared.errors import BadRequest, error_body
from shared.routing import OutcomeEvent

log = logging.getLogger("llmsched.api")
ACCESS_LOGGER = "llmsched.api.access"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Reply = tuple[int, list[tuple[bytes, bytes]], bytes]
Handler = Callable[[Any, bytes, Callable[[Any], bytes]], Awaitable[Reply]]
Observe = Callable[[int, bytes, float], None]
"""Metrics of one answered request: (status, body, seconds)."""

UNAVAILABLE = "scheduler unavailable; use the pool's own load balancing"
BUS_DOWN = "message bus unavailable; the outcome was not recorded"
_TEXT = [(b"content-type", b"text/plain; charset=utf-8")]
_JSON = [(b"content-type", b"application/json")]


class SelectFastPath:
    """Serves select and outcome itself; hands everything else to ``app``."""

    def __init__(self, app: ASGIApp, state: Any, metrics: SelectMetrics | None = None) -> None:
        self.app = app
        self.state = state
        self._encode = msgspec.json.Encoder().encode
        self.access = logging.getLogger(ACCESS_LOGGER)
        self._routes: dict[str, tuple[Handler, int, Observe | None]] = {
            "/scheduler/select": (select_response, MAX_BODY_BYTES,
                                  metrics.select if metrics else None),
            "/scheduler/outcome": (outcome_response, MAX_OUTCOME_BYTES,
                                   metrics.outcome if metrics else None),
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self._routes.get(scope["path"]) if scope["type"] == "http" else None
        if route is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        handler, limit, observe = route
        started = time.perf_counter()
        try:
            raw = await _read_body(receive, limit)
        except BadRequest as err:
            status, headers, body = err.status, _JSON, err.body()
        else:
            status, headers, body = await handler(self.state, raw, self._encode)
        await send({"type": "http.response.start", "status": status,
                    "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
        if observe is not None:
            observe(status, body, time.perf_counter() - started)
        if status >= 400 or self.access.isEnabledFor(logging.DEBUG):
            log_request(self.access, scope, status, time.perf_counter() - started)


async def select_response(state: Any, raw: bytes, encode: Callable[[Any], bytes]) -> Reply:
    """The whole select: validate, pool_fallback, ask the scheduler; (status, headers, body)."""
    try:
        request = decode_select(raw)
        if (request.pool_name, request.partition) in state.fallback_pools:
            return 200, _TEXT, b"fallback"
        answer = await state.scheduler.select(encode(request))
        return 200, _TEXT, answer.encode()
    except BadRequest as err:
        return err.status, _JSON, err.body()
    except SchedulerUnavailable as err:
        log.warning("Scheduler unavailable: %s", err)
        body = error_body(503, UNAVAILABLE, None, "scheduler_unavailable")
        return 503, [*_JSON, (b"retry-after", b"1")], body
    except SchedulerError as err:
        status = 400 if err.code == 400 else 500
        return status, _JSON, error_body(status, err.message, None, "scheduler_error")


async def outcome_response(state: Any, raw: bytes, encode: Callable[[Any], bytes]) -> Reply:
    """Validate an outcome report and publish it for every scheduler replica; 202, no body.

    A publish is buffered (it does not wait for the bus), so the iRule, which never reads
    the answer, is not held up; with the bus down the report is refused, not queued.
    """
    try:
        report = decode_outcome(raw)
    except BadRequest as err:
        return err.status, _JSON, err.body()
    client = state.scheduler
    if not client.nc.is_connected:  # reconnecting: a publish would only queue in memory
        return _bus_down(report, "not connected")
    try:
        await client.nc.publish(client.subjects.request_outcome,
                                encode(outcome_event(report, time.time())))
    except Exception as err:  # closed, or its pending buffer full
        return _bus_down(report, str(err) or type(err).__name__)
    return 202, [], b""


def _bus_down(report: OutcomeReport, why: str) -> Reply:
    log.debug("Outcome report of %s not published: %s", report.member, why)
    body = error_body(503, BUS_DOWN, None, "scheduler_unavailable")
    return 503, [*_JSON, (b"retry-after", b"1")], body


def outcome_event(report: OutcomeReport, at: float) -> OutcomeEvent:
    """The bus event of a report: no request id, so it takes the member's oldest select
    (which leaves the count at the member's next scrape after ``at``)."""
    return OutcomeEvent(request_id="", pool=report.pool_name, partition=report.partition,
                        member=report.member, status=report.status,
                        ttft_s=None if report.ttft_ms is None else report.ttft_ms / 1000.0,
                        ttft_at=report.ttft_at,
                        e2e_s=None if report.e2e_ms is None else report.e2e_ms / 1000.0,
                        final=True, at=at)


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        try:
            message = await asyncio.wait_for(receive(), BODY_IDLE_S)
        except TimeoutError:
            raise BadRequest(None, f"no byte of the request body for {BODY_IDLE_S:g}s", 408,
                             "request_timeout") from None
        if message["type"] == "http.disconnect":
            raise BadRequest(None, "client disconnected before sending the body",
                             code="invalid_body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BadRequest(None, f"body larger than {limit} bytes", 413,
                             "body_too_large")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
