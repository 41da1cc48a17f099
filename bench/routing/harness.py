"""Virtual time for routers: simulated engines on one clock, a router that may hold requests.

Unlike ``services.enginesim.virtual.simulate`` (route at arrival, always), a router here
may answer HOLD: the request waits in the router's FIFO and is offered again whenever a
request finishes (or at the next scrape), until ``hold_timeout_s`` makes it a refusal.
TTFT is measured from the request's arrival, hold time included; a refused request is
a miss in every goodput figure.
"""

from __future__ import annotations

import heapq
import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from services.enginesim.clock import VirtualClock
from services.enginesim.config import EngineConfig
from services.enginesim.model import EngineModel, SimRequest
from services.enginesim.virtual import TraceRequest, synthetic_hashes

HOLD = -1
"""A router's answer: keep the request in the router's queue for now."""
REJECT = -2
"""A router's answer: refuse the request (admission control)."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One engine's metrics as scraped at ``at``."""

    engine: int
    at: float
    waiting: int
    running: int
    kv_usage: float
    itl_sum: float = 0.0
    """The engine's inter-token latency counters (as ``vllm:inter_token_latency_seconds``)."""
    itl_count: int = 0


def scrape(models: Sequence[EngineModel], at: float) -> list[Snapshot]:
    """Every engine's metrics at ``at``, as a scrape round would read them."""
    return [Snapshot(i, at, m.num_waiting, m.num_running, m.kv_usage, m.stats.itl.sum,
                     m.stats.itl.count) for i, m in enumerate(models)]


class Router(Protocol):
    """What the harness drives; every router keeps its own in-flight counts."""

    name: str

    def observe(self, snapshots: Sequence[Snapshot], now: float) -> None:
        """A scrape round arrived."""
        ...

    def route(self, index: int, item: TraceRequest, now: float) -> int:
        """An engine index, HOLD or REJECT."""
        ...

    def done(self, index: int, engine: int, ttft: float, e2e: float, now: float) -> None:
        """A request this router sent to ``engine`` finished (times from its dispatch)."""
        ...


@dataclass(slots=True)
class Outcome:
    """One trace request: where it went and how long it took (seconds from arrival)."""

    index: int
    arrival: float
    engine: int = -1
    ttft: float = math.inf
    e2e: float = math.inf
    held_s: float = 0.0
    refused: bool = False


@dataclass
class QueueSample:
    t: float
    waiting: list[int]
    running: list[int]
    held: int


@dataclass
class RunResult:
    """Every request's outcome plus engine queues over time."""

    router: str
    outcomes: list[Outcome]
    samples: list[QueueSample]
    sim_seconds: float
    wall_seconds: float
    speeds: list[float] = field(default_factory=list)


def run(trace: Sequence[TraceRequest], fleet: Sequence[EngineConfig], router: Router, *,
        scrape_interval: float = 0.2, hold_timeout_s: float = 60.0) -> RunResult:
    """Drive ``trace`` through ``fleet`` with ``router`` on a virtual clock."""
    wall = time.perf_counter()
    clock = VirtualClock()
    models = [EngineModel(cfg) for cfg in fleet]
    stepping = [False] * len(models)
    outcomes = [Outcome(i, item.arrival_s) for i, item in enumerate(trace)]
    held: deque[int] = deque()
    events: list[tuple[float, int, int, int]] = []
    """(time, seq, kind, value): kind 0 arrival, 1 step end, 2 wake, 3 scrape, 4 timeout,
    5 the admission line's next try."""
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

    def kick(engine: int, now: float) -> None:
        model = models[engine]
        duration = model.begin_step(now)
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
        prompt = max(1, min(item.input_tokens, cfg.max_model_len - 1))
        out = max(1, min(item.output_tokens, cfg.max_model_len - prompt))
        req = SimRequest(str(index), prompt, synthetic_hashes(index, item, cfg.block_size, 0),
                         max_tokens=out, arrival=now)
        outcomes[index].engine = engine
        outcomes[index].held_s = now - item.arrival_s
        models[engine].add(req, now)
        if not stepping[engine]:
            kick(engine, now)

    def offer(index: int, now: float) -> bool:
        """Ask the router; True when the request left the router (sent or refused)."""
        nonlocal remaining
        choice = router.route(index, trace[index], now)
        if choice == HOLD:
            return False
        if choice == REJECT:
            outcomes[index].refused = True
            remaining -= 1
            return True
        send(index, choice, now)
        return True

    choose = getattr(router, "next_held", None)
    admit_gap_s: float = getattr(router, "admit_gap_s", 0.0)
    next_try_due = False

    def drain_held(now: float) -> None:
        nonlocal next_try_due
        if next_try_due:
            return  # the line's next try is already timed
        while held:
            position = 0 if choose is None else choose([trace[i].arrival_s for i in held], now)
            index = held[position]
            if not offer(index, now):
                return
            del held[position]
            if admit_gap_s > 0 and held:
                next_try_due = True  # as the gateway's line: the next try after the gap
                push(now + admit_gap_s, 5, 0)
                return

    while remaining > 0 and events:
        t, _seq, kind, value = heapq.heappop(events)
        clock.advance_to(t)
        if kind == 0:
            if held or not offer(value, t):  # FIFO: nobody overtakes a held request
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
                # The router learns what the engine did: times from dispatch, not arrival.
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
        elif kind == 5:
            next_try_due = False
            drain_held(t)
        elif kind == 4 and value in held:
            held.remove(value)
            outcomes[value].refused = True
            remaining -= 1
    return RunResult(router.name, outcomes, samples, clock.now(),
                     time.perf_counter() - wall, [cfg.speed for cfg in fleet])
