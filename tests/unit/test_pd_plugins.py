"""Table-driven tests of the seed-004 strategies as plugins: round robin, relative load,
latency, uniform, and the round_robin / weighted profiles."""

from __future__ import annotations

import random

import pytest

from shared.config import FallbackConfig, ModeConfig, WeightedConfig
from shared.scheduling.decide import decide
from shared.scheduling.plugins.base import DecisionContext
from shared.scheduling.plugins.latency_scorer import LatencyScorer
from shared.scheduling.plugins.registry import build_profile, default_registry
from shared.scheduling.plugins.relative_load_scorer import RelativeLoadScorer
from shared.scheduling.plugins.round_robin import RoundRobinPicker
from shared.scheduling.plugins.uniform_scorer import UniformScorer
from shared.scheduling.view import MemberState, PoolState

NOW = 1000.0


def member(key: str, *, inflight: int = 0, q: float | None = 0.0, kv: float | None = 0.0,
           ttft: tuple[float, float] | None = None, age: float | None = 0.0) -> MemberState:
    extra = {} if ttft is None else {"ttft_sum": ttft[0], "ttft_count": ttft[1]}
    return MemberState(key=key, host="10.0.0.1", port=1, available=True, waiting_queue=q,
                       running_req=0.0, cache_usage=kv, inflight=inflight, extra=extra,
                       metrics_at=None if age is None else NOW - age)


def ctx() -> DecisionContext:
    return DecisionContext(pool="p", partition="Common", now=NOW, stale_after_s=3.0,
                           rng=random.Random(3))


@pytest.mark.parametrize(("keys", "scores", "last", "expected"), [
    (["a", "b", "c"], [1, 1, 1], None, "a"),
    (["a", "b", "c"], [1, 1, 1], "a", "b"),
    (["a", "b", "c"], [1, 1, 1], "c", "a"),          # wraps
    (["c", "a", "b"], [1, 1, 1], "a", "b"),          # by key, not list order
    (["a", "b", "c"], [1, 0, 1], "a", "c"),          # zero score skipped
    (["a", "c"], [1, 1], "b", "c"),                  # the last one left: next key after it
    (["a", "b"], [0, 0], "a", None),
])
def test_round_robin_picker(keys: list[str], scores: list[float], last: str | None,
                            expected: str | None) -> None:
    picker = RoundRobinPicker(last=last)
    chosen = picker.pick(ctx(), [member(k) for k in keys], scores)
    assert (chosen.key if chosen else None) == expected
    assert picker.last == (expected if expected is not None else last)


def test_round_robin_cycles_and_simulate_leaves_the_turn() -> None:
    picker = RoundRobinPicker()
    members = [member(k) for k in ("b", "a", "c")]
    turns = [picker.pick(ctx(), members, [1, 1, 1]) for _ in range(6)]
    assert [m.key for m in turns if m] == ["a", "b", "c", "a", "b", "c"]
    many = picker.pick_many(ctx(), members, [1, 1, 1], 4)
    assert [m.key for m in many if m] == ["a", "b", "c", "a"]
    assert picker.last == "c"


@pytest.mark.parametrize(("loads", "expected"), [
    ([(0, 0.0), (0, 0.0)], [1.0, 1.0]),
    ([(0, 0.0), (1, 0.0)], [1.0, 0.5]),
    ([(2, 1.0), (5, 0.0), (0, 3.0)], [1.0, 4 / 6, 1.0]),
    ([(9, 0.0), (10, 0.0)], [1.0, 10 / 11]),          # busy: still spans the range
    ([(1, None)], [1.0]),                              # no queue figure: in flight only
])
def test_relative_load_scorer(loads: list[tuple[int, float | None]],
                              expected: list[float]) -> None:
    members = [member(str(i), inflight=n, q=q) for i, (n, q) in enumerate(loads)]
    assert RelativeLoadScorer().score(ctx(), members) == pytest.approx(expected)


@pytest.mark.parametrize(("ttfts", "expected"), [
    ([(1.0, 10), (2.0, 10)], [1.0, 0.5]),
    ([None, (2.0, 10)], [1.0, 1.0]),                   # unknown: tried, not starved
    ([(0.0, 0), (1.0, 10)], [1.0, 1.0]),               # no request yet
    ([None, None], [1.0, 1.0]),
])
def test_latency_scorer_first_sight(ttfts: list[tuple[float, float] | None],
                                    expected: list[float]) -> None:
    members = [member(str(i), ttft=t) for i, t in enumerate(ttfts)]
    assert LatencyScorer().score(ctx(), members) == pytest.approx(expected)


