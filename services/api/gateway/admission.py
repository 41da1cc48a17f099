"""Admission control's waiting line: which held request an engine's free slot goes to.

FIFO by default. With a TTFT target, a request that can still meet it goes before one
that already cannot (earliest arrival first among each), so a burst costs as few
requests their target as possible; a request held ``max_wait_s`` goes first whatever its
chance, which bounds the tail.
"""

from __future__ import annotations

from collections.abc import Sequence


def next_to_serve(arrivals: Sequence[float], now: float, *, slo_s: float | None,
                  max_wait_s: float) -> int:
    """Position in ``arrivals`` (held requests, oldest first) of the one to serve next."""
    if slo_s is None or not arrivals or now - arrivals[0] >= max_wait_s:
        return 0
    budget = slo_s * 0.6  # room left for the prefill once it is dispatched
    for position, arrived in enumerate(arrivals):
        if now - arrived < budget:
            return position
    return 0
