"""Timing presets: the shipped ones by name, or a profile file (JSON or YAML) by path."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from services.enginesim.timing import Timing

PRESET_DIR = Path(__file__).resolve().parent / "presets"
PRESETS: Mapping[str, str] = MappingProxyType({
    # Llama-3.1-8B-Instruct, BF16, one H100 SXM 80 GB (derivation in docs/enginesim.md).
    "h100-llama3.1-8b": "h100-llama3.1-8b.json",
    # The tiny random Llama served by vLLM 0.32.0 on a 2-core CPU, fitted by `calibrate`.
    "cpu-tiny": "cpu-tiny-vllm-0.32.0.json",
})
LIMIT_KEYS = ("max_num_seqs", "max_model_len", "block_size", "num_gpu_blocks",
              "max_num_batched_tokens")
"""Engine options a profile may carry: the limits it was measured with."""


class ProfileError(ValueError):
    """A profile that cannot be read; the message names the file and the key."""


@dataclass(frozen=True)
class Profile:
    """A timing preset plus the engine limits it was fitted with."""

    name: str
    timing: Timing
    limits: dict[str, int] = field(default_factory=dict)
    """Options applied before any given explicitly (so the simulator matches the engine)."""
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    """Anything else in the file (the fit's report, the source); kept, never interpreted."""

    def to_dict(self) -> dict[str, Any]:
        """The file form."""
        return {"name": self.name, "description": self.description,
                "timing": dataclasses.asdict(self.timing), "engine": dict(self.limits),
                **self.extra}


def timing_from_dict(data: Mapping[str, Any], where: str, base: Timing | None = None) -> Timing:
    """Timing fields from a mapping; unknown keys and non-numbers are errors naming the key."""
    known = {f.name for f in dataclasses.fields(Timing)}
    values: dict[str, float] = {}
    for key, value in data.items():
        norm = key.replace("-", "_")
        if norm not in known:
            raise ProfileError(f"{where}: unknown timing key {key!r}; known: {sorted(known)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ProfileError(f"{where}: timing.{norm} must be a number >= 0, got {value!r}")
        values[norm] = float(value)
    return dataclasses.replace(base or Timing(), **values)


def profile_from_dict(data: Any, where: str) -> Profile:
    """Validate a parsed profile file."""
    if not isinstance(data, dict):
        raise ProfileError(f"{where}: expected a mapping with a 'timing' mapping")
    timing = data.get("timing")
    if not isinstance(timing, dict):
        raise ProfileError(f"{where}: 'timing' must be a mapping of timing parameters")
    limits_raw = data.get("engine") or {}
    if not isinstance(limits_raw, dict):
        raise ProfileError(f"{where}: 'engine' must be a mapping of engine limits")
    limits: dict[str, int] = {}
    for key, value in limits_raw.items():
        if key not in LIMIT_KEYS:
            raise ProfileError(f"{where}: unknown engine key {key!r}; known: {list(LIMIT_KEYS)}")
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ProfileError(f"{where}: engine.{key} must be an integer > 0, got {value!r}")
        limits[key] = value
    extra = {k: v for k, v in data.items() if k not in ("name", "description", "timing",
                                                         "engine")}
    return Profile(name=str(data.get("name") or Path(where).stem),
                   timing=timing_from_dict(timing, where), limits=limits,
                   description=str(data.get("description") or ""), extra=extra)


def read_profile(path: Path) -> Profile:
    """A profile file: YAML when it ends in .yaml/.yml, JSON otherwise."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ProfileError(f"profile {path}: {err.strerror or err}") from None
    try:
        data = (yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text))
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        raise ProfileError(f"profile {path}: not valid {path.suffix[1:] or 'JSON'}: {err}"
                           ) from None
    return profile_from_dict(data, str(path))


def load_profile(ref: str) -> Profile:
    """A shipped preset by name, or a profile file by path."""
    if ref in PRESETS:
        return read_profile(PRESET_DIR / PRESETS[ref])
    path = Path(ref)
    if path.suffix in (".json", ".yaml", ".yml") or path.exists():
        return read_profile(path)
    raise ProfileError(f"profile must be one of {sorted(PRESETS)} or a JSON/YAML file, "
                       f"got {ref!r}")


def write_profile(profile: Profile, path: Path) -> None:
    """Write ``profile`` as JSON, or YAML when the name ends in .yaml/.yml."""
    data = profile.to_dict()
    if path.suffix in (".yaml", ".yml"):
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    else:
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
