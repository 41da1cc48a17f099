"""Wire contracts of the worker API and of worker registration (msgspec structs, decoding)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, TypeVar

import msgspec

from shared.errors import BadRequest

ALIAS_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
WORKER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
URL_PATTERN = r"^https?://[^\s/]+(/\S*)?$"

Alias = Annotated[str, msgspec.Meta(pattern=ALIAS_PATTERN)]
Positive = Annotated[int, msgspec.Meta(ge=1)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
EngineKind = Literal["vllm", "sglang"]
Backend = Literal["sim", "sim-process", "vllm-process", "sglang-process"]
InstanceState = Literal["starting", "running", "sleeping", "draining", "failed"]
BACKENDS: tuple[Backend, ...] = ("sim", "sim-process", "vllm-process", "sglang-process")

T = TypeVar("T")
INVALID = "invalid_body"


class ModelSpec(msgspec.Struct, kw_only=True):
    """Body of ``POST /instances/start``: a model registry entry (SPEC §2.2) plus placement."""

    alias: Alias
    """The model alias clients ask for; instances are named alias, alias-r2, ..."""
    model_name: str = ""
    """Weights to load (path or hub id); ``__fake__`` for a fake model."""
    engine: EngineKind = "vllm"
    """Which engine the instance is (or looks like, when simulated)."""
    engine_backend: Backend | None = None
    """sim (in-process simulator), sim-process, vllm-process, sglang-process; None: the
    worker's default (fake models always run on the simulator)."""
    instance: Alias | None = None
    """Explicit instance name; default: the alias (409 if taken) or the next free replica name."""
    add_replica: bool = False
    """Start another replica (alias-r2, alias-r3, ...) when the alias already has instances."""
    fake: bool = False
    """A fake model: no weights, simulated latency and concurrency."""
    fake_response: str | None = None
    """Text every answer carries (fake models)."""
    fake_delay_ms: NonNegative = 0
    """Latency added to every generation request (fake models)."""
    fake_capacity: Positive | None = None
    """Concurrent requests the fake model serves; more wait in line."""
    max_model_len: Positive | None = None
    max_num_seqs: Positive | None = None
    gpu_memory_utilization: Annotated[float, msgspec.Meta(gt=0, le=1)] | None = None
    speed: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    """Simulator speed factor (simulated instances only)."""
    tensor_parallel_size: Positive | None = None
    dtype: str | None = None
    load_format: str | None = None
    quantization: str | None = None
    enforce_eager: bool = False
    trust_remote_code: bool = False
    num_gpu_blocks_override: Positive | None = None
    extra_args: list[str] = []
    """Appended verbatim to a real engine's command line."""
    env: dict[str, str] = {}
    """Extra environment of a real engine process (e.g. CUDA_VISIBLE_DEVICES)."""
    sim_options: dict[str, Any] = {}
    """Simulator options (profile, timing, sleep_ms, ...; see docs/enginesim.md)."""
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] | None = None
    """Engine port; None or 0: a free port."""
    start_timeout_s: Annotated[float, msgspec.Meta(gt=0)] | None = None
    """How long a starting engine may take to answer /health (default by backend)."""

    @property
    def capacity(self) -> int:
        """Concurrent requests one instance is meant to serve."""
        if self.fake and self.fake_capacity is not None:
            return self.fake_capacity
        return self.max_num_seqs or 256


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


class InstanceSummary(msgspec.Struct, kw_only=True):
    """What a heartbeat says about one instance (the registry's routing input)."""

    alias: str
    model_alias: str
    url: str
    model_name: str = ""
    engine: str = "vllm"
    state: str = "running"
    sleep_level: int = 0
    capacity: int = 1
    inflight_requests: int = 0
    ttft_avg: float | None = None
    e2e_avg: float | None = None
    fake: bool = False


class RegisterRequest(msgspec.Struct, kw_only=True):
    """Body of ``POST /workers/register``."""

    worker_id: Annotated[str, msgspec.Meta(pattern=WORKER_ID_PATTERN)]
    worker_url: Annotated[str, msgspec.Meta(pattern=URL_PATTERN)]
    gpu_info: dict[str, Any] = {}
    heartbeat_interval_s: Annotated[float, msgspec.Meta(gt=0)] | None = None
    instances: list[InstanceSummary] = []


class HeartbeatRequest(msgspec.Struct, kw_only=True):
    """Body of ``POST /workers/{worker_id}/heartbeat`` (may be empty: nothing changes)."""

    instances: list[InstanceSummary] | None = None
    gpu_info: dict[str, Any] | None = None


_AT_FIELD = re.compile(r"at `\$\.([A-Za-z0-9_]+)")
_NAMED = re.compile(r"(?:missing required|contains unknown) field `([^`]+)`")


def error_field(err: msgspec.ValidationError) -> str | None:
    """The top-level key a msgspec validation error is about, if it names one."""
    text = str(err)
    match = _AT_FIELD.search(text) or _NAMED.search(text)
    return match.group(1) if match else None


def _fields(type_: type[Any]) -> frozenset[str]:
    return frozenset(f.name for f in msgspec.structs.fields(type_))


def decode_object(raw: bytes, type_: type[T], *, empty_ok: bool = False) -> tuple[T, list[str]]:
    """Decode a JSON object body into ``type_``; returns it and the keys it ignored."""
    if not raw.strip():
        if empty_ok:
            return msgspec.convert({}, type_), []
        raise BadRequest(None, "request body must be a JSON object", code=INVALID)
    try:
        data = msgspec.json.decode(raw)
    except msgspec.DecodeError as err:
        raise BadRequest(None, f"body is not valid JSON: {err}", code=INVALID) from None
    if not isinstance(data, dict):
        raise BadRequest(None, "request body must be a JSON object", code=INVALID)
    try:
        value = msgspec.convert(data, type_)
    except msgspec.ValidationError as err:
        raise BadRequest(error_field(err), str(err), code=INVALID) from None
    known = _fields(type_)
    return value, sorted(str(k) for k in data if k not in known)
