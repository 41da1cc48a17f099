"""One engine instance as the worker sees it: identity, state, measurements, capacity gate."""

from __future__ import annotations

import asyncio
import time

from services.worker.control import EngineLoad
from services.worker.engines import Engine
from services.worker.latency import LatencyStats
from services.worker.models import (
    Backend,
    InstanceInfo,
    InstanceState,
    ModelSpec,
)
from shared.errors import BadRequest
from shared.members import url_host
from shared.workers import InstanceSummary


class Instance:
    """One engine instance and the worker's bookkeeping about it."""

    def __init__(self, name: str, replica: int, spec: ModelSpec, backend: Backend,
                 served_names: list[str], ignored: list[str]) -> None:
        self.name = name
        self.replica = replica
        self.spec = spec
        self.backend = backend
        self.served_names = served_names
        self.ignored = ignored
        self.engine: Engine | None = None
        self.port = 0
        self.state: InstanceState = "starting"
        self.sleep_level = 0
        self.error: str | None = None
        self.started_at = time.time()
        self.ready_at: float | None = None
        self.stats = LatencyStats()
        self.lock = asyncio.Lock()
        self.ready = asyncio.Event()
        self.ready_task: asyncio.Task[None] | None = None
        # A fake model's capacity is enforced here so queueing shows up in its latency.
        self.gate = (asyncio.Semaphore(spec.fake_capacity)
                     if spec.fake and spec.fake_capacity else None)

    @property
    def local_url(self) -> str:
        """Where the worker itself reaches the engine."""
        return self.engine.url if self.engine is not None else ""

    @property
    def is_simulated(self) -> bool:
        """Served by the engine simulator."""
        return self.backend in ("sim", "sim-process")

    def accepting(self) -> bool:
        """Whether the proxy may send it new requests."""
        return self.state == "running"

    def public_url(self, host: str) -> str:
        """The URL other hosts use."""
        return f"http://{url_host(host)}:{self.port}" if self.port else ""

    def info(self, host: str) -> InstanceInfo:
        """The ``GET /instances`` view."""
        engine = self.engine
        return InstanceInfo(
            alias=self.name, model_alias=self.spec.alias, replica=self.replica,
            model_name=self.spec.model_name, engine=self.spec.engine, backend=self.backend,
            url=self.public_url(host), host=host, port=self.port, state=self.state,
            sleep_level=self.sleep_level, capacity=self.spec.capacity, fake=self.spec.fake,
            served_model_names=list(self.served_names),
            inflight_requests=self.stats.inflight, started_at=self.started_at,
            ready_at=self.ready_at, pid=engine.pid if engine else None, error=self.error,
            log_path=engine.log_path if engine else None, ignored_fields=list(self.ignored))

    def live(self, load: EngineLoad | None) -> tuple[int, float | None, float | None]:
        """In-flight requests, mean TTFT and mean e2e latency: the proxy's, else the engine's.

        Requests routed straight to the engine never pass the proxy, so its own window may be
        empty while the engine's histograms are not.
        """
        stats = self.stats
        inflight = stats.inflight
        if load is not None and load.running is not None:
            inflight = max(inflight, round(load.running + (load.waiting or 0.0)))
        ttft, e2e = stats.ttft_avg, stats.e2e_avg
        if load is not None:
            ttft = ttft if ttft is not None else load.ttft_avg
            e2e = e2e if e2e is not None else load.e2e_avg
        return inflight, ttft, e2e

    def summary(self, host: str, load: EngineLoad | None = None) -> InstanceSummary:
        """What a heartbeat reports; ``load`` is the engine's /metrics when it was read."""
        inflight, ttft, e2e = self.live(load)
        return InstanceSummary(
            alias=self.name, model_alias=self.spec.alias, url=self.public_url(host),
            model_name=self.spec.model_name, engine=self.spec.engine, state=self.state,
            sleep_level=self.sleep_level, capacity=self.spec.capacity,
            inflight_requests=inflight, ttft_avg=ttft, e2e_avg=e2e, fake=self.spec.fake,
            role=self.spec.role)


class NotFound(BadRequest):
    """No instance of that name."""

    def __init__(self, name: str) -> None:
        super().__init__("alias", f"no instance named {name!r}", 404, "instance_not_found")
