"""The shared-prefix routing benchmark in virtual time: routers side by side, many seeds.

    .venv/bin/python -m bench.routing.run_prefix_virtual [--seeds 5] [--loads 0.8]
        [--duration 120] [--tenants 64] [--burst 1] [--json out.json] [--plots DIR]

The heterogeneous fleet (speeds 0.5/1/1/2, max_num_seqs 4) with prefix caching on and KV
caches sized so that they cannot hold every tenant's system prompt at once; the workload
of ``prefix_workload`` at a fraction of the fleet's closed-loop capacity on that workload.
Per router: TTFT p50/p90/p99, goodput at the SLO (5x a 1x engine's unloaded TTFT with no
cache hit), the engines' prefix-cache hit rate (hits/queries, as vllm:prefix_cache_*), and
each engine's share next to its speed-fair share.
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

import msgspec

from bench.routing.fleet import HETERO_SPEEDS
from bench.routing.harness import HOLD, Router
from bench.routing.prefix_harness import PrefixRunResult, run_prefix
from bench.routing.prefix_routers import (
    CacheAwareEmulation,
    ConsistentHashEmulation,
    PrefixCoreRouter,
)
from bench.routing.prefix_workload import PrefixRequest, PrefixSpec, generate
from bench.routing.report import figures, fmt_s
from bench.routing.routers import LeastInFlight, PowerOfTwo, RoundRobin
from services.enginesim.config import EngineConfig
from shared.config import GreyboxConfig, ModeConfig
from shared.prefix_config import CacheAwareConfig

SCRAPE_S = 0.2
NUM_GPU_BLOCKS = 2200
"""KV blocks per engine (16 tokens each, 35,200 tokens): the running batch plus about
seven tenants' system prompts, so the fleet cannot hold all 64 at once."""


def prefix_fleet(speeds: tuple[float, ...] = HETERO_SPEEDS, blocks: int = NUM_GPU_BLOCKS,
                 max_num_seqs: int = 4) -> list[EngineConfig]:
    return [EngineConfig(max_num_seqs=max_num_seqs, speed=speed, seed=i, block_size=16,
                         num_gpu_blocks=blocks, max_model_len=blocks * 16,
                         enable_prefix_caching=True)
            for i, speed in enumerate(speeds)]


