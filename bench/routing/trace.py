"""Seeded workload traces: steady Poisson or bursty on/off arrivals, heavy-tailed lengths."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal

from services.enginesim.virtual import TraceRequest

Kind = Literal["steady", "bursty"]


@dataclass(frozen=True)
class TraceSpec:
    """What a trace looks like; ``rate`` is the long-run mean arrival rate (req/s)."""

    kind: Kind = "bursty"
    rate: float = 10.0
    duration_s: float = 60.0
    seed: int = 0
    input_median: int = 600
    """Prompt tokens: log-normal around this median (heavy right tail)."""
    input_sigma: float = 0.8
    input_max: int = 6000
    output_median: int = 120
    output_sigma: float = 0.7
    output_max: int = 1000
    burst_on_s: float = 5.0
    """Bursty traces alternate ON periods at ``burst_factor`` × the mean rate..."""
    burst_off_s: float = 10.0
    """...with OFF periods at the rate that keeps the long-run mean."""
    burst_factor: float = 2.0

    def phase_rates(self) -> tuple[float, float]:
        """Arrival rates during ON and OFF periods (same long-run mean as ``rate``)."""
        cycle = self.burst_on_s + self.burst_off_s
        on = self.rate * self.burst_factor
        off = max(0.0, (self.rate * cycle - on * self.burst_on_s) / self.burst_off_s)
        return on, off


def _lognormal(rng: random.Random, median: int, sigma: float, cap: int) -> int:
    return max(1, min(cap, round(median * math.exp(rng.gauss(0.0, sigma)))))


def generate(spec: TraceSpec) -> list[TraceRequest]:
    """The trace: arrivals by thinning a Poisson process, lengths log-normal and capped."""
    rng = random.Random(spec.seed)
    on_rate, off_rate = spec.phase_rates() if spec.kind == "bursty" else (spec.rate, spec.rate)
    peak = max(on_rate, off_rate, 1e-9)
    cycle = spec.burst_on_s + spec.burst_off_s
    out: list[TraceRequest] = []
    t = 0.0
    while True:
        t += rng.expovariate(peak)
        if t >= spec.duration_s:
            return out
        current = on_rate if spec.kind == "steady" or (t % cycle) < spec.burst_on_s \
            else off_rate
        if rng.random() * peak > current:
            continue
        out.append(TraceRequest(
            arrival_s=t,
            input_tokens=_lognormal(rng, spec.input_median, spec.input_sigma, spec.input_max),
            output_tokens=_lognormal(rng, spec.output_median, spec.output_sigma,
                                     spec.output_max)))
