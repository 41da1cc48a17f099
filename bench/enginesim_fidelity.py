"""Engine simulator fidelity: the same trace through a real engine, the real-time simulator
and virtual time.

Fleet mode (the default, as before): virtual-time TTFT against real-time simulated engines
on loopback, round robin over a small fleet::

    .venv/bin/python bench/enginesim_fidelity.py                 # rates 50 and 100/s
    .venv/bin/python bench/enginesim_fidelity.py --rates 25,50,100,200 --requests 300

Levels mode: one engine, an open-loop Poisson trace per load level (prompts 20-360 tokens,
outputs 16-128, streamed), run against a real engine (``--real URL``, or ``--start-vllm
PYTHON --vllm-model DIR`` to start one), the real-time simulator with a profile (its own
process, fresh per level) and virtual time; TTFT p50/p90/p99, mean waiting, throughput, KV
usage and preemptions per level, simulator / real ratios, the knee, machine load and the
engines' CPU seconds, PNG plots (matplotlib, installed ad hoc) into bench/results/::

    .venv/bin/python bench/enginesim_fidelity.py --mode levels --real http://127.0.0.1:8000 \
        --profile cpu-tiny
    .venv/bin/python bench/enginesim_fidelity.py --mode levels --quick      # simulator only

Figures depend on the machine's load: a busy CPU stalls the real-time event loop (and a real
engine), which virtual time never sees.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import time
from dataclasses import dataclass

from services.enginesim.config import EngineConfig
from services.enginesim.launcher import start_engine
from services.enginesim.policies import RoundRobin, least_in_flight, poisson_trace
from services.enginesim.replay import replay
from services.enginesim.virtual import percentile, simulate

ENGINE = EngineConfig(served_model_name=("tiny",), max_model_len=2048, max_num_seqs=8,
                      num_gpu_blocks=512, seed=5)
PREFIX = 64


@dataclass
class Level:
    """TTFT percentiles at one arrival rate, seconds."""

    rate: float
    virtual: dict[int, float]
    real: dict[int, float]


async def measure(rate: float, requests: int, engines: int, seed: int) -> Level:
    """Run one trace in virtual time, then replay it against real engines."""
    trace = poisson_trace(requests, rate, input_mean=200, output_mean=20, groups=4,
                          prefix_tokens=PREFIX, seed=seed)
    fleet = [dataclasses.replace(ENGINE, seed=ENGINE.seed + i) for i in range(engines)]
    virtual = simulate(trace, fleet, RoundRobin(), group_prefix_tokens=PREFIX)
    running = [await start_engine(cfg) for cfg in fleet]
    try:
        real = await replay(trace, [e.url for e in running], model="tiny",
                            default_prefix=PREFIX)
    finally:
        for engine in running:
            await engine.stop()
    v = [r.ttft for r in virtual.requests]
    r = [x.ttft for x in real]
    return Level(rate, {q: percentile(v, q) for q in (50, 99)},
                 {q: percentile(r, q) for q in (50, 99)})


def virtual_speed(requests: int) -> tuple[float, float]:
    """Wall seconds and simulated seconds for ``requests`` on four engines in virtual time."""
    fleet = [EngineConfig(seed=i, speed=s) for i, s in enumerate((1.0, 1.0, 0.5, 2.0))]
    trace = poisson_trace(requests, 150.0, seed=1)
    start = time.perf_counter()
    result = simulate(trace, fleet, least_in_flight, record_series=False)
    return time.perf_counter() - start, result.sim_seconds


def table(levels: list[Level]) -> str:
    """The figures as a Markdown table (milliseconds)."""
    rows = ["| rate/s | virtual p50 | real p50 | real/virtual | virtual p99 | real p99 "
            "| real/virtual |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for lv in levels:
        cells = [f"{lv.rate:g}"]
        for q in (50, 99):
            v, r = lv.virtual[q], lv.real[q]
            cells += [f"{v * 1000:.1f}", f"{r * 1000:.1f}", f"{r / v:.2f}" if v > 0 else "-"]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


async def run(rates: list[float], requests: int, engines: int, seed: int) -> list[Level]:
    return [await measure(rate, requests, engines, seed) for rate in rates]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("fleet", "levels"), default="fleet",
                        help="fleet: the original real-time vs virtual check; levels: one "
                             "engine, real vs simulator vs virtual per load level")
    args, rest = parser.parse_known_args(argv)
    if args.mode == "levels":
        from fidelity_levels import main as levels_main

        return levels_main(rest)
    return fleet_main(rest)


def fleet_main(argv: list[str] | None = None) -> int:
    """The fleet mode."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="50,100",
                        help="comma-separated arrival rates, requests/s (default 50,100)")
    parser.add_argument("--requests", type=int, default=150, help="requests per level")
    parser.add_argument("--engines", type=int, default=2, help="engines, round-robin")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--speed-requests", type=int, default=10_000,
                        help="requests for the virtual-time speed line (0: skip)")
    args = parser.parse_args(argv)
    try:
        rates = [float(x) for x in args.rates.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--rates: not numbers: {args.rates!r}")
    if not rates or any(r <= 0 for r in rates) or args.requests < 1 or args.engines < 1:
        parser.error("--rates must be > 0, --requests and --engines >= 1")
    levels = asyncio.run(run(rates, args.requests, args.engines, args.seed))
    print(f"TTFT, ms: {args.requests} requests per level, {args.engines} engines "
          f"(round robin), {ENGINE.max_num_seqs} seqs each")
    print(table(levels))
    if args.speed_requests > 0:
        wall, simulated = virtual_speed(args.speed_requests)
        print(f"virtual time: {args.speed_requests} requests on 4 engines: {wall:.2f} s wall "
              f"for {simulated:.1f} s simulated ({simulated / wall:.0f}x real time)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
