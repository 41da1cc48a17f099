"""Each member's decode speed relative to its pool, from its engine's inter-token latency."""

from __future__ import annotations

from shared.scheduling.view import MemberState


def speed_weights(members: list[MemberState]) -> list[float]:
    """Each member's decode speed over the mean of those known (1/ITL); 1.0 when unknown
    or when fewer than two are known."""
    speeds = [1.0 / m.itl_s if m.itl_s else None for m in members]
    known = [v for v in speeds if v is not None]
    if len(known) < 2:
        return [1.0] * len(members)
    mean = sum(known) / len(known)
    return [1.0 if v is None else v / mean for v in speeds]
