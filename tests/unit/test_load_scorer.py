"""The `load` scorer: router in flight plus the engine's queue; on the select path also the
engine's running count, weighed by the square root of each member's relative decode speed."""

from __future__ import annotations

import random

import pytest

from shared.scheduling.plugins.base import DecisionContext
from shared.scheduling.plugins.load_scorer import LoadScorer
from shared.scheduling.view import MemberState

NOW = 1000.0


def member(key: str, inflight: int, running: float, waiting: float,
           itl_s: float | None, cap: float = 0.0, age: float = 0.0) -> MemberState:
    m = MemberState(key=key, host="10.0.0.1", port=1, available=True, waiting_queue=waiting,
                    running_req=running, cache_usage=0.0, inflight=inflight,
                    metrics_at=NOW - age)
    m.itl_s = itl_s
    m.running_cap = cap
    return m


Row = (tuple[int, float, float, float | None] | tuple[int, float, float, float | None, float]
       | tuple[int, float, float, float | None, float, float])


def scores(rows: list[Row], *, select: bool) -> list[float]:
    ctx = DecisionContext(pool="p", partition="Common", now=NOW, stale_after_s=3.0,
                          rng=random.Random(1), engine_counts=select)
    members = [member(f"m{i}", *row) for i, row in enumerate(rows)]
    return [s or 0.0 for s in LoadScorer().score(ctx, members)]


@pytest.mark.parametrize(("rows", "select", "expected"), [
    # The gateway: in flight + waiting; running is already in the router's count.
    ([(0, 5, 0, None), (2, 0, 1, None)], False, [1.0, 0.25]),
    # The select path: running counts too (batch sizes unknown: no member has a free slot).
    ([(0, 5, 0, None), (2, 0, 1, None)], True, [0.5 / 6, 0.5 / 4]),
    # Speeds from ITL (0.02 s is twice as fast as 0.04 s): √0.5 for the slower one.
    ([(0, 0, 0, 0.02), (0, 0, 0, 0.04)], True, [0.5, 0.5 * 0.5 ** 0.5]),
    ([(0, 3, 0, 0.02), (0, 1, 0, 0.04)], True, [0.5 / 4, 0.5 * 0.5 ** 0.5 / 2]),
    # One ITL known: no speed weighting (a lone figure has nothing to compare with).
    ([(0, 1, 0, 0.02), (0, 1, 0, None)], True, [0.25, 0.25]),
    # A free batch slot ranks first: 3 of 4 slots taken beats 4 of 4, even if faster.
    ([(1, 2, 0, 0.04, 4), (0, 4, 0, 0.02, 4)], True,
     [0.5 + 0.5 * 0.5 ** 0.5 / 4, 0.5 / 5]),
    ([(0, 4, 1, None, 4), (0, 3, 0, None, 4)], True, [0.5 / 6, 0.5 + 0.5 / 4]),
    # Stale metrics (10 s old, window 3 s): neither its frozen 0 nor its frozen 9 counts;
    # it takes the fresh members' mean (4) plus its own selects, and is never "free".
    ([(1, 0, 0, None, 8, 10.0), (0, 3, 0, None, 8), (0, 5, 0, None, 8)], True,
     [0.5 / 6, 0.5 + 0.5 / 4, 0.5 + 0.5 / 6]),
    ([(0, 9, 0, None, 8, 10.0), (0, 3, 0, None, 8), (0, 5, 0, None, 8)], True,
     [0.5 / 5, 0.5 + 0.5 / 4, 0.5 + 0.5 / 6]),
    # Speed does not matter on the gateway path.
    ([(0, 0, 0, 0.02), (0, 0, 0, 0.04)], False, [1.0, 1.0]),
])
def test_load_scores(rows: list[Row], select: bool,
                     expected: list[float]) -> None:
    assert scores(rows, select=select) == pytest.approx(expected), rows
