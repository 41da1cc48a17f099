"""Figures of a run: TTFT percentiles, goodput at an SLO, share per engine; tables."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from bench.routing.harness import RunResult


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); inf counts (a refused request never ended)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(frozen=True)
class Figures:
    router: str
    requests: int
    ttft_p50: float
    ttft_p90: float
    ttft_p99: float
    e2e_p99: float
    goodput: float
    """Share of requests with TTFT under the SLO; refused ones count as misses."""
    refused: int
    share: tuple[float, ...]
    """Share of requests per engine (refused ones excluded)."""
    mean_held_s: float


def figures(result: RunResult, slo_s: float) -> Figures:
    outs = result.outcomes
    ttfts = [math.inf if o.refused else o.ttft for o in outs]
    e2es = [math.inf if o.refused else o.e2e for o in outs]
    served = [o for o in outs if not o.refused and o.engine >= 0]
    engines = len(result.speeds) or (max((o.engine for o in served), default=0) + 1)
    counts = [0] * engines
    for o in served:
        counts[o.engine] += 1
    return Figures(
        router=result.router, requests=len(outs),
        ttft_p50=pct(ttfts, 50), ttft_p90=pct(ttfts, 90), ttft_p99=pct(ttfts, 99),
        e2e_p99=pct(e2es, 99),
        goodput=sum(1 for t in ttfts if t <= slo_s) / len(outs) if outs else math.nan,
        refused=sum(1 for o in outs if o.refused),
        share=tuple(c / len(served) if served else 0.0 for c in counts),
        mean_held_s=statistics.fmean(o.held_s for o in served) if served else 0.0)


def fmt_s(value: float) -> str:
    if math.isinf(value):
        return "inf"
    if math.isnan(value):
        return "-"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def table(rows: Sequence[Figures], title: str) -> str:
    lines = [f"### {title}", "",
             "| router | TTFT p50 | p90 | p99 (s) | e2e p99 | goodput | refused | share per "
             "engine |",
             "|---|---|---|---|---|---|---|---|"]
    for f in rows:
        share = " / ".join(f"{s:.2f}" for s in f.share)
        lines.append(f"| {f.router} | {fmt_s(f.ttft_p50)} | {fmt_s(f.ttft_p90)} | "
                     f"{fmt_s(f.ttft_p99)} | {fmt_s(f.e2e_p99)} | {f.goodput:.3f} | "
                     f"{f.refused} | {share} |")
    return "\n".join(lines)
