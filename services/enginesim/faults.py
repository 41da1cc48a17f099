"""Fault injection switchable at run time (POST /_sim/faults)."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Any

CRASH_MODES = ("exit", "close")


@dataclass
class Faults:
    """Current misbehaviour of one instance; all off by default."""

    latency_ms: float = 0.0
    """Added before every generation request is queued."""
    error_rate: float = 0.0
    """Fraction of generation requests answered 500 (engine-shaped body)."""
    hang: bool = False
    """Generation requests are accepted and never answered."""
    unhealthy: bool = False
    """/health answers 503."""
    metrics_delay_ms: float = 0.0
    """Added before /metrics answers."""
    metrics_error_rate: float = 0.0
    """Fraction of /metrics scrapes answered 500."""

    def as_dict(self) -> dict[str, Any]:
        """JSON view."""
        return dataclasses.asdict(self)


class FaultError(ValueError):
    """A bad fault setting; the message names the key."""


def apply_patch(faults: Faults, patch: dict[str, Any]) -> str | None:
    """Update ``faults`` in place from a JSON object; returns a crash mode if one was asked for."""
    crash = patch.get("crash")
    if crash is not None and crash not in CRASH_MODES:
        raise FaultError(f"crash must be one of {list(CRASH_MODES)}, got {crash!r}")
    fields = {f.name: f for f in dataclasses.fields(Faults)}
    updates: dict[str, Any] = {}
    for key, value in patch.items():
        if key == "crash":
            continue
        if key == "reset":
            if value:
                updates.update(dataclasses.asdict(Faults()))
            continue
        if key not in fields:
            raise FaultError(f"unknown fault {key!r}; known: {sorted([*fields, 'crash', 'reset'])}")
        default = getattr(Faults(), key)
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise FaultError(f"{key} must be a boolean, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise FaultError(f"{key} must be a non-negative number, got {value!r}")
        elif key.endswith("_rate") and value > 1:
            raise FaultError(f"{key} must be between 0 and 1, got {value!r}")
        updates[key] = value
    for key, value in updates.items():
        setattr(faults, key, value)
    return str(crash) if crash is not None else None


class FaultDice:
    """Seeded coin flips for the error rates."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed ^ 0x5EED)

    def hit(self, rate: float) -> bool:
        """True with probability ``rate``."""
        return rate > 0 and self._rng.random() < rate
