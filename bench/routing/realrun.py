"""A trace replayed in real time through one router, with the harness watching itself.

Open loop: each request leaves at its arrival time whatever happened to the ones before.
While it runs, every engine's ``/metrics`` is scraped at 5 Hz (waiting/running over time)
and the harness measures its own event-loop lag and how late it sent each request, so a
run can show that the harness was never the bottleneck.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import os
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench.routing.fleet import _Saturate
from bench.routing.harness import Outcome, QueueSample, RunResult, run
from bench.routing.realclient import CHAT_PATH, chat_body, stream_chat
from bench.routing.realrouters import RealRouter, Routed
from bench.routing.realstack import MODEL, EngineScrape, Fleet
from bench.routing.report import pct
from bench.routing.trace import TraceSpec, generate
from services.enginesim.config import EngineConfig
from services.enginesim.virtual import TraceRequest

SCRAPE_S = 0.2
LAG_TICK_S = 0.01
SPIKE_S = 0.05
"""Loop lags past this are kept with their time (to tell the harness from the machine)."""
START_DELAY_S = 0.5


@dataclass
class RealRun:
    """One router's run: per-request outcomes as the virtual harness has them, and more."""

    result: RunResult
    routed: list[Routed]
    late_s: list[float]
    """How late each request left against its arrival time."""
    lag_s: list[float]
    """Event-loop lag samples (how much later than asked a 10 ms sleep woke)."""
    share: list[float]
    """Requests each engine completed during the run, as a share (engine counters)."""
    cpu_s: dict[str, float] = field(default_factory=dict)
    load: tuple[float, float] = (0.0, 0.0)
    """1-minute load average before and after the run."""
    spikes: list[tuple[float, float]] = field(default_factory=list)
    """(time into the run, ms) of every loop lag past SPIKE_S."""
    pace: list[float] = field(default_factory=list)
    """Per engine: modelled busy time / wall time seen busy (1: the engines kept pace)."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def refusals(self) -> int:
        return sum(1 for r in self.routed if r.sent.refused)

    @property
    def errors(self) -> int:
        return sum(1 for r in self.routed if not r.sent.ok and not r.sent.refused)

    def error_samples(self, limit: int = 5) -> list[str]:
        seen: dict[str, int] = {}
        for r in self.routed:
            if r.sent.error and not r.sent.refused:
                seen[r.sent.error[:120]] = seen.get(r.sent.error[:120], 0) + 1
        return [f"{n}x {text}" for text, n in sorted(seen.items(), key=lambda kv: -kv[1])][
            :limit]

    def harness(self) -> dict[str, float]:
        """The harness's own figures (ms): loop lag and send lateness, p99 and max."""
        return {"lag_p99_ms": pct(self.lag_s, 99) * 1000, "lag_max_ms": max(self.lag_s) * 1000,
                "late_p99_ms": pct(self.late_s, 99) * 1000,
                "late_max_ms": max(self.late_s) * 1000}


async def _lag_monitor(lags: list[float], spikes: list[tuple[float, float]], t0: float,
                       stop: asyncio.Event) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        await asyncio.sleep(LAG_TICK_S)
        lag = max(0.0, time.perf_counter() - started - LAG_TICK_S)
        lags.append(lag)
        if lag > SPIKE_S:
            spikes.append((round(started - t0, 2), round(lag * 1000, 1)))


async def _scraper(fleet: Fleet, session: aiohttp.ClientSession, t0: float,
                   outstanding: Callable[[], int], samples: list[QueueSample],
                   stop: asyncio.Event) -> None:
    next_at = time.perf_counter()
    while not stop.is_set():
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
            scrapes = await fleet.scrape(session)
            at_engines = sum(s.waiting + s.running for s in scrapes)
            samples.append(QueueSample(
                time.perf_counter() - t0, [int(s.waiting) for s in scrapes],
                [int(s.running) for s in scrapes], max(0, outstanding() - int(at_engines))))
        next_at += SCRAPE_S
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))