def override(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` of ``--cache-aware-set``: the value as JSON when it parses, else text."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def modes(slo_s: float, overrides: dict[str, Any] | None = None) -> dict[str, ModeConfig]:
    """greybox and the cache-aware modes, with the same guard and admission settings;
    ``overrides`` go into both cache_aware sections."""
    g = GreyboxConfig(ttft_slo_ms=slo_s * 1000, max_queue_wait_s=6 * slo_s)
    cache = NUM_GPU_BLOCKS * 16  # what the operator sets: num_gpu_blocks x block_size
    extra = overrides or {}
    return {
        "greybox": ModeConfig(name="greybox", type="greybox", greybox=g),
        "cache-aware": ModeConfig(name="ca", type="cache_aware", greybox=g,
                                  cache_aware=msgspec.convert(
                                      {"member_cache_tokens": cache, **extra},
                                      CacheAwareConfig)),
        "cache-aware-precise": ModeConfig(name="cap", type="cache_aware", greybox=g,
                                          cache_aware=msgspec.convert(
                                              {"source": "precise", **extra},
                                              CacheAwareConfig)),
    }


def routers(engines: int, seed: int, slo_s: float, only: set[str] | None = None,
            overrides: dict[str, Any] | None = None) -> list[Router]:
    m = modes(slo_s, overrides)
    made: list[Callable[[], Router]] = [
        lambda: RoundRobin(engines), lambda: LeastInFlight(engines, seed),
        lambda: PowerOfTwo(engines, seed),
        lambda: PrefixCoreRouter("greybox", m["greybox"], engines, scrape_interval=SCRAPE_S,
                                 seed=seed),
        lambda: PrefixCoreRouter("cache-aware", m["cache-aware"], engines,
                                 scrape_interval=SCRAPE_S, seed=seed),
        lambda: PrefixCoreRouter("cache-aware-precise", m["cache-aware-precise"], engines,
                                 scrape_interval=SCRAPE_S, seed=seed),
        lambda: PrefixCoreRouter("cache-aware-2-replicas", m["cache-aware"], engines,
                                 scrape_interval=SCRAPE_S, seed=seed, replicas=2),
        lambda: CacheAwareEmulation(engines, seed),
        lambda: ConsistentHashEmulation(engines, seed,
                                        name="vllm-router consistent_hash (emulated)"),
    ]
    out = [make() for make in made]
    return [r for r in out if only is None or r.name in only]


class _Saturate(LeastInFlight):
    """Closed loop: at most ``limit`` in flight per engine, fewest first; the rest wait."""

    name = "saturate"

    def __init__(self, engines: int, limit: int) -> None:
        super().__init__(engines)
        self.limit = limit

    def route(self, index: int, item: Any, now: float) -> int:
        if min(self.inflight) >= self.limit:
            return HOLD
        return super().route(index, item, now)


def capacity(engines: list[EngineConfig], spec: PrefixSpec) -> float:
    """Requests per second the fleet completes when kept busy with this workload's mix."""
    trace = generate(dataclasses.replace(spec, seed=spec.seed + 1000))
    burst = [dataclasses.replace(r, arrival_s=0.0) for r in trace[:800]]
    result = run_prefix(burst, engines, _Saturate(len(engines), 2 * engines[0].max_num_seqs),
                        scrape_interval=1.0, hold_timeout_s=1e9)
    ends = [o.arrival + o.e2e for o in result.outcomes if math.isfinite(o.e2e)]
    return len(ends) / max(ends)


def unloaded_ttft(spec: PrefixSpec) -> float:
    """Median TTFT of the mix on an idle 1x engine with no cache hit (the SLO's yardstick)."""
    engine = dataclasses.replace(prefix_fleet((1.0,))[0], enable_prefix_caching=False)
    trace = generate(dataclasses.replace(spec, rate=0.2, duration_s=300, seed=spec.seed + 2000))
    result = run_prefix(trace, [engine], LeastInFlight(1), scrape_interval=1.0)
    ttfts = sorted(o.ttft for o in result.outcomes if math.isfinite(o.ttft))
    return ttfts[len(ttfts) // 2]


def summarize(result: PrefixRunResult, slo_s: float) -> dict[str, Any]:
    f = figures(result, slo_s)
    fair = [s / sum(result.speeds) for s in result.speeds]
    return {**dataclasses.asdict(f), "hit_rate": result.hit_rate,
            "engine_hit_rates": [h / q if q else 0.0 for h, q in zip(
                result.prefix_hits, result.prefix_queries, strict=True)],
            "max_share_over_fair": max(s / fr for s, fr in zip(f.share, fair, strict=True))}


def _mean(rows: list[dict[str, Any]], key: str) -> float:
    values = [r[key] for r in rows]
    return statistics.fmean(values) if all(math.isfinite(v) for v in values) else math.inf


def table(per_router: dict[str, list[dict[str, Any]]], engines: int) -> str:
    lines = ["| router | TTFT p50 | p90 | p99 (s) | goodput | hit rate | share per engine "
             "| max share / fair |", "|---|---|---|---|---|---|---|---|"]
    for name, rows in per_router.items():
        share = [statistics.fmean(r["share"][i] for r in rows) for i in range(engines)]
        lines.append(
            f"| {name} | {fmt_s(_mean(rows, 'ttft_p50'))} | {fmt_s(_mean(rows, 'ttft_p90'))} | "
            f"{fmt_s(_mean(rows, 'ttft_p99'))} | {_mean(rows, 'goodput'):.3f} | "
            f"{_mean(rows, 'hit_rate'):.3f} | {' / '.join(f'{s:.2f}' for s in share)} | "
            f"{max(r['max_share_over_fair'] for r in rows):.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="run_prefix_virtual", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--loads", default="0.8")
    parser.add_argument("--duration", type=float, default=120.0)
    parser.add_argument("--tenants", type=int, default=64)
    parser.add_argument("--burst", type=float, default=1.0)
    parser.add_argument("--system-tokens", type=int, default=3000)
    parser.add_argument("--output-tokens", type=int, default=30,
                        help="median output length (long prompts, short answers)")
    parser.add_argument("--routers", default="", help="comma-separated names (default: all)")
    parser.add_argument("--cache-aware-set", type=override, action="append", default=[],
                        metavar="KEY=VALUE",
                        help="a cache_aware setting for both cache-aware modes (repeatable)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plots", type=Path, help="write PNG plots of seed 0 here")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    engines = prefix_fleet()
    base = PrefixSpec(tenants=args.tenants, duration_s=args.duration,
                      burst_factor=max(1.0, args.burst), system_tokens=args.system_tokens,
                      output_median=args.output_tokens)
    cap = capacity(engines, base)
    slo = 5 * unloaded_ttft(base)
    only = set(args.routers.split(",")) if args.routers else None
    print(f"fleet speeds {HETERO_SPEEDS}, max_num_seqs 4, {NUM_GPU_BLOCKS} KV blocks of 16 "
          f"tokens each; {args.tenants} tenants; capacity {cap:.2f} req/s; SLO "
          f"{slo * 1000:.0f} ms", flush=True)
    report: dict[str, Any] = {"capacity_rps": cap, "slo_s": slo, "loads": {}}
    for load in (float(x) for x in args.loads.split(",")):
        per_router: dict[str, list[dict[str, Any]]] = {}
        first: list[PrefixRunResult] = []
        for seed in range(args.seeds):
            trace: list[PrefixRequest] = generate(dataclasses.replace(
                base, rate=cap * load, seed=seed))
            for router in routers(len(engines), seed, slo, only,
                                  dict(args.cache_aware_set)):
                result = run_prefix(trace, engines, router, scrape_interval=SCRAPE_S)
                per_router.setdefault(router.name, []).append(summarize(result, slo))
                if seed == 0:
                    first.append(result)
                print(f"  seed {seed} {router.name}: {result.wall_seconds:.1f}s",
                      file=sys.stderr, flush=True)
        print(f"\n### load {load:.0%} of capacity ({args.seeds} seeds; means)\n")
        print(table(per_router, len(engines)), flush=True)
        report["loads"][str(load)] = per_router
        if args.plots:
            from bench.routing.plots import plot_run

            plot_run(first, slo, args.plots / f"prefix-virtual-load{int(load * 100)}")
    print(f"\n({time.perf_counter() - started:.0f} s of wall time)", file=sys.stderr)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
