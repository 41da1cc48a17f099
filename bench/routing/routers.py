"""Routers for the virtual-time harness: textbook baselines and llmsched's own plugin profiles.

The plugin routers run the scheduler's real code (shared/scheduling: profiles, plugins,
the decision order) on member states fed from the harness's scrapes and outcomes, as the
scheduler feeds them from the collector and the gateway.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from bench.routing.harness import HOLD, REJECT, Snapshot
from services.api.gateway.admission import next_to_serve
from services.enginesim.virtual import TraceRequest
from shared.config import Config, GatewayConfig, ModeConfig, PoolConfig, SchedulerConfig
from shared.messages import MemberInfo, MemberMetrics, MetricsBatch, PoolSnapshot, SelectRequest
from shared.routing import OutcomeEvent, RouteRequest, SelectionEvent
from shared.scheduling.core import SchedulerCore
from shared.scheduling.plugins.registry import default_registry

POOL, PARTITION = "bench", "Common"
LINE_GAP_S = GatewayConfig().hold_next_try_ms / 1000
"""The gateway's admission line: after a held request got a member, the next tries this
much later (``gateway.hold_next_try_ms``)."""


class RoundRobin:
    name = "round-robin"

    def __init__(self, engines: int) -> None:
        self.engines = engines
        self._next = 0

    def observe(self, snapshots: Sequence[Snapshot], now: float) -> None:
        return None

    def route(self, index: int, item: TraceRequest, now: float) -> int:
        engine = self._next % self.engines
        self._next += 1
        return engine

    def done(self, index: int, engine: int, ttft: float, e2e: float, now: float) -> None:
        return None


class RandomRouter(RoundRobin):
    name = "random"

    def __init__(self, engines: int, seed: int = 0) -> None:
        super().__init__(engines)
        self.rng = random.Random(seed)

    def route(self, index: int, item: TraceRequest, now: float) -> int:
        return self.rng.randrange(self.engines)


class LeastInFlight(RoundRobin):
    """The client-side baseline: fewest of its own requests in flight (random among ties)."""

    name = "least-in-flight"

    def __init__(self, engines: int, seed: int = 0) -> None:
        super().__init__(engines)
        self.inflight = [0] * engines
        self.rng = random.Random(seed)

    def pick(self) -> int:
        low = min(self.inflight)
        return self.rng.choice([i for i, n in enumerate(self.inflight) if n == low])

    def route(self, index: int, item: TraceRequest, now: float) -> int:
        engine = self.pick()
        self.inflight[engine] += 1
        return engine

    def done(self, index: int, engine: int, ttft: float, e2e: float, now: float) -> None:
        self.inflight[engine] -= 1


class PowerOfTwo(LeastInFlight):
    """Two engines at random, the one with fewer in flight."""

    name = "power-of-two"

    def pick(self) -> int:
        a, b = self.rng.sample(range(self.engines), 2) if self.engines > 1 else (0, 0)
        return a if self.inflight[a] <= self.inflight[b] else b


class CoreRouter:
    """llmsched's scheduler core (a mode of SCHEDULER profiles) fed like the real services.

    Scrapes arrive as metrics batches, routing is the ``route`` call the gateway makes,
    outcomes are the gateway's outcome events; held requests are ordered and spaced as the
    gateway's admission line orders and spaces them.
    """

    admit_gap_s = LINE_GAP_S

    def __init__(self, name: str, mode: ModeConfig, engines: int, *,
                 scrape_interval: float, seed: int = 0, replica: str = "bench") -> None:
        self.name = name
        self.now = 0.0
        self.keys = [f"10.0.0.{i + 1}:8000" for i in range(engines)]
        config = Config(
            scheduler=SchedulerConfig(metrics_fetch_interval=scrape_interval * 1000),
            modes=[mode],
            pools=[PoolConfig(name=POOL, engine_type="vllm", source="static",
                              members=self.keys, mode=mode.name)])
        self.mode = mode
        self.core = SchedulerCore(config, default_registry(), rng=random.Random(seed),
                                  clock=lambda: self.now, replica=replica)
        self.core.view.apply_snapshot(PoolSnapshot(
            pool=POOL, partition=PARTITION, engine_type="vllm", source="static",
            members=[MemberInfo(key=k, host=k.split(":")[0], port=8000) for k in self.keys],
            fetched_at=0.0))
        self.answers: dict[str, int] = {}

    def observe(self, snapshots: Sequence[Snapshot], now: float) -> None:
        self.now = now
        self.core.view.apply_metrics(MetricsBatch(
            pool=POOL, partition=PARTITION, round_started_at=now,
            members=[MemberMetrics(key=self.keys[s.engine], scraped_at=s.at, ok=True,
                                   waiting_queue=float(s.waiting), running_req=float(s.running),
                                   cache_usage=s.kv_usage,
                                   extra={"itl_sum": s.itl_sum, "itl_count": float(s.itl_count)})
                     for s in snapshots]))

    def route(self, index: int, item: TraceRequest, now: float) -> int:
        return self.route_with_event(index, item, now)[0]

    def route_with_event(self, index: int, item: TraceRequest, now: float
                         ) -> tuple[int, SelectionEvent | None]:
        """The engine (or HOLD / REJECT) and the selection event the other replicas hear."""
        self.now = now
        reply, event = self.core.route(RouteRequest(
            pool=POOL, partition=PARTITION, request_id=str(index),
            prompt_chars=item.input_tokens * 4, ttl_s=1e9))
        self.answers[reply.reason] = self.answers.get(reply.reason, 0) + 1
        if not reply.url:
            return (HOLD if reply.answer == "busy" or reply.active else REJECT), event
        return self.keys.index(reply.answer), event

    def done(self, index: int, engine: int, ttft: float, e2e: float, now: float) -> None:
        self.now = now
        self.core.apply_outcome(OutcomeEvent(
            request_id=str(index), pool=POOL, partition=PARTITION, member=self.keys[engine],
            status=200, ttft_s=ttft, e2e_s=e2e))

    def next_held(self, arrivals: Sequence[float], now: float) -> int:
        g = self.mode.greybox
        slo = None if g.ttft_slo_ms is None else g.ttft_slo_ms / 1000
        return next_to_serve(arrivals, now, slo_s=slo, max_wait_s=g.max_queue_wait_s)


HEADERS_AFTER_S = 0.002
"""How long after its select a request's response headers reach the iRule (a streaming
engine sends them at once); its outcome report goes out then."""


class SelectRouter(CoreRouter):
    """The F5 select path: ``select`` with the member list, no request id, no prompt; the
    shipped iRule's outcome report at the response headers (no TTFT to learn from); a
    ``busy`` answer is the iRule's 503, so a miss."""

    admit_gap_s = 0.0  # no line: the iRule answers 503 at once

    def route(self, index: int, item: TraceRequest, now: float) -> int:
        self.now = now
        decision, _event = self.core.select(SelectRequest(
            pool_name=POOL, partition=PARTITION, members=self.keys))
        self.answers[decision.reason] = self.answers.get(decision.reason, 0) + 1
        if decision.answer not in self.keys:
            return REJECT
        self.now = now + HEADERS_AFTER_S
        self.core.apply_outcome(OutcomeEvent(
            request_id="", pool=POOL, partition=PARTITION, member=decision.answer,
            status=200, ttft_s=HEADERS_AFTER_S, ttft_at="headers", final=True, at=self.now))
        self.now = now
        return self.keys.index(decision.answer)

    def done(self, index: int, engine: int, ttft: float, e2e: float, now: float) -> None:
        self.now = now  # the iRule reported at the headers; nothing more comes


