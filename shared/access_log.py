"""One log line per HTTP request that ends non-2xx (2xx at DEBUG only): a bare ASGI middleware."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def level_for(status: int) -> int:
    """WARNING for 5xx, INFO for 4xx, DEBUG for the rest."""
    if status >= 500:
        return logging.WARNING
    return logging.INFO if status >= 400 else logging.DEBUG


def log_request(log: logging.Logger, scope: Scope, status: int, seconds: float) -> None:
    """``METHOD PATH STATUS DURATIONms CLIENT`` at the status's level."""
    level = level_for(status)
    if not log.isEnabledFor(level):
        return
    client = scope.get("client")
    peer = f"{client[0]}:{client[1]}" if client else "-"
    log.log(level, "%s %s %d %.1fms %s", scope.get("method", "-"), scope.get("path", "-"),
            status, seconds * 1000, peer)


class AccessLog:
    """Logs each finished HTTP request of ``app`` through :func:`log_request`."""

    def __init__(self, app: ASGIApp, log: logging.Logger) -> None:
        self.app = app
        self.log = log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            log_request(self.log, scope, status, time.perf_counter() - started)
