"""Closed-loop probes: TTFT against prompt length, step time against batch and context,
throughput at saturation (with its swings over time)."""

from __future__ import annotations

import asyncio
import logging
import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

from services.enginesim.calibrate.client import EngineClient, Timed, closed_loop, prompt_ids, scrape
from services.enginesim.calibrate.promscrape import EngineGauges
from services.enginesim.calibrate.workload import Workload

log = logging.getLogger("llmsched.enginesim.calibrate")


@dataclass(frozen=True)
class ProbePlan:
    """How long and how wide each probe runs."""

    prompt_lengths: tuple[int, ...]
    """Prompt lengths of the TTFT probe (concurrency 1)."""
    ttft_reps: int = 5
    ttft_output: int = 8
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8)
    itl_prompts: tuple[int, ...] = (32, 256)
    """Prompt lengths of the step-time probe: short and long contexts."""
    itl_output: int = 64
    itl_rounds: int = 3
    saturation_concurrency: int = 16
    saturation_seconds: float = 30.0
    window_s: float = 0.5
    """Width of the throughput windows whose swings measure the slow noise."""


@dataclass(frozen=True)
class TtftObs:
    """TTFT of one request at concurrency 1."""

    prompt: int
    ttft: float


@dataclass(frozen=True)
class ItlObs:
    """Median inter-token latency with ``batch`` requests decoding over ``ctx`` tokens."""

    batch: int
    ctx: float
    itl: float
    samples: int


@dataclass
class Saturation:
    """Closed loop past the batch limit: throughput, its swings, the largest batch seen."""

    concurrency: int
    seconds: float
    throughput: float
    request_rate: float
    windows: list[float]
    window_s: float
    max_running: float
    samples: list[EngineGauges] = field(default_factory=list)


@dataclass
class ProbeData:
    """Everything the closed-loop probes measured."""

    ttft: list[TtftObs]
    itl: list[ItlObs]
    jitter_gaps: list[float]
    """Gaps at concurrency 1 relative to their request's median (per-step noise)."""
    saturation: Saturation
    transport: float | None = None
    """Client-seen TTFT less the engine's own TTFT histogram (HTTP, parsing), seconds."""


def _span_itl(times: list[float]) -> float | None:
    """Mean gap from first to last token: a slow reader that gets several chunks at once
    skews single gaps, not a request's span."""
    if len(times) < 3 or times[-1] <= times[0]:
        return None
    return (times[-1] - times[0]) / (len(times) - 1)


def _median_itl(results: list[Timed]) -> tuple[float, int]:
    spans = [s for r in results if (s := _span_itl(r.token_times)) is not None]
    return (statistics.median(spans), len(spans)) if spans else (0.0, 0)


def _batch_itls(results: list[Timed]) -> list[float]:
    """Each request's mean gap once the whole batch decodes (the others' prefills are past)."""
    firsts = [r.first_token for r in results if r.first_token is not None]
    if not firsts:
        return []
    start = max(firsts)
    spans = [_span_itl([t for t in r.token_times if t > start]) for r in results]
    return [s for s in spans if s is not None]


async def probe_ttft(client: EngineClient, plan: ProbePlan, seed: int) -> tuple[
        list[TtftObs], list[ItlObs], list[float]]:
    """Sequential requests over the prompt lengths, shuffled so slow spells spread evenly."""
    order = [length for _ in range(plan.ttft_reps) for length in plan.prompt_lengths]
    random.Random(seed).shuffle(order)
    ttft: list[TtftObs] = []
    itl: list[ItlObs] = []
    relative: list[float] = []
    for index, length in enumerate(order):
        result = await client.stream(prompt_ids(length, seed * 7919 + index), plan.ttft_output)
        if result.error is not None or result.ttft is None:
            log.warning("TTFT probe request failed: %s", result.error)
            continue
        ttft.append(TtftObs(length, result.ttft))
        gap, count = _median_itl([result])
        if count:
            itl.append(ItlObs(1, length + plan.ttft_output / 2, gap, result.output_tokens))
            # Gaps far from the request's mean are delivery bursts, not step noise.
            relative += [g / gap for g in result.gaps() if 0.5 * gap < g < 2 * gap]
    return ttft, itl, relative


