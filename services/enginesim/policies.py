"""Example routing policies for virtual time, and a seeded workload generator."""

from __future__ import annotations

import random

from services.enginesim.virtual import RouterView, TraceRequest


class RoundRobin:
    """Engines in turn, ignoring load."""

    def __init__(self) -> None:
        self._next = 0

    def __call__(self, request: TraceRequest, view: RouterView) -> int:
        engine = self._next % len(view.in_flight)
        self._next += 1
        return engine


def least_in_flight(request: TraceRequest, view: RouterView) -> int:
    """The engine with the fewest requests the router has in flight (lowest index on ties)."""
    counts = view.in_flight
    return min(range(len(counts)), key=counts.__getitem__)


def least_waiting(request: TraceRequest, view: RouterView) -> int:
    """Scraped queue first, then KV usage, then in-flight (metrics-only, may be stale)."""
    return min(range(len(view.engines)), key=lambda i: (
        view.engines[i].waiting, view.engines[i].kv_usage, view.in_flight[i]))


def poisson_trace(count: int, rate: float, *, input_mean: int = 512, output_mean: int = 128,
                  groups: int = 8, prefix_tokens: int = 256, seed: int = 0) -> list[TraceRequest]:
    """``count`` requests arriving at ``rate``/s; lengths uniform in [mean/2, 3·mean/2]."""
    rng = random.Random(seed)
    t = 0.0
    out: list[TraceRequest] = []
    for _ in range(count):
        t += rng.expovariate(rate)
        out.append(TraceRequest(
            arrival_s=t,
            input_tokens=rng.randint(input_mean // 2, input_mean * 3 // 2),
            output_tokens=rng.randint(max(1, output_mean // 2), output_mean * 3 // 2),
            prefix_group=rng.randrange(groups) if groups else None,
            prefix_tokens=prefix_tokens))
    return out
