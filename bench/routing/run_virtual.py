"""The routing benchmark in virtual time: routers side by side on the same traces, many seeds.

    .venv/bin/python -m bench.routing.run_virtual [--seeds 10] [--loads 0.7,0.9]
        [--duration 120] [--burst 1.5] [--json out.json] [--plots DIR]

For each seed: a bursty trace at each load (a fraction of the fleet's measured capacity)
goes through every router on the heterogeneous simulated fleet; the table gives each
figure's mean and spread (min-max) over the seeds. The SLO is 5x the median TTFT of a
1x engine unloaded; a refused request is a miss and an infinite TTFT.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.routing.fleet import HETERO_SPEEDS, capacity, fleet, unloaded_ttft
from bench.routing.harness import Router, RunResult, run
from bench.routing.report import Figures, figures, fmt_s
from bench.routing.routers import (
    CoreRouter,
    LeastInFlight,
    PowerOfTwo,
    RandomRouter,
    ReplicatedRouter,
    RoundRobin,
    SelectRouter,
)
from bench.routing.trace import TraceSpec, generate
from shared.config import GreyboxConfig, ModeConfig

SCRAPE_S = 0.2


def routers(engines: int, seed: int, slo_s: float) -> list[Router]:
    """Every router of the comparison, fresh (routers keep state)."""
    greybox = ModeConfig(name="greybox", type="greybox", greybox=GreyboxConfig(
        ttft_slo_ms=slo_s * 1000, max_queue_wait_s=6 * slo_s))
    return [
        RoundRobin(engines), RandomRouter(engines, seed), LeastInFlight(engines, seed),
        PowerOfTwo(engines, seed),
        CoreRouter("s1", ModeConfig(name="s1", w_a=0.8, w_b=0.2), engines,
                   scrape_interval=SCRAPE_S, seed=seed),
        CoreRouter("greybox", greybox, engines, scrape_interval=SCRAPE_S, seed=seed),
        SelectRouter("greybox-select", greybox, engines, scrape_interval=SCRAPE_S, seed=seed),
        ReplicatedRouter("greybox-2-replicas", greybox, engines, scrape_interval=SCRAPE_S,
                         seed=seed),
        ReplicatedRouter("greybox-2-replicas-no-gap", greybox, engines,
                         scrape_interval=SCRAPE_S, seed=seed, admit_gap_s=0.0),
    ]


def _agg(rows: list[Figures], get: Callable[[Figures], float]) -> tuple[float, float, float]:
    values = [get(r) for r in rows]
    finite = [v for v in values if math.isfinite(v)]
    mean = statistics.fmean(finite) if len(finite) == len(values) else math.inf
    return mean, min(values), max(values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="run_virtual", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--loads", default="0.7,0.9")
    parser.add_argument("--duration", type=float, default=120.0)
    parser.add_argument("--burst", type=float, default=1.5,
                        help="ON-period rate as a multiple of the mean (1: steady)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plots", type=Path, help="write PNG plots of seed 0 here")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    engines = fleet()
    base = TraceSpec(kind="bursty" if args.burst > 1 else "steady", duration_s=args.duration,
                     burst_factor=max(1.0, args.burst))
    cap = capacity(engines, base)
    slo = 5 * unloaded_ttft(engines[HETERO_SPEEDS.index(1.0)], base)
    print(f"fleet speeds {HETERO_SPEEDS}, max_num_seqs {engines[0].max_num_seqs}; capacity "
          f"{cap:.2f} req/s; SLO {slo * 1000:.0f} ms (5x a 1x engine's unloaded TTFT)",
          flush=True)
    report: dict[str, Any] = {"capacity_rps": cap, "slo_s": slo, "loads": {}}
    for load in (float(x) for x in args.loads.split(",")):
        per_router: dict[str, list[Figures]] = {}
        first: list[RunResult] = []
        for seed in range(args.seeds):
            trace = generate(dataclasses.replace(base, rate=cap * load, seed=seed))
            for router in routers(len(engines), seed, slo):
                result = run(trace, engines, router, scrape_interval=SCRAPE_S)
                per_router.setdefault(router.name, []).append(figures(result, slo))
                if seed == 0:
                    first.append(result)
        print(f"\n### load {load:.0%} of capacity ({args.seeds} seeds; mean [min-max])\n")
        print("| router | TTFT p50 | p90 | p99 (s) | e2e p99 | goodput | share per engine |")
        print("|---|---|---|---|---|---|---|")
        rows: dict[str, Any] = {}
        for name, figs in per_router.items():
            cells = []
            for get in (lambda f: f.ttft_p50, lambda f: f.ttft_p90, lambda f: f.ttft_p99,
                        lambda f: f.e2e_p99):
                mean, lo, hi = _agg(figs, get)
                cells.append(f"{fmt_s(mean)} [{fmt_s(lo)}-{fmt_s(hi)}]")
            good = _agg(figs, lambda f: f.goodput)
            share = [statistics.fmean(f.share[i] for f in figs) for i in range(len(engines))]
            print(f"| {name} | {' | '.join(cells)} | {good[0]:.3f} [{good[1]:.3f}-"
                  f"{good[2]:.3f}] | {' / '.join(f'{s:.2f}' for s in share)} |")
            rows[name] = [dataclasses.asdict(f) for f in figs]
        report["loads"][str(load)] = rows
        if args.plots:
            from bench.routing.plots import plot_run

            plot_run(first, slo, args.plots / f"virtual-load{int(load * 100)}")
    print(f"\n({time.perf_counter() - started:.0f} s of wall time)", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
