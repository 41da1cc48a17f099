"""Prometheus exposition: one registry per process, /metrics for FastAPI apps and a bare listener.

prometheus-client's default ``REGISTRY`` is a module global; every service builds its own
``CollectorRegistry`` here, in its composition root, and passes it down.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import APIRouter, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from shared.http_server import RunningServer, start_app
from shared.metrics_config import PrometheusConfig

log = logging.getLogger("llmsched.metrics")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

LATENCY_BUCKETS_S = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                     1.0, 2.5)
"""Sub-millisecond to seconds: a select, a scrape, a NATS round trip."""
LLM_BUCKETS_S = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0,
                 300.0)
"""An LLM request: first token in tens of milliseconds to a queue of minutes."""
_METRICS_DOC: dict[int | str, dict[str, Any]] = {
    200: {"description": "Prometheus text exposition format 0.0.4",
          "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}}


def new_registry() -> CollectorRegistry:
    """A process's registry with the standard process, platform and GC collectors."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def nats_drops(registry: CollectorRegistry) -> Callable[[str], None]:
    """``llmsched_nats_dropped_messages_total{subject}`` and the ``on_dropped`` that counts
    it (:func:`shared.bus.connect_nats`); ``subject`` is the subscription's, as subscribed."""
    counter = Counter("llmsched_nats_dropped_messages_total",
                      "Messages dropped by this process's NATS client because a subscription "
                      "was past its pending limits (it read them slower than they arrived)",
                      ["subject"], registry=registry)

    def dropped(subject: str) -> None:
        counter.labels(subject).inc()

    return dropped


def exposition(registry: CollectorRegistry) -> bytes:
    """Every series of ``registry`` in the text format (collectors run here, in the loop)."""
    return generate_latest(registry)


def metrics_router(registry: CollectorRegistry) -> APIRouter:
    """``GET /metrics`` for a FastAPI app (no key needed, like the probes)."""
    router = APIRouter(tags=["metrics"])

    @router.get("/metrics", response_class=Response, responses=_METRICS_DOC,
                summary="Prometheus metrics of this process")
    async def metrics() -> Response:
        return Response(exposition(registry), media_type=CONTENT_TYPE_LATEST)

    return router


class MetricsApp:
    """A bare ASGI app: ``GET|HEAD /metrics``; 404 elsewhere, 405 for other methods."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["path"] != "/metrics":
            await _answer(send, 404, b"not found: try /metrics\n")
        elif scope["method"] not in ("GET", "HEAD"):
            await _answer(send, 405, b"method not allowed\n", [(b"allow", b"GET, HEAD")])
        else:
            body = exposition(self.registry)
            await _answer(send, 200, b"" if scope["method"] == "HEAD" else body,
                          content_type=CONTENT_TYPE_LATEST.encode(), length=len(body))


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _answer(send: Send, status: int, body: bytes,
                  headers: list[tuple[bytes, bytes]] | None = None, *,
                  content_type: bytes = b"text/plain; charset=utf-8",
                  length: int | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type),
                            (b"content-length", str(len(body) if length is None
                                                    else length).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


async def start_listener(registry: CollectorRegistry, service: str, config: PrometheusConfig
                         ) -> RunningServer | None:
    """The ``/metrics`` listener of a service without an HTTP server (None when off).

    A port already taken is logged and the service runs on without its listener: metrics
    are not worth an outage (two replicas on one host need port 0 or a config each).
    """
    port = config.port_of(service)
    if port is None:
        return None
    try:
        running = await start_app(MetricsApp(registry), config.host, port)
    except OSError as err:
        log.warning("No /metrics listener for the %s: cannot listen on %s:%d (%s); set "
                    "metrics.%s_port to a free port, or 0 for any", service, config.host, port,
                    err.strerror or err, service)
        return None
    log.info("Metrics of the %s on http://%s:%d/metrics", service, running.host, running.port)
    return running
