"""Virtual time for prefix-aware routers: ``harness.run`` with real prompts and KV events.

The same discrete-event loop as ``harness.run`` (routers may hold requests; refusals are
misses), but each request carries its real token ids, so each engine's prefix cache hits
exactly when the prompts share blocks, and each engine's block pool reports what it caches
and evicts as vLLM's KV events: a router with a ``kv(engine, events, now)`` method gets them
after every engine step, as the collector's bridge would deliver them.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.routing.harness import HOLD, REJECT, Outcome, QueueSample, Router, RunResult, scrape
from bench.routing.prefix_workload import PrefixRequest
from services.enginesim.clock import VirtualClock
from services.enginesim.config import EngineConfig
from services.enginesim.kv_events import KvEventRecorder
from services.enginesim.model import EngineModel, SimRequest
from services.enginesim.tokenizer import block_hashes


@dataclass
class PrefixRunResult(RunResult):
    """A run plus each engine's prefix-cache counters (vllm:prefix_cache_*_total)."""

    prefix_queries: list[int] = field(default_factory=list)
    prefix_hits: list[int] = field(default_factory=list)

    @property
    def hit_rate(self) -> float:
        queries = sum(self.prefix_queries)
        return sum(self.prefix_hits) / queries if queries else 0.0


def run_prefix(trace: Sequence[PrefixRequest], fleet: Sequence[EngineConfig], router: Router,
               *, scrape_interval: float = 0.2, hold_timeout_s: float = 60.0
               ) -> PrefixRunResult:
    """Drive ``trace`` through ``fleet`` with ``router`` on a virtual clock."""
    wall = time.perf_counter()
    clock = VirtualClock()
    models = [EngineModel(cfg) for cfg in fleet]
    recorders = [KvEventRecorder(cfg.block_size) for cfg in fleet]
    for model, recorder in zip(models, recorders, strict=True):
        model.pool.listener = recorder
    on_kv = getattr(router, "kv", None)
    stepping = [False] * len(models)
    outcomes = [Outcome(i, item.arrival_s) for i, item in enumerate(trace)]
    held: deque[int] = deque()
    events: list[tuple[float, int, int, int]] = []
    seq = 0
    samples: list[QueueSample] = []
    remaining = len(trace)

    def push(t: float, kind: int, value: int) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (t, seq, kind, value))

    for i, item in enumerate(trace):
        push(item.arrival_s, 0, i)
    push(0.0, 3, 0)

    def flush(engine: int, now: float) -> None:
        taken = recorders[engine].take()
        if on_kv is not None and taken:
            on_kv(engine, taken, now)

    def kick(engine: int, now: float) -> None:
        model = models[engine]
        duration = model.begin_step(now)
        flush(engine, now)
        if duration is not None:
            stepping[engine] = True
            push(now + duration, 1, engine)
            return
        stepping[engine] = False
        wake_at = model.next_wakeup()
        if wake_at is not None:
            push(max(wake_at, now), 2, engine)

    def send(index: int, engine: int, now: float) -> None:
        item = trace[index]
        cfg = fleet[engine]
        ids = item.token_ids[:cfg.max_model_len - 1]
        out = max(1, min(item.output_tokens, cfg.max_model_len - len(ids)))
        hashes = block_hashes(ids, cfg.block_size)
        recorders[engine].note(ids, hashes)
        req = SimRequest(str(index), len(ids), hashes, max_tokens=out, arrival=now)
        outcomes[index].engine = engine
        outcomes[index].held_s = now - item.arrival_s
        models[engine].add(req, now)
        if not stepping[engine]:
            kick(engine, now)

    def offer(index: int, now: float) -> bool:
        nonlocal remaining
        choice = router.route(index, trace[index], now)  # type: ignore[arg-type]
        if choice == HOLD:
            return False
        if choice == REJECT:
            outcomes[index].refused = True
            remaining -= 1
            return True
        send(index, choice, now)
        return True

    choose = getattr(router, "next_held", None)

    def drain_held(now: float) -> None:
        while held:
            position = 0 if choose is None else choose([trace[i].arrival_s for i in held], now)
            index = held[position]
            if not offer(index, now):
                return
            del held[position]

    while remaining > 0 and events:
        t, _seq, kind, value = heapq.heappop(events)
        clock.advance_to(t)
        if kind == 0:
            if held or not offer(value, t):
                held.append(value)
                push(t + hold_timeout_s, 4, value)
        elif kind == 1:
            engine = value
            for req in models[engine].finish_step(t):
                if req.finish_reason is None:
                    continue
                index = int(req.rid)
                o = outcomes[index]
                o.ttft = (req.first_token or t) - o.arrival
                o.e2e = t - o.arrival
                remaining -= 1
                router.done(index, engine, o.ttft - o.held_s, o.e2e - o.held_s, t)
            kick(engine, t)
            drain_held(t)
        elif kind == 2:
            if not stepping[value]:
                kick(value, t)
        elif kind == 3:
            snaps = scrape(models, t)
            router.observe(snaps, t)
            samples.append(QueueSample(t, [s.waiting for s in snaps],
                                       [s.running for s in snaps], len(held)))
            drain_held(t)
            push(t + scrape_interval, 3, 0)
        elif kind == 4 and value in held:
            held.remove(value)
            outcomes[value].refused = True
            remaining -= 1
    return PrefixRunResult(router.name, outcomes, samples, clock.now(),
                           time.perf_counter() - wall, [cfg.speed for cfg in fleet],
                           prefix_queries=[m.stats.prefix_queries for m in models],
                           prefix_hits=[m.stats.prefix_hits for m in models])
