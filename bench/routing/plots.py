"""PNG plots of routing runs (matplotlib, a bench-only requirement: pip install matplotlib)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from bench.routing.harness import RunResult


def plot_run(results: Sequence[RunResult], slo_s: float, stem: Path) -> list[Path]:
    """``<stem>-ttft.png`` (TTFT CDF per router) and ``<stem>-queues.png`` (engine queues)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stem.parent.mkdir(parents=True, exist_ok=True)
    out = [stem.with_name(stem.name + "-ttft.png"), stem.with_name(stem.name + "-queues.png")]
    fig, ax = plt.subplots(figsize=(8, 5))
    for result in results:
        ttfts = sorted(math.inf if o.refused else o.ttft for o in result.outcomes)
        finite = [t for t in ttfts if math.isfinite(t)]
        ys = [(i + 1) / len(ttfts) for i in range(len(finite))]
        ax.plot(finite, ys, label=result.router)
    ax.axvline(slo_s, color="grey", linestyle="--", label=f"SLO {slo_s * 1000:.0f} ms")
    ax.set_xscale("log")
    ax.set_xlabel("TTFT (s, from arrival; log scale)")
    ax.set_ylabel("share of requests")
    ax.set_title("TTFT distribution per router (same trace)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out[0], dpi=110)
    plt.close(fig)
    engines = len(results[0].speeds)
    fig, axes = plt.subplots(len(results), 1, figsize=(9, 1.8 * len(results)), sharex=True)
    for ax, result in zip(axes, results, strict=True):
        ts = [s.t for s in result.samples]
        for e in range(engines):
            ax.plot(ts, [s.waiting[e] for s in result.samples], linewidth=0.8,
                    label=f"engine {e} ({result.speeds[e]}x) waiting")
        ax.plot(ts, [s.held for s in result.samples], color="black", linewidth=0.8,
                linestyle=":", label="held at the router")
        ax.set_ylabel(result.router, fontsize=8)
        ax.grid(True, alpha=0.3)
    axes[0].legend(loc="upper right", fontsize=6, ncol=engines + 1)
    axes[-1].set_xlabel("time (s)")
    fig.suptitle("Engine waiting queues (and requests held by the router) over time")
    fig.tight_layout()
    fig.savefig(out[1], dpi=110)
    plt.close(fig)
    return out
