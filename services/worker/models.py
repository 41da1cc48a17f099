"""Wire contracts of the worker API (msgspec structs); the model spec is shared."""

from __future__ import annotations

from typing import Literal

import msgspec

from shared.model_spec import BACKENDS, Backend, EngineKind, ModelSpec, NonNegative

__all__ = ["BACKENDS", "Backend", "EngineKind", "GpuInfo", "InstanceInfo", "InstanceState",
           "InstanceStatus", "ModelSpec", "SleepRequest"]

InstanceState = Literal["starting", "running", "sleeping", "draining", "failed"]


class SleepRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of ``POST /instances/{alias}/sleep`` (all optional; ``?level=`` also works)."""

    level: Literal[1, 2] | None = None
    drain_timeout_s: NonNegative = 30.0
    """Wait this long for in-flight proxied requests to finish before sleeping."""


class GpuInfo(msgspec.Struct, kw_only=True):
    """GPU memory and load seen by one instance (or the whole host)."""

    available_memory_gb: float
    utilization: float
    """0..1."""
    total_memory_gb: float
    source: str
    """nvidia-smi or simulated."""


class InstanceInfo(msgspec.Struct, kw_only=True):
    """One instance as ``GET /instances`` shows it."""

    alias: str
    model_alias: str
    replica: int
    model_name: str
    engine: EngineKind
    backend: Backend
    url: str
    host: str
    port: int
    state: InstanceState
    sleep_level: int
    capacity: int
    fake: bool
    served_model_names: list[str]
    inflight_requests: int
    started_at: float
    ready_at: float | None = None
    pid: int | None = None
    error: str | None = None
    log_path: str | None = None
    ignored_fields: list[str] = []


class InstanceStatus(msgspec.Struct, kw_only=True):
    """``GET /instances/{alias}/status``: live figures from the engine and the proxy."""

    alias: str
    model_alias: str
    state: InstanceState
    sleep_level_value: int
    is_sleeping: bool
    inflight_requests: int
    capacity: int
    ttft_last: float | None
    ttft_avg: float | None
    e2e_last: float | None
    e2e_avg: float | None
    requests_total: int
    gpu_info: GpuInfo
    engine_reachable: bool
    running: float | None = None
    waiting: float | None = None
    kv_cache_usage: float | None = None
    error: str | None = None
