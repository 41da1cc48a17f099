"""Reply shapes of the worker API's routes (encoded by the handlers, shown in /docs)."""

from __future__ import annotations

from typing import Literal

import msgspec

from services.worker.models import Backend, GpuInfo, InstanceInfo


class WorkerHealth(msgspec.Struct, kw_only=True, omit_defaults=True):
    """``GET /health``."""

    status: Literal["healthy", "unhealthy"]
    worker_id: str
    instances: int
    message: str | None = None


class Probe(msgspec.Struct, kw_only=True, omit_defaults=True):
    """``GET /livez`` and ``GET /readyz``."""

    status: Literal["alive", "ready", "not_ready"]
    message: str | None = None


class WorkerInfo(msgspec.Struct, kw_only=True):
    """``GET /info``."""

    worker_id: str
    worker_url: str
    version: str
    engine_host: str
    advertise_host: str
    gpu: bool
    gpu_info: GpuInfo
    default_backend: Backend
    backends: list[Backend]
    vllm_python: str
    instances: int
    started_at: float
    uptime_s: float


class InstanceList(msgspec.Struct, kw_only=True):
    """``GET /instances``."""

    instances: list[InstanceInfo]


class Stopped(msgspec.Struct, kw_only=True):
    """``POST /instances/{alias}/stop``."""

    stopped: bool
    instance: InstanceInfo
