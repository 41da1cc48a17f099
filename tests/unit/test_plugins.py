"""Table-driven tests of the scheduling plugins and the decision order."""

from __future__ import annotations

import random

import pytest

from shared.config import FallbackConfig, ModeConfig
from shared.scheduling.decide import decide
from shared.scheduling.plugins.base import DecisionContext
from shared.scheduling.plugins.kv_scorer import KVCacheScorer
from shared.scheduling.plugins.queue_scorer import QueueScorer
from shared.scheduling.plugins.registry import build_profile, default_registry
from shared.scheduling.plugins.threshold import ThresholdFilter
from shared.scheduling.plugins.weighted_random import WeightedRandomPicker
from shared.scheduling.view import MemberState, PoolState

NOW = 1000.0


def member(key: str, q: float | None = 0, r: float | None = 0, kv: float | None = 0.0,
           age: float | None = 0.0, available: bool = True) -> MemberState:
    return MemberState(key=key, host=key.split(":")[0], port=1, available=available,
                       waiting_queue=q, running_req=r, cache_usage=kv,
                       metrics_at=None if age is None else NOW - age)


def ctx(seed: int = 1) -> DecisionContext:
    return DecisionContext(pool="p", partition="Common", now=NOW, stale_after_s=3.0,
                           rng=random.Random(seed), debug=True)


@pytest.mark.parametrize(("run_t", "wait_t", "members", "kept"), [
    (None, None, [member("a", r=99, q=99)], ["a"]),
    (10, None, [member("a", r=10), member("b", r=11)], ["a"]),
    (None, 5, [member("a", q=5), member("b", q=6)], ["a"]),
    (10, 5, [member("a", r=11, q=0), member("b", r=0, q=6), member("c", r=1, q=1)], ["c"]),
    (1, 1, [member("a", r=None, q=None, kv=None, age=None)], ["a"]),   # no metrics: kept
    (1, 1, [member("a", r=50, q=50, age=60)], ["a"]),                   # stale: kept
])
def test_threshold_filter(run_t: float | None, wait_t: float | None,
                          members: list[MemberState], kept: list[str]) -> None:
    out = ThresholdFilter(run_t, wait_t).filter(ctx(), members)
    assert [m.key for m in out] == kept


@pytest.mark.parametrize(("queues", "expected"), [
    ([0, 0], [1.0, 1.0]),
    ([0, 4, 8], [1.0, 0.5, 0.0]),
    ([2, None], [0.0, None]),
])
def test_queue_scorer(queues: list[float | None], expected: list[float | None]) -> None:
    members = [member(str(i), q=q, kv=0.1 if q is not None else None,
                      age=0 if q is not None else None) for i, q in enumerate(queues)]
    assert QueueScorer().score(ctx(), members) == expected


@pytest.mark.parametrize(("kv", "expected"), [(0.0, 1.0), (0.25, 0.75), (1.0, 0.0),
                                              (1.5, 0.0), (None, None)])
def test_kv_scorer(kv: float | None, expected: float | None) -> None:
    assert KVCacheScorer().score(ctx(), [member("a", kv=kv)]) == [expected]


def test_weighted_random_follows_scores_and_never_picks_zero() -> None:
    members = [member("a"), member("b"), member("c")]
    c = ctx(7)
    picks = [WeightedRandomPicker().pick(c, members, [3.0, 1.0, 0.0]) for _ in range(4000)]
    keys = [p.key for p in picks if p is not None]
    assert "c" not in keys
    assert 0.70 < keys.count("a") / len(keys) < 0.80
    assert WeightedRandomPicker().pick(c, members, [0.0, 0.0, 0.0]) is None


@pytest.mark.parametrize(("fallback", "requested", "members", "answer", "reason"), [
    (True, ["a"], [], "fallback", "pool_fallback"),
    (False, ["a"], None, "none", "pool_unknown"),
    (False, ["a"], [], "none", "pool_empty"),
    (False, ["x"], [member("a")], "none", "no_intersection"),
    (False, ["a"], [member("a", available=False)], "none", "no_intersection"),
    (False, ["a"], [member("a", r=50)], "none", "all_filtered"),
    (False, ["a"], [member("a", age=None, q=None, kv=None)], "none", "no_metrics"),
    (False, ["a"], [member("a", age=60)], "none", "no_metrics"),
    (False, ["a", "b"], [member("a", q=3, kv=1.0), member("b", q=3, kv=1.0)], "none",
     "all_zero"),
    (False, ["a", "b"], [member("a", q=0, kv=0.1), member("b", q=9, kv=1.0)], "a", "selected"),
])
def test_decision_order(fallback: bool, requested: list[str],
                        members: list[MemberState] | None, answer: str, reason: str) -> None:
    profile = build_profile(default_registry(), ModeConfig(w_a=0.8, w_b=0.2),
                            FallbackConfig(member_running_req_threshold=10))
    pool = None if members is None else PoolState(
        name="p", partition="Common", engine_type="vllm", source="test",
        members={m.key: m for m in members}, fetched_at=NOW)
    decision = decide(pool, requested, profile, ctx(), pool_fallback=fallback)
    assert (decision.answer, decision.reason) == (answer, reason)


def test_s1_score_formula() -> None:
    profile = build_profile(default_registry(), ModeConfig(w_a=0.8, w_b=0.2), FallbackConfig())
    members = [member("a", q=0, kv=0.5), member("b", q=4, kv=0.0), member("c", q=8, kv=0.25)]
    scores = profile.score(ctx(), members)
    assert scores == pytest.approx([0.8 + 0.1, 0.4 + 0.2, 0.0 + 0.15])
