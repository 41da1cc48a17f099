"""A bare ASGI handler for ``POST /scheduler/select`` in front of the FastAPI app.

The F5 waits on this call for every LLM request; FastAPI's request machinery costs
more than the whole NATS round trip, so the hot path skips it. Every other route
(and the documented select route in /docs) is served by FastAPI as usual.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import msgspec

from services.api.scheduler_client import SchedulerError, SchedulerUnavailable
from services.api.validation import MAX_BODY_BYTES, decode_select
from shared.access_log import log_request
from shared.errors import BadRequest, error_body

log = logging.getLogger("llmsched.api")
ACCESS_LOGGER = "llmsched.api.access"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

UNAVAILABLE = "scheduler unavailable; use the pool's own load balancing"
_TEXT = [(b"content-type", b"text/plain; charset=utf-8")]
_JSON = [(b"content-type", b"application/json")]


class SelectFastPath:
    """Serves select itself; hands everything else to ``app``."""

    def __init__(self, app: ASGIApp, state: Any) -> None:
        self.app = app
        self.state = state
        self._encode = msgspec.json.Encoder().encode
        self.access = logging.getLogger(ACCESS_LOGGER)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["path"] != "/scheduler/select"
                or scope["method"] != "POST"):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        try:
            raw = await _read_body(receive)
        except BadRequest as err:
            status, headers, body = err.status, _JSON, err.body()
        else:
            status, headers, body = await select_response(self.state, raw, self._encode)
        await send({"type": "http.response.start", "status": status,
                    "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
        if status >= 400 or self.access.isEnabledFor(logging.DEBUG):
            log_request(self.access, scope, status, time.perf_counter() - started)


async def select_response(state: Any, raw: bytes, encode: Callable[[Any], bytes]
                          ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
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


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest(None, "client disconnected before sending the body",
                             code="invalid_body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BadRequest(None, f"body larger than {MAX_BODY_BYTES} bytes", 413,
                             "body_too_large")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
