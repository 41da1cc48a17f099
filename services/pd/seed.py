"""The seed's ``scheduler_config.json``, loaded unchanged, as one PD pool of llmsched's config."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import msgspec

from shared.config import Config, ConfigError, parse_config

log = logging.getLogger("llmsched.pd")

SEED_STRATEGIES = ("round_robin", "least_load", "weighted")


class SeedInstance(msgspec.Struct, kw_only=True):
    """``{"id", "host", "port"}`` as the seed lists instances."""

    id: str
    host: str
    port: int


class SeedConfig(msgspec.Struct, kw_only=True):
    """The seed's keys and defaults (its README's table)."""

    strategy: str = "least_load"
    health_check_interval: float = 5.0
    health_check_timeout: float = 2.0
    max_retries: int = 3
    drain_timeout: float = 30.0
    load_weight: float = 0.5
    kv_cache_weight: float = 0.3
    latency_weight: float = 0.2
    prefill_instances: list[SeedInstance] = []
    decode_instances: list[SeedInstance] = []


SEED_KEYS = frozenset(f.name for f in msgspec.structs.fields(SeedConfig))
_PATHS = (("pools[0].roles.prefill", "prefill_instances"),
          ("pools[0].roles.decode", "decode_instances"), ("pools[0].pd.", ""))


def load_seed(path: str | Path) -> tuple[SeedConfig, list[str]]:
    """Read and check the JSON file; the config and the keys it has that the seed does not.

    Raises ConfigError naming the key (``prefill_instances[1].port``).
    """
    file = Path(path)
    try:
        raw = file.read_bytes()
    except OSError as err:
        raise ConfigError("", f"cannot read {file}: {err.strerror or err}") from None
    try:
        data = msgspec.json.decode(raw)
    except msgspec.DecodeError as err:
        raise ConfigError("", f"{file} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError("", f"{file} must hold a JSON object")
    try:
        seed = msgspec.convert(data, SeedConfig)
    except msgspec.ValidationError as err:
        text = str(err)
        message, _, where = text.partition(" - at `$")
        raise ConfigError(where.rstrip("`").lstrip("."), message) from None
    if seed.strategy not in SEED_STRATEGIES:
        raise ConfigError("strategy", f"unknown strategy {seed.strategy!r} (known: "
                          f"{', '.join(SEED_STRATEGIES)})")
    return seed, sorted(str(k) for k in data if k not in SEED_KEYS)


def seed_pool(seed: SeedConfig, *, pool: str, model: str,
              served_model: str | None = None) -> dict[str, Any]:
    """The PD pool (``pools[]`` entry) the seed's file describes."""
    entry: dict[str, Any] = {
        "name": pool, "engine_type": "vllm", "model": model,
        "roles": {"prefill": [msgspec.to_builtins(i) for i in seed.prefill_instances],
                  "decode": [msgspec.to_builtins(i) for i in seed.decode_instances]},
        "pd": {"strategy": seed.strategy,
               "health_check_interval": seed.health_check_interval,
               "health_check_timeout": seed.health_check_timeout,
               "max_retries": seed.max_retries, "drain_timeout": seed.drain_timeout,
               "load_weight": seed.load_weight, "kv_cache_weight": seed.kv_cache_weight,
               "latency_weight": seed.latency_weight},
    }
    if served_model is not None:
        entry["served_model_name"] = served_model
    return entry


def check_seed(seed: SeedConfig, doc: dict[str, Any]) -> Config:
    """Validate the llmsched config built from ``seed``; errors name the seed's key."""
    try:
        return parse_config(msgspec.json.encode(doc).decode())
    except ConfigError as err:
        path = err.path
        for ours, theirs in _PATHS:
            if path.startswith(ours):
                path = theirs + path[len(ours):]
                break
        raise ConfigError(path.lstrip("."), err.message) from None
