"""Stalls in a saturated engine's output: runs of throughput windows far under the median.

A CPU engine that shares its cores with its own front end (and a load client) now and then
streams nothing for a fraction of a second to a few seconds, then delivers the held tokens
at once. Closed-loop throughput windows show each such spell as a run of near-empty windows
followed by a burst. The calibration fits the simulator's stall process (rate and mean
length) to these runs, and keeps them out of the slow-noise fit, which they would otherwise
inflate.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

STALL_SHARE = 0.25
"""A window under this share of the median rate counts as stalled."""
STALL_WINDOW_S = 0.25
"""Width of the saturation probe's windows when stalls are fitted: the shortest stalls seen
on a CPU engine last about a quarter second."""


@dataclass(frozen=True)
class Stall:
    """Where a stall starts (its first window) and how many windows it lasts."""

    first: int
    windows: int


@dataclass(frozen=True)
class StallFit:
    """Stalls per second outside them, and their mean length in seconds (0, 0: none seen)."""

    rate_per_s: float
    mean_s: float
    count: int


def find_stalls(windows: list[float]) -> list[Stall]:
    """Runs of windows under ``STALL_SHARE`` of the median window."""
    floor = STALL_SHARE * statistics.median(windows) if windows else 0.0
    out: list[Stall] = []
    start: int | None = None
    for i, rate in enumerate([*windows, floor + 1.0]):  # a sentinel closes the last run
        if rate < floor and start is None:
            start = i
        elif rate >= floor and start is not None:
            out.append(Stall(start, i - start))
            start = None
    return out


def fit_stalls(windows: list[float], window_s: float) -> StallFit:
    """The stall process that explains the runs: a rate per second of unstalled time and an
    exponential length whose mean is the runs' mean length."""
    stalls = find_stalls(windows)
    if not stalls or window_s <= 0:
        return StallFit(0.0, 0.0, 0)
    stalled = sum(s.windows for s in stalls) * window_s
    free = len(windows) * window_s - stalled
    if free <= 0:
        return StallFit(0.0, 0.0, 0)
    return StallFit(len(stalls) / free, stalled / len(stalls), len(stalls))


def steady_windows(windows: list[float]) -> list[float]:
    """The windows outside stalls and the burst right after each (for the slow-noise fit)."""
    skip: set[int] = set()
    for stall in find_stalls(windows):
        skip.update(range(stall.first, stall.first + stall.windows + 1))
    return [w for i, w in enumerate(windows) if i not in skip]
