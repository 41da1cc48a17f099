"""The greybox benchmark's bursty heterogeneous workload with the cache-aware profile on.

    .venv/bin/python -m bench.routing.run_prefix_regression [--seeds 10] [--loads 0.7,0.9]

The same traces, fleet, capacity and SLO as ``run_virtual``; ``greybox`` and
``cache-aware`` (approximate, every request carrying its own prompt's block chain, none
shared: this workload has no common prefixes) side by side. Cache awareness must cost
nothing where there is nothing to reuse.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics

from bench.routing.fleet import capacity, fleet, unloaded_ttft
from bench.routing.harness import run
from bench.routing.report import Figures, figures, fmt_s
from bench.routing.routers import HOLD, PARTITION, POOL, REJECT, CoreRouter
from bench.routing.trace import TraceSpec, generate
from services.enginesim.virtual import TraceRequest
from shared.config import GreyboxConfig, ModeConfig
from shared.prefix import text_block_hashes
from shared.routing import RouteRequest

SCRAPE_S = 0.2


class PromptRouter(CoreRouter):
    """CoreRouter whose route calls carry each request's own (unshared) block chain."""

    def route(self, index: int, item: TraceRequest, now: float) -> int:
        self.now = now
        text = f"request {index}: " + "x" * (item.input_tokens * 4)
        reply, _event = self.core.route(RouteRequest(
            pool=POOL, partition=PARTITION, request_id=str(index),
            prompt_chars=item.input_tokens * 4, ttl_s=1e9,
            prefix_hashes=text_block_hashes(text)))
        self.answers[reply.reason] = self.answers.get(reply.reason, 0) + 1
        if not reply.url:
            return HOLD if reply.answer == "busy" or reply.active else REJECT
        return self.keys.index(reply.answer)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="run_prefix_regression", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--loads", default="0.7,0.9")
    parser.add_argument("--duration", type=float, default=120.0)
    args = parser.parse_args(argv)
    engines = fleet()
    base = TraceSpec(kind="bursty", duration_s=args.duration, burst_factor=1.5)
    cap = capacity(engines, base)
    slo = 5 * unloaded_ttft(engines[1], base)
    g = GreyboxConfig(ttft_slo_ms=slo * 1000, max_queue_wait_s=6 * slo)
    print(f"capacity {cap:.2f} req/s, SLO {slo * 1000:.0f} ms")
    for load in (float(x) for x in args.loads.split(",")):
        rows: dict[str, list[Figures]] = {}
        for seed in range(args.seeds):
            trace = generate(dataclasses.replace(base, rate=cap * load, seed=seed))
            for router in (
                    CoreRouter("greybox", ModeConfig(name="g", type="greybox", greybox=g),
                               len(engines), scrape_interval=SCRAPE_S, seed=seed),
                    PromptRouter("cache-aware", ModeConfig(name="ca", type="cache_aware",
                                                           greybox=g),
                                 len(engines), scrape_interval=SCRAPE_S, seed=seed)):
                result = run(trace, engines, router, scrape_interval=SCRAPE_S)
                rows.setdefault(router.name, []).append(figures(result, slo))
        print(f"\n### bursty workload, load {load:.0%} ({args.seeds} seeds; means)\n")
        print("| profile | TTFT p50 | p90 | p99 (s) | goodput | share per engine |")
        print("|---|---|---|---|---|---|")
        for name, figs in rows.items():
            def mean(get: str, figs: list[Figures] = figs) -> float:
                return statistics.fmean(getattr(f, get) for f in figs)
            share = [statistics.fmean(f.share[i] for f in figs) for i in range(len(engines))]
            print(f"| {name} | {fmt_s(mean('ttft_p50'))} | {fmt_s(mean('ttft_p90'))} | "
                  f"{fmt_s(mean('ttft_p99'))} | {mean('goodput'):.3f} | "
                  f"{' / '.join(f'{s:.2f}' for s in share)} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