@pytest.mark.parametrize(("rounds", "expected"), [
    ([(1.0, 10)], 0.1),                                # lifetime mean at first sight
    ([(1.0, 10), (1.0, 10)], 0.1),                     # no new request: unchanged
    ([(1.0, 10), (3.0, 20)], 0.1 + 0.3 * (0.2 - 0.1)),  # window mean 0.2, smoothed
    ([(1.0, 10), (0.5, 1)], 0.5),                      # count fell: engine restarted
])
def test_latency_scorer_follows_recent_windows(rounds: list[tuple[float, float]],
                                               expected: float) -> None:
    scorer = LatencyScorer()
    for total, count in rounds:
        mean = scorer.recent(member("a", ttft=(total, count)), NOW)
    assert mean == pytest.approx(expected)


@pytest.mark.parametrize(("later_s", "expected"), [
    ([1.0, 4.9], [0.1, 0.1]),                          # not yet due
    ([5.0], [None]),                                   # due: tried as if unknown
    ([5.0, 5.1, 9.9], [None, 0.1, 0.1]),               # once, then avoided again
    ([5.0, 10.0], [None, None]),                       # once per interval
])
def test_latency_scorer_retries_an_idle_member(later_s: list[float],
                                               expected: list[float | None]) -> None:
    scorer = LatencyScorer(retry_after_s=5.0)
    idle = member("a", ttft=(1.0, 10))
    scorer.recent(idle, NOW)
    got = [scorer.recent(idle, NOW + dt) for dt in later_s]
    assert got == [None if e is None else pytest.approx(e) for e in expected], got


def test_latency_scorer_retry_waits_for_the_last_sample() -> None:
    scorer = LatencyScorer(retry_after_s=5.0)
    scorer.recent(member("a", ttft=(1.0, 10)), NOW)
    scorer.recent(member("a", ttft=(2.0, 20)), NOW + 4.0)  # a new window at +4 s
    assert scorer.recent(member("a", ttft=(2.0, 20)), NOW + 8.0) is not None
    assert scorer.recent(member("a", ttft=(2.0, 20)), NOW + 9.0) is None


def test_uniform_scorer() -> None:
    assert UniformScorer().score(ctx(), [member("a"), member("b")]) == [1.0, 1.0]


def _pool(members: list[MemberState]) -> PoolState:
    return PoolState(name="p", partition="Common", engine_type="vllm", source="pd",
                     members={m.key: m for m in members}, fetched_at=NOW)


@pytest.mark.parametrize(("weights", "members", "expected"), [
    # load dominates by default: the idle member wins despite a fuller KV cache
    (WeightedConfig(), [member("a", inflight=3, kv=0.1), member("b", kv=0.6)], "b"),
    # KV only: the emptier cache wins despite more requests in flight
    (WeightedConfig(load_weight=0, kv_cache_weight=1, latency_weight=0),
     [member("a", inflight=3, kv=0.1), member("b", kv=0.6)], "a"),
    # latency only: the faster member (recent mean TTFT) wins
    (WeightedConfig(load_weight=0, kv_cache_weight=0, latency_weight=1),
     [member("a", ttft=(5.0, 10)), member("b", inflight=4, ttft=(1.0, 10))], "b"),
    # stale metrics: in-flight counts still route (fails open)
    (WeightedConfig(), [member("a", inflight=2, age=60), member("b", inflight=0, age=60)],
     "b"),
])
def test_weighted_profile_choices(weights: WeightedConfig, members: list[MemberState],
                                  expected: str) -> None:
    profile = build_profile(default_registry(), ModeConfig(name="w", type="weighted",
                                                           weighted=weights), FallbackConfig())
    pool = _pool(members)
    decision = decide(pool, list(pool.members), profile, ctx(), pool_fallback=False)
    assert decision.answer == expected, decision


def test_round_robin_profile_takes_turns_whatever_the_load() -> None:
    profile = build_profile(default_registry(), ModeConfig(name="rr", type="round_robin"),
                            FallbackConfig())
    pool = _pool([member("a", inflight=50), member("b"), member("c", age=None, q=None)])
    answers = [decide(pool, list(pool.members), profile, ctx(), pool_fallback=False).answer
               for _ in range(6)]
    assert answers == ["a", "b", "c", "a", "b", "c"]


def test_round_robin_profile_honours_the_threshold_filter() -> None:
    profile = build_profile(default_registry(), ModeConfig(name="rr", type="round_robin"),
                            FallbackConfig(member_waiting_queue_threshold=5))
    pool = _pool([member("a", q=9), member("b")])
    answers = {decide(pool, list(pool.members), profile, ctx(), pool_fallback=False).answer
               for _ in range(4)}
    assert answers == {"b"}
