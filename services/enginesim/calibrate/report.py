"""Tables of simulated against measured figures, per load level."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from services.enginesim.calibrate.measure import LevelMetrics


def ratio(sim: float, real: float) -> float:
    """sim / real, NaN when either is missing or real is 0."""
    if not (math.isfinite(sim) and math.isfinite(real)) or real == 0:
        return math.nan
    return sim / real


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}" if math.isfinite(seconds) else "-"


def _x(value: float) -> str:
    return f"{value:.2f}" if math.isfinite(value) else "-"


def fit_table(measured: Sequence[LevelMetrics], simulated: Sequence[LevelMetrics]) -> str:
    """Markdown: per level, TTFT p50/p90, mean waiting and throughput, measured vs simulated."""
    rows = ["| rate/s | TTFT p50 ms real / sim | ratio | TTFT p90 ms real / sim | ratio "
            "| waiting real / sim | throughput tok/s real / sim | ratio |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for real, sim in zip(measured, simulated, strict=True):
        rows.append(
            f"| {real.rate:g} | {_ms(real.ttft_p50)} / {_ms(sim.ttft_p50)} "
            f"| {_x(ratio(sim.ttft_p50, real.ttft_p50))} "
            f"| {_ms(real.ttft_p90)} / {_ms(sim.ttft_p90)} "
            f"| {_x(ratio(sim.ttft_p90, real.ttft_p90))} "
            f"| {real.mean_waiting:.2f} / {sim.mean_waiting:.2f} "
            f"| {real.throughput:.0f} / {sim.throughput:.0f} "
            f"| {_x(ratio(sim.throughput, real.throughput))} |")
    return "\n".join(rows)


def fit_rows(measured: Sequence[LevelMetrics], simulated: Sequence[LevelMetrics]
             ) -> list[dict[str, Any]]:
    """The same figures as JSON rows (kept in the profile file)."""
    out = []
    for real, sim in zip(measured, simulated, strict=True):
        out.append({
            "rate": real.rate,
            "ttft_p50_ms": [round(real.ttft_p50 * 1000, 2), round(sim.ttft_p50 * 1000, 2)],
            "ttft_p90_ms": [round(real.ttft_p90 * 1000, 2), round(sim.ttft_p90 * 1000, 2)],
            "mean_waiting": [round(real.mean_waiting, 2), round(sim.mean_waiting, 2)],
            "throughput": [round(real.throughput, 1), round(sim.throughput, 1)]})
    return out
