"""A bare ASGI front for the OpenAI routes; everything else goes to the FastAPI app.

Like the select fast path, the gateway skips FastAPI's request machinery: its bar is
≤ 1 ms added per request, and a streamed answer must pass through untouched.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import msgspec

from services.api.gateway.body import BODY_IDLE_S, MAX_BODY_BYTES, GatewayError, Kind
from services.api.gateway.catalog import Catalog
from services.api.gateway.deadlines import Deadlines
from services.api.gateway.proxy import Gateway, Seen
from shared.access_log import log_request
from shared.errors import error_body

log = logging.getLogger("llmsched.api.gateway")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ROUTES: dict[str, Kind] = {"/v1/chat/completions": "chat", "/v1/completions": "completions"}
_JSON = [(b"content-type", b"application/json")]
_encode = msgspec.json.Encoder().encode


class GatewayFront:
    """Serves ``/v1/chat/completions``, ``/v1/completions`` and ``/v1/models``."""

    def __init__(self, app: ASGIApp, gateway: Gateway, catalog: Catalog,
                 api_keys: frozenset[str] = frozenset(),
                 access: logging.Logger | None = None) -> None:
        self.app = app
        self.gateway = gateway
        self.catalog = catalog
        self.api_keys = api_keys
        self.access = access or logging.getLogger("llmsched.api.access")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        seen = Seen()  # the status sent, for the access log (no wrapper around ``send``)
        try:
            await self._serve(scope, receive, send, seen)
        finally:
            status = seen.status
            if status >= 400 or status == 0 or self.access.isEnabledFor(logging.DEBUG):
                log_request(self.access, scope, status or 499, time.perf_counter() - started)

    async def _serve(self, scope: Scope, receive: Receive, send: Send, seen: Seen) -> None:
        path = scope["path"].rstrip("/")
        method = scope["method"]
        kind = ROUTES.get(path)
        try:
            if kind is None and path != "/v1/models":
                raise GatewayError(404, f"no route {path}", code="not_found")
            expected = "POST" if kind else "GET"
            if method != expected and not (method == "HEAD" and expected == "GET"):
                raise GatewayError(405, f"method {method} not allowed on {path}",
                                   code="method_not_allowed",
                                   allow="POST" if kind else "GET, HEAD")
            self._authorize(scope)
            if kind is None:
                await _send_json(send, 200, self.catalog.models_list(), head=method == "HEAD")
                seen.status = 200
                return
            raw = await _read_body(receive, self.gateway.deadlines)
            await self.gateway.handle(kind, raw, receive, send, scope["headers"], seen)
        except GatewayError as err:
            if err.status >= 500:
                log.warning("%s %s → %d: %s", method, path, err.status, err.message)
            await _send_error(send, err)
            seen.status = err.status

    def _authorize(self, scope: Scope) -> None:
        if not self.api_keys:
            return
        token = b""
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, rest = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    token = rest.strip()
                break
        if token and any(hmac.compare_digest(token, key.encode()) for key in self.api_keys):
            return
        raise GatewayError(401, "missing or wrong API key (Authorization: Bearer <key>)",
                           code="invalid_api_key")


_BODY_IDLE = "llmsched: request body idle"
"""The cancel message of a body read that timed out."""


async def _read_body(receive: Receive, deadlines: Deadlines) -> bytes:
    chunks: list[bytes] = []
    size = 0
    task = asyncio.current_task()
    assert task is not None
    loop = task.get_loop()
    try:
        while True:
            # A coarse deadline per read (Deadlines: no event-loop timer per request).
            deadlines.set(task, loop.time() + BODY_IDLE_S, lambda: task.cancel(_BODY_IDLE))
            try:
                message = await receive()
            except asyncio.CancelledError as err:
                if err.args != (_BODY_IDLE,):
                    raise
                task.uncancel()
                raise GatewayError(408, f"no byte of the request body for {BODY_IDLE_S:g}s",
                                   code="request_timeout") from None
            if message["type"] == "http.disconnect":
                raise GatewayError(400, "client disconnected before sending the body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise GatewayError(413, f"request body larger than {MAX_BODY_BYTES} bytes",
                                   code="body_too_large")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)
    finally:
        deadlines.clear(task)


async def _send_json(send: Send, status: int, value: Any, *, head: bool = False,
                     headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = value if isinstance(value, bytes) else _encode(value)
    await send({"type": "http.response.start", "status": status,
                "headers": [*_JSON, *(headers or []),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": b"" if head else body})


async def _send_error(send: Send, err: GatewayError) -> None:
    headers: list[tuple[bytes, bytes]] = []
    if err.retry_after is not None:
        headers.append((b"retry-after", str(max(1, round(err.retry_after))).encode()))
    if err.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    if err.allow:
        headers.append((b"allow", err.allow.encode()))
    await _send_json(send, err.status, error_body(err.status, err.message, err.param, err.code),
                     headers=headers)
