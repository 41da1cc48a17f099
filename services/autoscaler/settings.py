"""Each alias's scaling settings: defaults ← env ← config ← config per model ← registration."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping

from services.autoscaler.policy import ScalingSettings
from shared.autoscaling import AutoscalingOverrides
from shared.config import Config
from shared.model_registry import ModelRecord

log = logging.getLogger("llmsched.autoscaler")

ENV_NAMES: dict[str, str] = {
    "load_high": "MODEL_LOAD_HIGH",
    "load_low": "MODEL_LOAD_LOW",
    "instance_capacity": "MODEL_INSTANCE_CAPACITY",
    "min_replicas": "MODEL_MIN_REPLICAS",
    "max_replicas": "MODEL_MAX_REPLICAS",
    "scale_interval_s": "MODEL_SCALE_INTERVAL",
}
INT_FIELDS = frozenset({"instance_capacity", "min_replicas", "max_replicas"})


def env_overrides(environ: Mapping[str, str] | None = None) -> AutoscalingOverrides:
    """The seed's MODEL_* variables; a value that does not parse is ignored with a warning."""
    env = os.environ if environ is None else environ
    values: dict[str, float | int] = {}
    for field, name in ENV_NAMES.items():
        raw = env.get(name, "").strip()
        if not raw:
            continue
        try:
            value: float | int = int(raw) if field in INT_FIELDS else float(raw)
        except ValueError:
            log.warning("Ignoring %s=%r: not a number", name, raw)
            continue
        if value < 0 or (value == 0 and field not in ("min_replicas", "load_low")):
            log.warning("Ignoring %s=%r: out of range", name, raw)
            continue
        values[field] = value
    return AutoscalingOverrides(**values)  # type: ignore[arg-type]


def settings_for(alias: str, record: ModelRecord | None, config: Config,
                 env: AutoscalingOverrides) -> ScalingSettings:
    """The merged settings of ``alias``."""
    merged = env
    merged = config.autoscaling.over(merged)
    per_model = config.autoscaling.models.get(alias)
    if per_model is not None:
        merged = per_model.over(merged)
    if record is not None:
        merged = record.autoscaling.over(merged)
    values = {f: getattr(merged, f) for f in AutoscalingOverrides.__struct_fields__
              if getattr(merged, f) is not None}
    settings = dataclasses.replace(ScalingSettings(), **values)
    if settings.load_low >= settings.load_high:
        log.warning("Alias %s: load_low %.2f >= load_high %.2f; using %.2f", alias,
                    settings.load_low, settings.load_high, settings.load_high / 2)
        settings = dataclasses.replace(settings, load_low=settings.load_high / 2)
    if settings.min_replicas > settings.max_replicas:
        settings = dataclasses.replace(settings, min_replicas=settings.max_replicas)
    return settings


def instance_capacity(record: ModelRecord | None, settings: ScalingSettings,
                      explicit: bool) -> int:
    """Requests one instance serves: the model's own figure, else the configured default.

    Order (SPEC §2.4): an explicit per-model ``instance_capacity``; the fake model's
    ``fake_capacity``; the model's ``max_num_seqs``; MODEL_INSTANCE_CAPACITY / config.
    """
    if record is not None and not explicit:
        spec = record.spec
        if spec.fake and spec.fake_capacity:
            return spec.fake_capacity
        if spec.max_num_seqs:
            return spec.max_num_seqs
    return settings.instance_capacity
