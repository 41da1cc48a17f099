"""Per-handler HTTP statistics as vLLM's instrumentator exposes them, and their middleware."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from services.enginesim.promtext import Exposition
from services.enginesim.stats import Histogram

HIGHR_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5,
                 4.0, 4.5, 5.0, 7.5, 10.0, 30.0, 60.0)
LOWR_BUCKETS = (0.1, 0.5, 1.0)
# vLLM keeps these out of the instrumentator.
EXCLUDED = frozenset({"/metrics", "/health", "/load", "/ping", "/version", "/server_info"})

_HELP_REQUESTS = "Total number of requests by method, status and handler."
_HELP_REQ_SIZE = ("Content length of incoming requests by handler. Only value of header is "
                  "respected. Otherwise ignored. No percentile calculated. ")
_HELP_RESP_SIZE = ("Content length of outgoing responses by handler. Only value of header is "
                   "respected. Otherwise ignored. No percentile calculated. ")
_HELP_HIGHR = ("Latency with many buckets but no API specific labels. Made for more accurate "
               "percentile calculations. ")
_HELP_LOWR = ("Latency with only few buckets by handler. Made to be only used if aggregation "
              "by handler is important. ")


@dataclass
class _Sized:
    count: int = 0
    total: float = 0.0
    created: float = field(default_factory=time.time)


@dataclass
class HttpStats:
    """Counters keyed like prometheus-fastapi-instrumentator's default metrics."""

    requests: dict[tuple[str, str, str], tuple[int, float]] = field(default_factory=dict)
    request_size: dict[str, _Sized] = field(default_factory=dict)
    response_size: dict[str, _Sized] = field(default_factory=dict)
    highr: Histogram = field(default_factory=lambda: Histogram(HIGHR_BUCKETS))
    highr_created: float = field(default_factory=time.time)
    lowr: dict[tuple[str, str], tuple[Histogram, float]] = field(default_factory=dict)

    def record(self, handler: str, method: str, status: int, req_bytes: int, resp_bytes: int,
               seconds: float) -> None:
        """Account one finished request."""
        key = (handler, method, f"{status // 100}xx")
        count, created = self.requests.get(key, (0, time.time()))
        self.requests[key] = (count + 1, created)
        for table, size in ((self.request_size, req_bytes), (self.response_size, resp_bytes)):
            sized = table.setdefault(handler, _Sized())
            sized.count += 1
            sized.total += size
        self.highr.observe(seconds)
        hist, _ = self.lowr.setdefault((handler, method), (Histogram(LOWR_BUCKETS), time.time()))
        hist.observe(seconds)

    def render(self, out: Exposition) -> None:
        """Append the http_* families."""
        out.counter("http_requests", _HELP_REQUESTS, (
            ({"handler": h, "method": m, "status": s}, c, cr)
            for (h, m, s), (c, cr) in self.requests.items()))
        sized = (("http_request_size_bytes", _HELP_REQ_SIZE, self.request_size),
                 ("http_response_size_bytes", _HELP_RESP_SIZE, self.response_size))
        for name, help_text, table in sized:
            out.summary(name, help_text, (({"handler": h}, s.count, s.total, s.created)
                                          for h, s in table.items()))
        out.histogram("http_request_duration_highr_seconds", _HELP_HIGHR,
                      [({}, self.highr, self.highr_created)])
        out.histogram("http_request_duration_seconds", _HELP_LOWR, (
            ({"handler": h, "method": m}, hist, cr) for (h, m), (hist, cr) in self.lowr.items()))


ASGIApp = Callable[..., Any]


class HttpStatsMiddleware:
    """Times every request and records it under its route template ("none" when unrouted)."""

    def __init__(self, app: ASGIApp, stats: HttpStats, resolve: Callable[[Any], str]) -> None:
        self.app = app
        self.stats = stats
        self.resolve = resolve

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        handler = self.resolve(scope)
        if handler in EXCLUDED:
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        resp_bytes = 0
        req_bytes = 0
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                req_bytes = int(value or 0)

        async def send_wrapper(message: Any) -> None:
            nonlocal status, resp_bytes
            if message["type"] == "http.response.start":
                status = int(message["status"])
                for name, value in message.get("headers", ()):
                    if name == b"content-length":
                        resp_bytes = int(value or 0)
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.stats.record(handler, scope.get("method", "GET"), status, req_bytes, resp_bytes,
                              time.perf_counter() - start)
