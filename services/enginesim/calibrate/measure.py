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
    censored: int = 0
    """Requests cancelled unanswered at the end of the drain time (their TTFT: a lower bound)."""

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
    cut = [r for r in run.results if r.error is not None and r.error.startswith("cancelled")]
    end = run.start + run.duration
    tokens = sum(1 for r in run.results for t in r.token_times if t <= end)
    window = [s for s in run.samples if s.t <= end] or run.samples
    # A cancelled request's wait is a lower bound of its TTFT: it still counts, so a level
    # cut short shows its queue instead of hiding the slowest requests.
    ttft = [r.ttft for r in ok if r.ttft is not None] + [
        r.ttft if r.ttft is not None else (r.done or r.sent) - r.sent for r in cut]
    e2e = [(r.done or r.sent) - r.sent for r in ok + cut]
    preempt = (run.samples[-1].preemptions - run.samples[0].preemptions) if run.samples else 0.0
    return LevelMetrics(
        rate=rate, requests=len(run.results), errors=len(run.results) - len(ok) - len(cut),
        ttft_p50=percentile(ttft, 50), ttft_p90=percentile(ttft, 90),
        ttft_p99=percentile(ttft, 99), e2e_p50=percentile(e2e, 50),
        e2e_p99=percentile(e2e, 99),
        mean_waiting=_mean([s.waiting for s in window]),
        max_waiting=max((s.waiting for s in window), default=math.nan),
        mean_running=_mean([s.running for s in window]),
        throughput=tokens / run.duration if run.duration > 0 else math.nan,
        kv_mean=_mean([s.kv_usage for s in window]),
        kv_max=max((s.kv_usage for s in window), default=math.nan), preemptions=preempt,
        censored=len(cut))


def from_sim(rate: float, result: SimResult, duration: float, engine: int = 0,
             drain_s: float | None = None) -> LevelMetrics:
    """Figures of a virtual-time run of the same trace (series scraped as over HTTP); with
    ``drain_s``, TTFTs are cut where an HTTP run cancels what is still unanswered."""
    series = result.series[engine]
    window = [s for s in series if s.t <= duration] or series
    cutoff = math.inf if drain_s is None else duration + drain_s
    ttft = [min(r.ttft, cutoff - r.arrival_s) for r in result.requests]
    e2e = [min(r.e2e, cutoff - r.arrival_s) for r in result.requests]
    censored = sum(1 for r in result.requests if r.arrival_s + r.ttft > cutoff)
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
        preemptions=float(series[-1].preemptions) if series else 0.0, censored=censored)
