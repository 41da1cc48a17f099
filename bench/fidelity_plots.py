"""PNG plots of the engine fidelity benchmark (matplotlib: a bench-only requirement).

Install it ad hoc (``.venv/bin/python -m pip install matplotlib``); without it the benchmark
prints its tables and says the plots were skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

COLOURS = {"real": "#d62728", "sim": "#1f77b4", "virtual": "#2ca02c"}


def available() -> bool:
    """Whether matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def level_plot(path: Path, rate: float, ttfts: dict[str, Sequence[float]],
               waiting: dict[str, Sequence[tuple[float, float]]], duration: float) -> None:
    """TTFT CDFs and the waiting queue over time, one curve per engine, for one level."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, values in ttfts.items():
        if not values:
            continue
        xs = sorted(v * 1000 for v in values)
        ys = [(i + 1) / len(xs) for i in range(len(xs))]
        left.step(xs, ys, where="post", label=f"{name} (n={len(xs)})", color=COLOURS.get(name))
    left.set_xscale("log")
    left.set_xlabel("TTFT, ms (log)")
    left.set_ylabel("fraction of requests")
    left.set_title(f"TTFT CDF at {rate:g} req/s")
    left.grid(True, which="both", alpha=0.3)
    left.legend()
    for name, series in waiting.items():
        if series:
            right.plot([t for t, _ in series], [w for _, w in series], label=name,
                       color=COLOURS.get(name), linewidth=1.2)
    right.axvline(duration, color="grey", linestyle=":", linewidth=1)
    right.set_xlabel("seconds since the level started (dotted: arrivals stop)")
    right.set_ylabel("num_requests_waiting")
    right.set_title(f"Waiting queue at {rate:g} req/s")
    right.grid(True, alpha=0.3)
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def summary_plot(path: Path, rows: list[dict[str, Any]]) -> None:
    """TTFT p50/p90, mean waiting and throughput against the arrival rate."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    rates = [r["rate"] for r in rows]
    for name in ("real", "sim", "virtual"):
        if not all(name in r for r in rows):
            continue
        colour = COLOURS[name]
        axes[0].plot(rates, [r[name]["ttft_p50"] * 1000 for r in rows], "o-", color=colour,
                     label=f"{name} p50")
        axes[0].plot(rates, [r[name]["ttft_p90"] * 1000 for r in rows], "s--", color=colour,
                     label=f"{name} p90")
        axes[1].plot(rates, [r[name]["mean_waiting"] for r in rows], "o-", color=colour,
                     label=name)
        axes[2].plot(rates, [r[name]["throughput"] for r in rows], "o-", color=colour,
                     label=name)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("TTFT, ms (log)")
    axes[1].set_ylabel("mean num_requests_waiting")
    axes[2].set_ylabel("output tokens/s while arrivals last")
    for ax in axes:
        ax.set_xlabel("arrival rate, req/s")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