def _pace(before: Sequence[dict[str, Any]], after: Sequence[dict[str, Any]],
          samples: Sequence[QueueSample]) -> list[float]:
    """Per engine, modelled busy time over the wall time it was seen busy (1: on schedule).

    The simulator's steps take their modelled time only when its event loop gets the CPU
    in time; well below 1, the engines ran slower than the fleet they stand for.
    """
    out = []
    for engine, (a, b) in enumerate(zip(before, after, strict=True)):
        busy_wall = sum(SCRAPE_S for q in samples if q.running[engine] > 0)
        modelled = float(b.get("busy_time", 0.0)) - float(a.get("busy_time", 0.0))
        out.append(round(modelled / busy_wall, 3) if busy_wall > 0 else math.nan)
    return out


def _share(before: Sequence[EngineScrape], after: Sequence[EngineScrape]) -> list[float]:
    done = [max(0.0, a.success - b.success) for a, b in zip(after, before, strict=True)]
    total = sum(done)
    return [d / total if total else 0.0 for d in done]


async def replay(trace: Sequence[TraceRequest], router: RealRouter, fleet: Fleet,
                 session: aiohttp.ClientSession, cpu: Callable[[], dict[str, float]], *,
                 timeout_s: float = 180.0) -> RealRun:
    """Send ``trace`` through ``router`` at its arrival times; wait for every answer."""
    bodies = [chat_body(router.model, i, item) for i, item in enumerate(trace)]
    routed: list[Routed | None] = [None] * len(trace)
    late = [0.0] * len(trace)
    lags: list[float] = []
    spikes: list[tuple[float, float]] = []
    samples: list[QueueSample] = []
    running = 0
    stop = asyncio.Event()

    async def one(index: int) -> None:
        nonlocal running
        running += 1
        try:
            routed[index] = await router.send(session, index, trace[index], bodies[index],
                                              timeout_s)
        finally:
            running -= 1

    before = await fleet.scrape(session)
    state_before = await fleet.sim_state(session)
    load_before = os.getloadavg()[0]
    cpu_before = cpu()
    self_before = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter() + START_DELAY_S
    watchers = [asyncio.create_task(_lag_monitor(lags, spikes, t0, stop)),
                asyncio.create_task(_scraper(fleet, session, t0, lambda: running, samples,
                                             stop))]
    tasks = []
    try:
        for index, item in enumerate(trace):
            delay = t0 + item.arrival_s - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            late[index] = max(0.0, time.perf_counter() - t0 - item.arrival_s)
            tasks.append(asyncio.create_task(one(index)))
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - t0
        stop.set()
        await asyncio.gather(*watchers)
    finally:  # interrupted: nothing keeps running against a closing session
        for task in (*tasks, *watchers):
            task.cancel()
    self_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu_after = cpu()
    after = await fleet.scrape(session)
    state_after = await fleet.sim_state(session)
    spent = {name: round(cpu_after[name] - cpu_before[name], 2)
             for name in cpu_before if name in cpu_after}
    spent["harness"] = round(self_after.ru_utime + self_after.ru_stime - self_before.ru_utime
                             - self_before.ru_stime, 2)
    done = [r for r in routed if r is not None]
    assert len(done) == len(trace), "every request task ends with a Routed"
    outcomes = []
    for index, (item, r) in enumerate(zip(trace, done, strict=True)):
        miss = not r.sent.ok
        outcomes.append(Outcome(index, item.arrival_s, r.engine,
                                math.inf if miss else r.sent.ttft,
                                math.inf if miss else r.sent.e2e, 0.0, miss))
    result = RunResult(router.name, outcomes, samples, wall, wall, list(fleet.speeds))
    return RealRun(result, done, late, lags, _share(before, after), spent,
                   (load_before, os.getloadavg()[0]),
                   pace=_pace(state_before, state_after, samples), spikes=spikes)


# --------------------------------------------------------------------------- calibration


def capacity_mix(spec: TraceSpec) -> list[TraceRequest]:
    """The requests of the capacity check (``fleet.capacity``'s mix, longer)."""
    return generate(dataclasses.replace(spec, kind="steady", rate=1000.0, duration_s=2.0,
                                        seed=spec.seed + 1000))


