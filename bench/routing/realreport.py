"""Figures of the real-time runs: medians over runs, the bar's ratios, tables and PNG plots."""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.routing.realrun import RealRun
from bench.routing.report import Figures, figures, fmt_s

BASELINES = ("least-in-flight", "power-of-two")
VLLM_ROUTER = "vr-"
GREYBOX = "greybox"


@dataclass
class RouterRuns:
    """One router's runs at one load."""

    name: str
    figs: list[Figures]
    runs: list[RealRun]

    def median(self, get: Callable[[Figures], float]) -> float:
        values = [get(f) for f in self.figs]
        return statistics.median(values) if values else math.nan

    def spread(self, get: Callable[[Figures], float]) -> tuple[float, float]:
        values = [get(f) for f in self.figs]
        return min(values), max(values)

    @property
    def p99(self) -> float:
        return self.median(lambda f: f.ttft_p99)

    @property
    def goodput(self) -> float:
        return self.median(lambda f: f.goodput)


def run_figures(run: RealRun, slo_s: float) -> Figures:
    """The virtual harness's figures, with the share taken from the engines' counters."""
    return dataclasses.replace(figures(run.result, slo_s), share=tuple(run.share))


def _cell(runs: RouterRuns, get: Callable[[Figures], float]) -> str:
    mid = runs.median(get)
    if len(runs.figs) < 2:
        return fmt_s(mid)
    lo, hi = runs.spread(get)
    return f"{fmt_s(mid)} [{fmt_s(lo)}-{fmt_s(hi)}]"