async def probe_itl(client: EngineClient, plan: ProbePlan, seed: int) -> list[ItlObs]:
    """Batches of 1..max_num_seqs started together, so every step decodes the whole batch.

    Rounds go over every (prompt, batch) pair in a shuffled order, so a slow spell of the
    engine spreads over all of them instead of biasing one batch size.
    """
    pairs = [(prompt, batch) for prompt in plan.itl_prompts for batch in plan.batch_sizes]
    done: dict[tuple[int, int], list[float]] = {pair: [] for pair in pairs}
    rng = random.Random(seed ^ 0x17)
    for round_index in range(plan.itl_rounds):
        rng.shuffle(pairs)
        for prompt, batch in pairs:
            base = seed * 1_000_003 + round_index * 10_007 + prompt * 101 + batch

            def make(i: int, prompt: int = prompt, base: int = base) -> tuple[list[int], int]:
                return prompt_ids(prompt, base + 7 * i), plan.itl_output

            results = await closed_loop(client, batch, make, count=batch)
            failed = [r.error for r in results if r.error is not None]
            if failed:
                log.warning("step probe (batch %d): %d request(s) failed: %s", batch,
                            len(failed), failed[0])
            done[(prompt, batch)] += _batch_itls([r for r in results if r.error is None])
    out: list[ItlObs] = []
    for (prompt, batch), spans in sorted(done.items()):
        if spans:
            gap = statistics.median(spans)
            # Past the first token of the last member: each holds prompt + ~3/4 of its output.
            ctx = batch * (prompt + 0.75 * plan.itl_output)
            out.append(ItlObs(batch, ctx, gap, len(spans)))
            log.info("step probe: batch %d, prompt %d: ITL %.2f ms", batch, prompt, gap * 1000)
    return out


async def probe_saturation(client: EngineClient, plan: ProbePlan, workload: Workload,
                           seed: int) -> Saturation:
    """Closed loop at ``saturation_concurrency`` with the workload's request shape."""
    rng = random.Random(seed ^ 0x5A7)

    def make(i: int) -> tuple[list[int], int]:
        length = rng.randint(workload.prompt_min, workload.prompt_max)
        return (prompt_ids(length, seed * 31 + i),
                rng.randint(workload.output_min, workload.output_max))

    samples: list[EngineGauges] = []
    stop = asyncio.Event()
    scraper = asyncio.ensure_future(scrape(client, 0.5, stop, samples))
    start = client.now()
    results = await closed_loop(client, plan.saturation_concurrency, make,
                                until=start + plan.saturation_seconds)
    stop.set()
    await scraper
    # The first seconds fill the batch; the last ones drain it: count the middle.
    lo = start + min(2.0, plan.saturation_seconds / 5)
    hi = start + plan.saturation_seconds
    times = sorted(t for r in results if r.error is None for t in r.token_times if lo <= t < hi)
    count = max(1, int((hi - lo) / plan.window_s))
    windows = [0.0] * count
    for t in times:
        k = int((t - lo) / plan.window_s)
        if k < count:
            windows[k] += 1
    done = [r for r in results if r.error is None and r.done is not None and lo <= r.done < hi]
    span = hi - lo
    running = [s.running for s in samples if lo <= s.t < hi]
    return Saturation(plan.saturation_concurrency, plan.saturation_seconds, len(times) / span,
                      len(done) / span,
                      [w / plan.window_s for w in windows], plan.window_s,
                      max(running, default=0.0), samples)


async def run_probes(client: EngineClient, plan: ProbePlan, workload: Workload, seed: int,
                     say: Callable[[str], None],
                     adjust: Callable[[Saturation], ProbePlan] | None = None) -> ProbeData:
    """All closed-loop probes: saturation first, as it shows the batch limit the others use."""
    say(f"probe 1/3: saturation, {plan.saturation_concurrency} concurrent for "
        f"{plan.saturation_seconds:g} s")
    sat = await probe_saturation(client, plan, workload, seed)
    say(f"  saturated: {sat.throughput:.0f} output tok/s, {sat.request_rate:.2f} req/s, "
        f"largest batch seen {sat.max_running:g}")
    if adjust is not None:
        plan = adjust(sat)
    say(f"probe 2/3: TTFT against prompt length at concurrency 1 "
        f"({len(plan.prompt_lengths)} lengths x {plan.ttft_reps})")
    before = await client.gauges()
    ttft, _, relative = await probe_ttft(client, plan, seed)
    after = await client.gauges()
    transport = None
    count = after.ttft_count - before.ttft_count
    if ttft and count >= len(ttft):
        server = (after.ttft_sum - before.ttft_sum) / count
        transport = statistics.fmean(o.ttft for o in ttft) - server
        say(f"  transport: client TTFT {transport * 1000:.2f} ms above the engine's own")
    say(f"probe 3/3: step time against batch size {list(plan.batch_sizes)} and context "
        f"(prompts {list(plan.itl_prompts)})")
    # Step costs come from the interleaved batch probe alone: single-stream gaps measured
    # minutes apart would carry the engine's slow drift into the decode cost.
    itl = await probe_itl(client, plan, seed)
    return ProbeData(ttft, itl, relative, sat, transport)
