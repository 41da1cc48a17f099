"""Virtual time: a discrete-event simulation of a routed fleet with the same engine model."""

# No sockets, no sleeping: a policy routes each trace request seeing what a router sees
# (metrics as last scraped, plus its own in-flight counts); engines step on a virtual clock.

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from services.enginesim.clock import VirtualClock
from services.enginesim.config import EngineConfig
from services.enginesim.model import EngineModel, SimRequest


@dataclass(frozen=True)
class TraceRequest:
    """One request of a workload trace."""

    arrival_s: float
    input_tokens: int
    output_tokens: int
    prefix_group: int | None = None
    """Requests of one group share their first ``prefix_tokens`` prompt tokens."""
    prefix_tokens: int | None = None
    """Shared prefix length; None uses the simulation's ``group_prefix_tokens``."""


@dataclass(frozen=True)
class EngineSnapshot:
    """One engine's metrics as the router last scraped them."""

    index: int
    scraped_at: float
    waiting: int
    running: int
    kv_usage: float
    prefix_cache_queries: int
    prefix_cache_hits: int


@dataclass(frozen=True)
class RouterView:
    """What a routing policy may look at."""

    now: float
    engines: tuple[EngineSnapshot, ...]
    in_flight: tuple[int, ...]


Policy = Callable[[TraceRequest, RouterView], int]


@dataclass(frozen=True)
class RequestResult:
    """Outcome of one trace request (times in seconds)."""

    index: int
    engine: int
    arrival_s: float
    ttft: float
    e2e: float
    output_tokens: int
    cached_tokens: int
    finish_reason: str


@dataclass(frozen=True)
class MetricSample:
    """An engine's gauges and counters at one scrape."""

    t: float
    waiting: int
    running: int
    kv_usage: float
    prefix_cache_queries: int
    prefix_cache_hits: int
    preemptions: int
    generation_tokens: int = 0


@dataclass
class SimResult:
    """Per-request outcomes and per-engine metric time series."""

    requests: list[RequestResult]
    series: list[list[MetricSample]]
    sim_seconds: float
    wall_seconds: float
    steps: int = 0
    busy_seconds: list[float] = field(default_factory=list)

    def percentile(self, what: str, q: float) -> float:
        """Nearest-rank percentile (q in 0..100) of ``ttft`` or ``e2e``."""
        return percentile([getattr(r, what) for r in self.requests], q)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of ``values`` (q in 0..100); NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def synthetic_hashes(index: int, item: TraceRequest, block_size: int, default_prefix: int
                     ) -> list[int]:
    """Block hashes of a synthetic prompt: shared for the group's prefix blocks, unique after."""
    shared = 0
    if item.prefix_group is not None:
        shared = item.prefix_tokens if item.prefix_tokens is not None else default_prefix
        shared = min(shared, item.input_tokens) // block_size
    full = item.input_tokens // block_size
    group = item.prefix_group or 0
    return [hash((1, group, b)) if b < shared else hash((2, index, b)) for b in range(full)]


def _snapshot(index: int, model: EngineModel, now: float) -> EngineSnapshot:
    stats = model.stats
    return EngineSnapshot(index, now, model.num_waiting, model.num_running, model.kv_usage,
                          stats.prefix_queries, stats.prefix_hits)


def simulate(trace: Sequence[TraceRequest], fleet: Sequence[EngineConfig], policy: Policy, *,
             scrape_interval: float = 0.1, group_prefix_tokens: int = 512,
             record_series: bool = True) -> SimResult:
    """Run ``trace`` through ``fleet`` routed by ``policy``; deterministic for fixed seeds."""
    wall = time.perf_counter()
    clock = VirtualClock()
    models = [EngineModel(cfg) for cfg in fleet]
    n_engines = len(models)
    stepping = [False] * n_engines
    in_flight = [0] * n_engines
    series: list[list[MetricSample]] = [[] for _ in models]
    snapshots = tuple(_snapshot(i, m, 0.0) for i, m in enumerate(models))
    results: list[RequestResult | None] = [None] * len(trace)
    order = sorted(range(len(trace)), key=lambda k: (trace[k].arrival_s, k))
    events: list[tuple[float, int, int]] = []
    seq = 0
    next_scrape = 0.0
    pos = 0
    done = 0
    inf = math.inf

    def kick(engine: int, now: float) -> None:
        nonlocal seq
        model = models[engine]
        duration = model.begin_step(now)
        if duration is not None:
            stepping[engine] = True
            seq += 1
            heapq.heappush(events, (now + duration, seq, engine))
            return
        stepping[engine] = False
        wake_at = model.next_wakeup()
        if wake_at is not None:
            seq += 1
            heapq.heappush(events, (max(wake_at, now), seq, -1 - engine))

    while done < len(trace):
        t_arrival = trace[order[pos]].arrival_s if pos < len(order) else inf
        t_event = events[0][0] if events else inf
        if t_arrival == inf and t_event == inf:
            break
        t = min(t_arrival, t_event, next_scrape)
        clock.advance_to(t)
        if t == next_scrape:
            snapshots = tuple(_snapshot(i, m, t) for i, m in enumerate(models))
            if record_series:
                for i, m in enumerate(models):
                    series[i].append(MetricSample(t, m.num_waiting, m.num_running, m.kv_usage,
                                                  m.stats.prefix_queries, m.stats.prefix_hits,
                                                  m.stats.preemptions,
                                                  m.stats.generation_tokens))
            next_scrape = t + scrape_interval
        elif t == t_event:
            _, _, code = heapq.heappop(events)
            if code < 0:
                if not stepping[-1 - code]:
                    kick(-1 - code, t)
                continue
            engine = code
            for req in models[engine].finish_step(t):
                if req.finish_reason is not None:
                    k = int(req.rid)
                    in_flight[engine] -= 1
                    done += 1
                    results[k] = RequestResult(
                        k, engine, req.arrival, (req.first_token or t) - req.arrival,
                        t - req.arrival, req.num_output, req.cached_tokens, req.finish_reason)
            kick(engine, t)
        else:
            k = order[pos]
            pos += 1
            item = trace[k]
            view = RouterView(t, snapshots, tuple(in_flight))
            engine = policy(item, view)
            if not 0 <= engine < n_engines:
                raise ValueError(f"policy returned engine {engine}, fleet has {n_engines}")
            cfg = fleet[engine]
            prompt = max(1, min(item.input_tokens, cfg.max_model_len - 1))
            out = max(1, min(item.output_tokens, cfg.max_model_len - prompt))
            req = SimRequest(str(k), prompt,
                             synthetic_hashes(k, item, cfg.block_size, group_prefix_tokens),
                             max_tokens=out)
            models[engine].add(req, t)
            in_flight[engine] += 1
            if not stepping[engine]:
                kick(engine, t)
    finished = [r for r in results if r is not None]
    return SimResult(finished, series, clock.now(), time.perf_counter() - wall,
                     sum(m.steps for m in models), [m.busy_time for m in models])
