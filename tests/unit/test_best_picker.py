"""The `best` picker: argmax, ties broken at random within a margin relative to the best."""

from __future__ import annotations

import random

import pytest

from shared.scheduling.plugins.base import DecisionContext
from shared.scheduling.plugins.best import BestPicker
from shared.scheduling.view import MemberState

NOW = 1000.0


def members(n: int) -> list[MemberState]:
    return [MemberState(key=f"m{i}", host="10.0.0.1", port=i + 1, available=True)
            for i in range(n)]


def picks(scores: list[float], tolerance: float, n: int = 400) -> set[str]:
    ctx = DecisionContext(pool="p", partition="Common", now=NOW, stale_after_s=3.0,
                          rng=random.Random(5))
    picker = BestPicker(tolerance=tolerance)
    pool = members(len(scores))
    chosen = [picker.pick(ctx, pool, scores) for _ in range(n)]
    return {m.key for m in chosen if m is not None}


def load_scores(loads: list[int]) -> list[float]:
    return [1.0 / (1.0 + n) for n in loads]


@pytest.mark.parametrize(("scores", "tolerance", "expected"), [
    ([1.0, 0.5, 0.2], 1e-9, {"m0"}),
    ([1.0, 1.0, 0.2], 1e-9, {"m0", "m1"}),                # equals: either
    ([1.0, 0.96, 0.9], 0.05, {"m0", "m1"}),               # within 5 % of the best
    # Least load under the greybox margin: one request apart is not a tie at any load.
    (load_scores([4, 5, 7]), 0.05, {"m0"}),
    (load_scores([7, 8, 10]), 0.05, {"m0"}),
    (load_scores([30, 31, 40]), 0.05, {"m0", "m1"}),      # 1 of 31: within 5 %
    ([0.0, 0.0], 0.05, set()),                            # nothing positive: no pick
])
def test_best_picks_among_near_equals(scores: list[float], tolerance: float,
                                      expected: set[str]) -> None:
    assert picks(scores, tolerance) == expected, (scores, tolerance)
