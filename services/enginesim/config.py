"""Engine simulator configuration: engine limits, the step-time model and calibration presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from services.enginesim.profiles import ProfileError, load_profile
from services.enginesim.timing import Timing

__all__ = ["EngineConfig", "SimConfigError", "Timing", "config_from_dict"]

EngineKind = Literal["vllm", "sglang"]
Role = Literal["prefill", "decode", "both"]


class SimConfigError(ValueError):
    """A configuration value is invalid; the message names the key."""


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    """One simulated engine; option names follow vLLM's."""

    engine: EngineKind = "vllm"
    """Which engine to look like from outside: metric names, error shapes, sleep API."""
    model: str = "meta-llama/Llama-3.1-8B-Instruct"
    """Model path/name (`root` in /v1/models)."""
    served_model_name: tuple[str, ...] = ()
    """Names accepted in requests; the first labels metrics. Empty: the model name."""
    max_num_seqs: int = 256
    """Most sequences in one batch (continuous batching)."""
    max_model_len: int = 131072
    """Longest prompt + output, in tokens."""
    block_size: int = 16
    """Tokens per KV-cache block."""
    num_gpu_blocks: int = 27000
    """KV-cache capacity in blocks (vLLM: --num-gpu-blocks-override)."""
    max_num_batched_tokens: int = 8192
    """Token budget of one step (chunked prefill)."""
    enable_prefix_caching: bool = True
    """Reuse cached full blocks of identical prompt prefixes."""
    speed: float = 1.0
    """Speed factor: every step takes step_time / speed."""
    seed: int = 0
    """Seed for jitter, generated text and ids."""
    role: Role = "both"
    """Disaggregated-serving role (kv_transfer_params handling)."""
    kv_events_endpoint: str | None = None
    """Publish KV-cache events here, as vLLM's ``--kv-events-config`` ``endpoint``."""
    kv_events_replay: str | None = None
    """The replay endpoint of those events (vLLM's ``replay_endpoint``)."""
    kv_lease_s: float = 30.0
    """A prefill's KV kept for its decode at most this long (vLLM's kv_lease_duration)."""
    timing: Timing = field(default_factory=Timing)
    """Step-time model."""
    default_output_tokens: int = 256
    """Mean output length when a request sets no max_tokens (natural stop)."""
    fake_response: str | None = None
    """Fixed text to answer with instead of seeded filler."""
    version: str = "0.32.0"
    """Version reported by /version and system_fingerprint."""
    gpu_memory_utilization: float = 0.9
    """Reported in cache_config_info only."""
    sleep_ms: float = 0.0
    """How long /sleep (or SGLang's release) takes before answering."""
    wake_ms: float = 0.0
    """How long /wake_up (or SGLang's resume) takes before answering."""

    @property
    def model_names(self) -> tuple[str, ...]:
        """Served names, defaulting to the model."""
        return self.served_model_name or (self.model,)

    def validate(self) -> EngineConfig:
        """Fail fast, naming the offending key."""
        positive = {
            "max_num_seqs": self.max_num_seqs, "max_model_len": self.max_model_len,
            "block_size": self.block_size, "num_gpu_blocks": self.num_gpu_blocks,
            "max_num_batched_tokens": self.max_num_batched_tokens,
            "default_output_tokens": self.default_output_tokens,
        }
        for key, value in positive.items():
            if value <= 0:
                raise SimConfigError(f"{key} must be > 0, got {value}")
        if not self.kv_lease_s > 0:
            raise SimConfigError(f"kv_lease_s must be > 0, got {self.kv_lease_s}")
        if self.sleep_ms < 0 or self.wake_ms < 0:
            raise SimConfigError("sleep_ms and wake_ms must be >= 0")
        if not self.speed > 0:
            raise SimConfigError(f"speed must be > 0, got {self.speed}")
        if self.engine not in ("vllm", "sglang"):
            raise SimConfigError(f"engine must be vllm or sglang, got {self.engine!r}")
        if self.role not in ("prefill", "decode", "both"):
            raise SimConfigError(f"role must be prefill, decode or both, got {self.role!r}")
        if self.num_gpu_blocks * self.block_size < self.max_model_len:
            raise SimConfigError(
                f"max_model_len ({self.max_model_len}) is larger than the KV cache "
                f"(num_gpu_blocks {self.num_gpu_blocks} x block_size {self.block_size})")
        for name, value in dataclasses.asdict(self.timing).items():
            if not value >= 0:
                raise SimConfigError(f"timing.{name} must be >= 0, got {value}")
        if self.timing.drift_sd > 0 and not self.timing.drift_tau_s > 0:
            raise SimConfigError("timing.drift_tau_s must be > 0 when drift_sd is set")
        if self.timing.stall_rate_per_s > 0 and not self.timing.stall_mean_s > 0:
            raise SimConfigError("timing.stall_mean_s must be > 0 when stall_rate_per_s is set")
        return self


def config_from_dict(data: dict[str, Any], base: EngineConfig | None = None) -> EngineConfig:
    """Build a config from a JSON object (fleet files); unknown keys are errors.

    ``profile`` (a preset name or a profile file) sets the timing and the engine limits it
    was fitted with; keys given alongside it override both.
    """
    base = base or EngineConfig()
    known = {f.name for f in dataclasses.fields(EngineConfig)}
    timing_keys = {f.name for f in dataclasses.fields(Timing)}
    changes: dict[str, Any] = {}
    timing_changes: dict[str, Any] = {}
    timing = base.timing
    for key, value in data.items():
        norm = key.replace("-", "_")
        if norm == "profile":
            if value is None:
                continue
            try:
                profile = load_profile(str(value))
            except ProfileError as err:
                raise SimConfigError(str(err)) from None
            timing = profile.timing
            for limit, number in profile.limits.items():
                changes.setdefault(limit, number)
        elif norm == "num_gpu_blocks_override":
            changes["num_gpu_blocks"] = int(value)
        elif norm in timing_keys:
            timing_changes[norm] = float(value)
        elif norm == "served_model_name":
            changes[norm] = (value,) if isinstance(value, str) else tuple(value)
        elif norm in known and norm != "timing":
            changes[norm] = value
        elif norm not in ("port", "host"):
            raise SimConfigError(f"unknown engine option {key!r}")
    changes["timing"] = dataclasses.replace(timing, **timing_changes)
    try:
        return dataclasses.replace(base, **changes).validate()
    except TypeError as err:
        raise SimConfigError(str(err)) from None
