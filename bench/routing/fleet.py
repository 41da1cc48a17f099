"""Simulated fleets, and their capacity measured on the trace's own request mix."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from bench.routing.harness import HOLD, run
from bench.routing.routers import LeastInFlight
from bench.routing.trace import TraceSpec, generate
from services.enginesim.config import EngineConfig
from services.enginesim.virtual import TraceRequest

HETERO_SPEEDS = (0.5, 1.0, 1.0, 2.0)


def fleet(speeds: Sequence[float] = HETERO_SPEEDS, *, max_num_seqs: int = 4,
          seed: int = 0) -> list[EngineConfig]:
    """Engines of unequal speeds, small batches so that they queue (H100 8B timing)."""
    return [EngineConfig(max_num_seqs=max_num_seqs, speed=speed, seed=seed + i,
                         enable_prefix_caching=False, max_model_len=16384)
            for i, speed in enumerate(speeds)]


class _Saturate(LeastInFlight):
    """Keeps twice the batch size in flight on one engine (closed loop): it never idles."""

    name = "saturate"

    def __init__(self, limit: int) -> None:
        super().__init__(1)
        self.limit = limit

    def route(self, index: int, item: TraceRequest, now: float) -> int:
        if self.inflight[0] >= self.limit:
            return HOLD
        self.inflight[0] += 1
        return 0


def capacity(engines: Sequence[EngineConfig], spec: TraceSpec, *, requests: int = 600) -> float:
    """Completed requests per second of the fleet when every engine is kept busy.

    Each engine alone works through ``requests`` of the trace's mix, all there at once and
    twice its batch size in flight; its capacity is how many it completed per second; the
    fleet's is the sum.
    """
    mix = generate(dataclasses.replace(spec, kind="steady", rate=1000.0,
                                       duration_s=requests / 1000.0, seed=spec.seed + 1000))
    burst = [dataclasses.replace(item, arrival_s=0.0) for item in mix]
    total = 0.0
    for cfg in engines:
        result = run(burst, [cfg], _Saturate(2 * cfg.max_num_seqs), scrape_interval=1.0,
                     hold_timeout_s=1e9)
        ends = [o.arrival + o.e2e for o in result.outcomes if math.isfinite(o.e2e)]
        if ends:
            total += len(ends) / max(ends)
    return total


def unloaded_ttft(engine: EngineConfig, spec: TraceSpec) -> float:
    """Median TTFT of the trace's mix on an idle engine (one request at a time)."""
    trace = generate(dataclasses.replace(spec, kind="steady", rate=0.2, duration_s=400.0,
                                         seed=spec.seed + 2000))
    result = run(trace, [engine], LeastInFlight(1), scrape_interval=1.0)
    ttfts = sorted(o.ttft for o in result.outcomes if o.ttft < float("inf"))
    return ttfts[len(ttfts) // 2] if ttfts else float("nan")