def virtual_closed_loop(engines: Sequence[EngineConfig], spec: TraceSpec, *, in_flight: int,
                        seconds: float, warmup_s: float = 3.0) -> list[float]:
    """The real check's figure in virtual time: the same requests in the same order, the
    same number in flight, completions counted over the same window; req/s per engine."""
    mix = capacity_mix(spec)
    end = warmup_s + seconds
    rates = []
    for cfg in engines:
        # Enough requests to outlast the window (an engine of speed 1 does ~3 per second).
        wanted = min(len(mix), int(8 * cfg.speed * end) + 2 * in_flight)
        burst = [dataclasses.replace(item, arrival_s=0.0) for item in mix[:wanted]]
        result = run(burst, [cfg], _Saturate(in_flight), scrape_interval=1.0,
                     hold_timeout_s=1e9)
        ends = [o.arrival + o.e2e for o in result.outcomes if math.isfinite(o.e2e)]
        if max(ends, default=0.0) < end:
            raise ValueError(f"{wanted} requests ended before the window did ({end} s)")
        rates.append(sum(1 for t in ends if warmup_s <= t <= end) / seconds)
    return rates


async def closed_loop_capacity(fleet: Fleet, session: aiohttp.ClientSession, spec: TraceSpec,
                               *, in_flight: int, seconds: float, warmup_s: float = 3.0
                               ) -> dict[str, Any]:
    """Completed requests per second when every engine is kept busy (real time).

    As ``fleet.capacity`` does in virtual time: each engine works through the trace's mix
    with twice its batch size in flight; all engines at once (they are independent, but
    share the simulator's process); completions are counted over ``seconds`` after a
    warm-up. Returns the per-engine and total rates.
    """
    mix = capacity_mix(spec)
    start = time.perf_counter()
    window = (start + warmup_s, start + warmup_s + seconds)
    counts = [0] * len(fleet.urls)
    errors: list[str] = []

    taken = [0] * len(fleet.urls)

    async def worker(engine: int) -> None:
        while time.perf_counter() < window[1]:
            index = taken[engine]  # each engine takes the mix in order, as virtual time does
            taken[engine] += 1
            item = mix[index % len(mix)]
            sent = await stream_chat(session, fleet.urls[engine] + CHAT_PATH,
                                     chat_body(MODEL, index, item), timeout_s=120)
            now = time.perf_counter()
            if not sent.ok:
                errors.append(sent.error or f"HTTP {sent.status}")
            elif window[0] <= now <= window[1]:
                counts[engine] += 1

    async def pace() -> list[float]:
        """Modelled busy time over wall time inside the window (all engines are saturated)."""
        await asyncio.sleep(max(0.0, window[0] - time.perf_counter()))
        first, at = await fleet.sim_state(session), time.perf_counter()
        await asyncio.sleep(max(0.0, window[1] - time.perf_counter()))
        last, wall = await fleet.sim_state(session), time.perf_counter() - at
        return [round((b["busy_time"] - a["busy_time"]) / wall, 3)
                for a, b in zip(first, last, strict=True)]

    paced = asyncio.create_task(pace())
    await asyncio.gather(*(worker(e) for e in range(len(fleet.urls))
                           for _lane in range(in_flight)))
    rates = [c / seconds for c in counts]
    return {"per_engine_rps": [round(r, 3) for r in rates], "total_rps": round(sum(rates), 3),
            "seconds": seconds, "in_flight_per_engine": in_flight, "errors": len(errors),
            "error_samples": errors[:3], "engine_pace": await paced}


async def unloaded_ttft(url: str, session: aiohttp.ClientSession, spec: TraceSpec,
                        requests: int) -> float:
    """Median TTFT of the trace's mix on one idle engine, one request at a time (seconds)."""
    trace = generate(dataclasses.replace(spec, kind="steady", rate=0.2, duration_s=400.0,
                                         seed=spec.seed + 2000))[:requests]
    ttfts = []
    for index, item in enumerate(trace):
        sent = await stream_chat(session, url + CHAT_PATH, chat_body(MODEL, index, item),
                                 timeout_s=60)
        if sent.ok:
            ttfts.append(sent.ttft)
    return statistics.median(ttfts) if ttfts else math.nan