EVENT_LAG_S = 0.002
"""How long a replica's selection takes to reach the other replicas (event pacing, 1 ms,
plus the bus)."""


class ReplicatedRouter:
    """Several scheduler replicas behind one admission line: each request goes to one
    replica at random (a NATS queue group), which decides on its own view; the others count
    that selection ``lag_s`` later. Every replica applies every scrape and outcome at once.

    Separates the cost of deciders that see each other's selections late from the cost of
    split admission lines (which this router does not have): with the line's next try at
    once (``admit_gap_s`` 0), a held request admitted by one replica and the next one asked
    of the other replica before the selection arrived both take the same free slot."""

    def __init__(self, name: str, mode: ModeConfig, engines: int, *, replicas: int = 2,
                 scrape_interval: float, seed: int = 0, lag_s: float = EVENT_LAG_S,
                 admit_gap_s: float = LINE_GAP_S) -> None:
        self.name = name
        self.admit_gap_s = admit_gap_s
        self.replicas = [CoreRouter(f"{name}-{i}", mode, engines, scrape_interval=scrape_interval,
                                    seed=seed * 31 + i, replica=f"r{i}")
                         for i in range(replicas)]
        self.lag_s = lag_s
        self._rng = random.Random(seed)
        self._pending: list[tuple[float, int, SelectionEvent]] = []

    @property
    def answers(self) -> dict[str, int]:
        """The replicas' answers by reason, summed."""
        total: dict[str, int] = {}
        for replica in self.replicas:
            for reason, count in replica.answers.items():
                total[reason] = total.get(reason, 0) + count
        return total

    def _deliver(self, now: float) -> None:
        due = [p for p in self._pending if p[0] <= now]
        if not due:
            return
        self._pending = [p for p in self._pending if p[0] > now]
        for at, target, event in sorted(due, key=lambda p: p[0]):
            replica = self.replicas[target]
            replica.now = at
            replica.core.apply_selection(event)

    def observe(self, snapshots: Sequence[Snapshot], now: float) -> None:
        self._deliver(now)
        for replica in self.replicas:
            replica.observe(snapshots, now)

    def route(self, index: int, item: TraceRequest, now: float) -> int:
        self._deliver(now)
        chosen = self._rng.randrange(len(self.replicas))
        answer, event = self.replicas[chosen].route_with_event(index, item, now)
        if event is not None:
            self._pending.extend((now + self.lag_s, i, event)
                                 for i in range(len(self.replicas)) if i != chosen)
        return answer

    def done(self, index: int, engine: int, ttft: float, e2e: float, now: float) -> None:
        self._deliver(now)
        for replica in self.replicas:
            replica.done(index, engine, ttft, e2e, now)

    def next_held(self, arrivals: Sequence[float], now: float) -> int:
        return self.replicas[0].next_held(arrivals, now)
