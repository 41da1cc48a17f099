"""One load level's figures, alike for a run over HTTP and for a virtual-time simulation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from services.enginesim.calibrate.client import Arrival, OpenLoopRun
from services.enginesim.virtual import SimResult, TraceRequest, percentile


@dataclass(frozen=True)
class LevelMetrics:
    """Figures of one open-loop level (seconds; throughput in output tokens/s)."""

    rate: float
    requests: int
    errors: int
    ttft_p50: float
    ttft_p90: float
    ttft_p99: float
    e2e_p50: float
    e2e_p99: float
    mean_waiting: float
    max_waiting: float
    mean_running: float
    throughput: float
    """Output tokens produced while arrivals last, per second."""
    kv_mean: float
    kv_max: float
    preemptions: float

    def as_dict(self) -> dict[str, Any]:
        """JSON view."""
        return asdict(self)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def trace_of(arrivals: Sequence[Arrival]) -> list[TraceRequest]:
    """The same requests as a virtual-time trace (no shared prefixes)."""
    return [TraceRequest(a.at_s, a.prompt_tokens, a.output_tokens) for a in arrivals]


def from_run(rate: float, run: OpenLoopRun) -> LevelMetrics:
    """Figures of a level run over HTTP."""
    ok = [r for r in run.results if r.error is None and r.ttft is not None]
    end = run.start + run.duration
    tokens = sum(1 for r in ok for t in r.token_times if t <= end)
    window = [s for s in run.samples if s.t <= end] or run.samples
    ttft = [r.ttft for r in ok if r.ttft is not None]
    e2e = [(r.done or r.sent) - r.sent for r in ok]
    preempt = (run.samples[-1].preemptions - run.samples[0].preemptions) if run.samples else 0.0
    return LevelMetrics(
        rate=rate, requests=len(run.results), errors=len(run.results) - len(ok),
        ttft_p50=percentile(ttft, 50), ttft_p90=percentile(ttft, 90),
        ttft_p99=percentile(ttft, 99), e2e_p50=percentile(e2e, 50),
        e2e_p99=percentile(e2e, 99),
        mean_waiting=_mean([s.waiting for s in window]),
        max_waiting=max((s.waiting for s in window), default=math.nan),
        mean_running=_mean([s.running for s in window]),
        throughput=tokens / run.duration if run.duration > 0 else math.nan,
        kv_mean=_mean([s.kv_usage for s in window]),
        kv_max=max((s.kv_usage for s in window), default=math.nan), preemptions=preempt)


def from_sim(rate: float, result: SimResult, duration: float, engine: int = 0) -> LevelMetrics:
    """Figures of a virtual-time run of the same trace (series scraped as over HTTP)."""
    series = result.series[engine]
    window = [s for s in series if s.t <= duration] or series
    ttft = [r.ttft for r in result.requests]
    e2e = [r.e2e for r in result.requests]
    last = window[-1] if window else None
    return LevelMetrics(
        rate=rate, requests=len(result.requests), errors=0,
        ttft_p50=percentile(ttft, 50), ttft_p90=percentile(ttft, 90),
        ttft_p99=percentile(ttft, 99), e2e_p50=percentile(e2e, 50),
        e2e_p99=percentile(e2e, 99),
        mean_waiting=_mean([s.waiting for s in window]),
        max_waiting=max((s.waiting for s in window), default=math.nan),
        mean_running=_mean([s.running for s in window]),
        throughput=(last.generation_tokens / last.t) if last and last.t > 0 else math.nan,
        kv_mean=_mean([s.kv_usage for s in window]),
        kv_max=max((s.kv_usage for s in window), default=math.nan),
        preemptions=float(series[-1].preemptions) if series else 0.0)
