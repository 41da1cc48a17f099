"""The ``metrics:`` config section: where each service exposes its own Prometheus metrics."""

from __future__ import annotations

import msgspec

LISTENER_SERVICES = ("scheduler", "collector", "autoscaler")
"""Services without an HTTP server of their own: they get a small ``/metrics`` listener.
The API and the worker serve ``GET /metrics`` on their own port."""


class PrometheusConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The services' own metrics (not the engines' ``/metrics`` the collector scrapes)."""

    host: str = "0.0.0.0"
    """Address the scheduler, collector and autoscaler listeners bind."""
    scheduler_port: int | None = None
    """``/metrics`` of the scheduler: null (the default) = no listener, 0 = a free port,
    logged at start."""
    collector_port: int | None = None
    """As ``scheduler_port``, for the collector."""
    autoscaler_port: int | None = None
    """As ``scheduler_port``, for the autoscaler."""
    member_labels: bool = False
    """Per-member series (a ``member`` label on per-request counters and per-member gauges
    of the scheduler): one series per engine, so off by default. Read at start."""

    def __post_init__(self) -> None:
        for service in LISTENER_SERVICES:
            port = self.port_of(service)
            if port is not None and not 0 <= port < 65536:
                raise ValueError(f"{service}_port must be a TCP port 0..65535 (0: any free "
                                 f"port) or null (no listener), got {port}")

    def port_of(self, service: str) -> int | None:
        """The configured listener port of ``service`` (None: no listener)."""
        port: int | None = getattr(self, f"{service}_port", None)
        return port