def table(rows: Sequence[RouterRuns], title: str) -> str:
    """Median over runs (and min-max when there are several)."""
    lines = [f"### {title}", "",
             "| router | TTFT p50 (s) | p90 | p99 | e2e p99 | goodput | refused | errors | "
             "share per engine (0.5x/1x/1x/2x) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        good = f"{r.goodput:.3f}"
        if len(r.figs) > 1:
            lo, hi = r.spread(lambda f: f.goodput)
            good += f" [{lo:.3f}-{hi:.3f}]"
        share = [statistics.median(f.share[i] for f in r.figs) for i in range(len(r.figs[0].share))]
        refused = statistics.median(run.refusals for run in r.runs)
        errors = statistics.median(run.errors for run in r.runs)
        lines.append(f"| {r.name} | {_cell(r, lambda f: f.ttft_p50)} | "
                     f"{_cell(r, lambda f: f.ttft_p90)} | {_cell(r, lambda f: f.ttft_p99)} | "
                     f"{_cell(r, lambda f: f.e2e_p99)} | {good} | {refused:g} | {errors:g} | "
                     f"{' / '.join(f'{s:.2f}' for s in share)} |")
    return "\n".join(lines)


def _ratio(a: float, b: float) -> float:
    if math.isinf(a) and math.isinf(b):
        return math.nan
    if b == 0 or math.isinf(b):
        return 0.0 if math.isfinite(a) else math.inf
    return a / b


def ratios(rows: Sequence[RouterRuns]) -> list[dict[str, Any]]:
    """What the bar asks of each greybox router: p99 and goodput against the baselines."""
    by_name = {r.name: r for r in rows}
    peers = [r for r in rows if r.name.startswith(VLLM_ROUTER)]
    vr_best = min(peers, key=lambda r: r.p99) if peers else None
    candidates = [by_name[n] for n in BASELINES if n in by_name]
    if vr_best is not None:
        candidates.append(vr_best)
    best = min(candidates, key=lambda r: r.p99) if candidates else None
    rr = by_name.get("round-robin")
    out = []
    for r in rows:
        if not r.name.startswith(GREYBOX):
            continue
        entry: dict[str, Any] = {"router": r.name, "p99_s": r.p99, "goodput": r.goodput}
        if best is not None:
            entry.update(best=best.name, p99_vs_best=_ratio(r.p99, best.p99),
                         goodput_pts_vs_best=100 * (r.goodput - best.goodput))
        if vr_best is not None:
            entry.update(vllm_router_best=vr_best.name,
                         p99_vs_vllm_router_best=_ratio(r.p99, vr_best.p99),
                         goodput_pts_vs_vllm_router_best=100 * (r.goodput - vr_best.goodput))
        if rr is not None:
            entry.update(p99_vs_round_robin=_ratio(r.p99, rr.p99),
                         goodput_pts_vs_round_robin=100 * (r.goodput - rr.goodput))
        out.append(entry)
    return out


def ratio_table(entries: Sequence[dict[str, Any]], title: str) -> str:
    lines = [f"### {title}", "",
             "| router | p99 ÷ best baseline (which) | p99 ÷ vllm-router best (which) | "
             "p99 ÷ round-robin | goodput − best (pts) | goodput − round-robin (pts) |",
             "|---|---|---|---|---|---|"]

    def num(entry: dict[str, Any], key: str, form: str = ".2f") -> str:
        value = entry.get(key)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        return "inf" if math.isinf(value) else format(value, form)

    for e in entries:
        lines.append(f"| {e['router']} | {num(e, 'p99_vs_best')} ({e.get('best', '-')}) | "
                     f"{num(e, 'p99_vs_vllm_router_best')} ({e.get('vllm_router_best', '-')}) | "
                     f"{num(e, 'p99_vs_round_robin')} | {num(e, 'goodput_pts_vs_best', '+.1f')} "
                     f"| {num(e, 'goodput_pts_vs_round_robin', '+.1f')} |")
    return "\n".join(lines)


def harness_table(rows: Sequence[RouterRuns], title: str) -> str:
    """The harness's lag and lateness (worst run), machine load and CPU seconds per process."""
    lines = [f"### {title}", "",
             "| router | loop lag p99 / max (ms) | send late p99 / max (ms) | engine pace "
             "(slowest engine, worst run) | load 1-min (before-after) | CPU s per process "
             "(median run) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        h = [run.harness() for run in r.runs]
        loads = [run.load for run in r.runs]
        names = sorted({n for run in r.runs for n in run.cpu_s})
        cpu = {n: statistics.median(run.cpu_s.get(n, 0.0) for run in r.runs) for n in names}
        lines.append(
            f"| {r.name} | {max(x['lag_p99_ms'] for x in h):.1f} / "
            f"{max(x['lag_max_ms'] for x in h):.1f} | {max(x['late_p99_ms'] for x in h):.1f} / "
            f"{max(x['late_max_ms'] for x in h):.1f} | {_slowest(r.runs):.2f} | "
            f"{min(a for a, _ in loads):.1f}-{max(b for _, b in loads):.1f} | "
            + ", ".join(f"{n} {v:.1f}" for n, v in cpu.items()) + " |")
    return "\n".join(lines)


def _slowest(runs: Sequence[RealRun]) -> float:
    paces = [p for run in runs for p in run.pace if p == p]
    return min(paces) if paces else math.nan


def plot(rows: Sequence[RouterRuns], slo_s: float, stem: Path, title: str) -> list[Path]:
    """``<stem>-ttft.png`` (TTFT CDFs, first run) and ``<stem>-queues.png`` (engine queues)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stem.parent.mkdir(parents=True, exist_ok=True)
    out = [stem.with_name(stem.name + "-ttft.png"), stem.with_name(stem.name + "-queues.png")]
    styles = {"greybox": "-", "s1": "-.", "vr-": "--"}
    fig, ax = plt.subplots(figsize=(9, 6))
    for r in rows:
        ttfts = sorted(math.inf if o.refused else o.ttft for o in r.runs[0].result.outcomes)
        finite = [t for t in ttfts if math.isfinite(t)]
        style = next((s for prefix, s in styles.items() if r.name.startswith(prefix)), ":")
        ax.plot(finite, [(i + 1) / len(ttfts) for i in range(len(finite))], linestyle=style,
                linewidth=2.0 if r.name.startswith("greybox") else 1.0, label=r.name)
    ax.axvline(slo_s, color="grey", linestyle="--", label=f"SLO {slo_s * 1000:.0f} ms")
    ax.set_xscale("log")
    ax.set_xlabel("TTFT (s, from sending; log scale; refused/failed never reach 1)")
    ax.set_ylabel("share of requests")
    ax.set_title(f"TTFT distribution per router, real time ({title}, run 1)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out[0], dpi=110)
    plt.close(fig)
    first = rows[0].runs[0].result
    engines = len(first.speeds)
    fig, axes = plt.subplots(len(rows), 1, figsize=(10, 1.3 * len(rows) + 1), sharex=True,
                             squeeze=False)
    for ax, r in zip(axes[:, 0], rows, strict=True):
        result = r.runs[0].result
        ts = [s.t for s in result.samples]
        for e in range(engines):
            ax.plot(ts, [s.waiting[e] for s in result.samples], linewidth=0.8,
                    label=f"engine {e} ({result.speeds[e]}x) waiting")
        ax.plot(ts, [s.held for s in result.samples], color="black", linewidth=0.8,
                linestyle=":", label="in flight, not at an engine (held by the router)")
        ax.set_ylabel(r.name, fontsize=7, rotation=0, ha="right")
        ax.grid(True, alpha=0.3)
    axes[0, 0].legend(loc="upper right", fontsize=6, ncol=engines + 1)
    axes[-1, 0].set_xlabel("time (s)")
    fig.suptitle(f"Engine waiting queues from /metrics at 5 Hz ({title}, run 1)")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / (1.3 * len(rows) + 1)))
    fig.savefig(out[1], dpi=100)
    plt.close(fig)
    return out
