"""Autoscaling settings as the config file and a model's registration may override them."""

from __future__ import annotations

from typing import Annotated

import msgspec

from shared.errors import BadRequest

Ratio = Annotated[float, msgspec.Meta(gt=0)]
Count = Annotated[int, msgspec.Meta(ge=0)]
Seconds = Annotated[float, msgspec.Meta(gt=0)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]


class AutoscalingOverrides(msgspec.Struct, frozen=True, kw_only=True,
                           forbid_unknown_fields=True):
    """Unset fields fall back: registration → config per model → config → env → default."""

    load_high: Ratio | None = None
    """Wake or start an instance above this load (default 0.7, env MODEL_LOAD_HIGH)."""
    load_low: NonNegative | None = None
    """Step an instance down below this load (default 0.3, env MODEL_LOAD_LOW)."""
    instance_capacity: Annotated[int, msgspec.Meta(ge=1)] | None = None
    """Concurrent requests per instance when the model does not say (MODEL_INSTANCE_CAPACITY)."""
    min_replicas: Count | None = None
    """ACTIVE instances kept however low the load (default 1, env MODEL_MIN_REPLICAS)."""
    max_replicas: Annotated[int, msgspec.Meta(ge=1)] | None = None
    """Instances at most (default 4, env MODEL_MAX_REPLICAS)."""
    scale_interval_s: Seconds | None = None
    """Seconds between evaluations; one step down per interval (MODEL_SCALE_INTERVAL)."""
    cooldown_s: NonNegative | None = None
    """Quiet seconds after an action (default: one interval)."""
    down_after_s: NonNegative | None = None
    """Seconds load must stay low before a step down (default: two intervals)."""
    up_after_s: NonNegative | None = None
    """Seconds load must stay high before a scale-up (default 1.5; waiting requests skip it)."""
    drain_timeout_s: NonNegative | None = None
    """Seconds an instance drains before sleeping anyway (default 30)."""

    def check(self, at: str = "autoscaling") -> None:
        """Cross-field rules; BadRequest names the field."""
        if (self.load_high is not None and self.load_low is not None
                and self.load_low >= self.load_high):
            raise BadRequest(f"{at}.load_low", "load_low must be below load_high")
        if (self.min_replicas is not None and self.max_replicas is not None
                and self.min_replicas > self.max_replicas):
            raise BadRequest(f"{at}.min_replicas", "min_replicas must be <= max_replicas")

    def over(self, base: AutoscalingOverrides) -> AutoscalingOverrides:
        """These settings where set, ``base``'s elsewhere."""
        merged = {f: getattr(self, f) if getattr(self, f) is not None else getattr(base, f)
                  for f in AutoscalingOverrides.__struct_fields__}
        return AutoscalingOverrides(**merged)
