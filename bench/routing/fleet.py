"""Simulated fleets, and their capacity measured on the trace's own request mix."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from bench.routing.harness import run
from bench.routing.routers import LeastInFlight
from bench.routing.trace import TraceSpec, generate
from services.enginesim.config import EngineConfig

HETERO_SPEEDS = (0.5, 1.0, 1.0, 2.0)


def fleet(speeds: Sequence[float] = HETERO_SPEEDS, *, max_num_seqs: int = 4,
          seed: int = 0) -> list[EngineConfig]:
    """Engines of unequal speeds, small batches so that they queue (H100 8B timing)."""
    return [EngineConfig(max_num_seqs=max_num_seqs, speed=speed, seed=seed + i,
                         enable_prefix_caching=False, max_model_len=16384)
            for i, speed in enumerate(speeds)]


def capacity(engines: Sequence[EngineConfig], spec: TraceSpec, *,
             duration_s: float = 120.0) -> float:
    """Completed requests per second when every engine is kept saturated.

    Each engine alone is offered the trace's mix at a rate far above what it serves;
    its throughput over the run is its capacity; the fleet's is the sum.
    """
    total = 0.0
    for cfg in engines:
        flood = dataclasses.replace(spec, kind="steady", rate=200.0, duration_s=duration_s / 4,
                                    seed=spec.seed + 1000)
        trace = generate(flood)
        result = run(trace, [cfg], LeastInFlight(1), scrape_interval=1.0,
                     hold_timeout_s=1e9)
        done = [o for o in result.outcomes if not o.refused and o.e2e < float("inf")]
        if not done:
            continue
        # Throughput while saturated: completions over the time the last one took.
        end = max(o.arrival + o.e2e for o in done)
        total += len(done) / end
    return total


def unloaded_ttft(engine: EngineConfig, spec: TraceSpec) -> float:
    """Median TTFT of the trace's mix on an idle engine (one request at a time)."""
    trace = generate(dataclasses.replace(spec, kind="steady", rate=0.2, duration_s=400.0,
                                         seed=spec.seed + 2000))
    result = run(trace, [engine], LeastInFlight(1), scrape_interval=1.0)
    ttfts = sorted(o.ttft for o in result.outcomes if o.ttft < float("inf"))
    return ttfts[len(ttfts) // 2] if ttfts else float("nan")
