"""A model as the registry keeps it and a worker starts it (SPEC §2.2): the seed's fields."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

ALIAS_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"

Alias = Annotated[str, msgspec.Meta(pattern=ALIAS_PATTERN)]
Positive = Annotated[int, msgspec.Meta(ge=1)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
EngineKind = Literal["vllm", "sglang"]
Backend = Literal["sim", "sim-process", "vllm-process", "sglang-process"]
BACKENDS: tuple[Backend, ...] = ("sim", "sim-process", "vllm-process", "sglang-process")


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
    role: Literal["prefill", "decode", "both"] | None = None
    """Disaggregated-serving role of this instance (PD pools route each role apart;
    the simulator honours it, a real vLLM needs its KV connector in ``extra_args``)."""
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
