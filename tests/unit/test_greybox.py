"""Table-driven tests of the greybox layers: guard, predictor, scorer, breaker, admission order."""

from __future__ import annotations

import math
import random

import pytest

from services.api.gateway.admission import next_to_serve
from shared.config import CircuitConfig, FallbackConfig, GreyboxConfig, ModeConfig
from shared.messages import MemberInfo, MemberMetrics, PoolSnapshot
from shared.routing import OutcomeEvent
from shared.scheduling.decide import decide
from shared.scheduling.feedback import Feedback
from shared.scheduling.plugins.base import DecisionContext
from shared.scheduling.plugins.greybox_scorer import GreyboxScorer
from shared.scheduling.plugins.guard import GuardFilter, guard_reason, inflight_limit
from shared.scheduling.plugins.registry import build_profile, default_registry
from shared.scheduling.predictor import PredictorSettings, TtftPredictor, features
from shared.scheduling.view import CAP_PROBE_SCRAPES, ClusterView, MemberState, PoolState

NOW = 1000.0


def member(key: str, *, inflight: int = 0, q: float = 0, r: float = 0, kv: float = 0.0,
           age: float = 0.0, cap: float = 0.0, hint: int = 0) -> MemberState:
    m = MemberState(key=key, host=key, port=1, available=True, waiting_queue=q, running_req=r,
                    cache_usage=kv, metrics_at=NOW - age, inflight=inflight, running_cap=cap,
                    capacity_hint=hint)
    return m


def ctx(predictor: TtftPredictor | None = None, prompt: float = 100) -> DecisionContext:
    return DecisionContext(pool="p", partition="Common", now=NOW, stale_after_s=3.0,
                           rng=random.Random(1), debug=True, prompt_tokens=prompt,
                           predictor=predictor)


@pytest.mark.parametrize(("settings", "m", "limit"), [
    (GreyboxConfig(), member("a"), 8),                                 # nothing known: default
    (GreyboxConfig(), member("a", cap=4), 4),                          # learned batch size
    (GreyboxConfig(), member("a", cap=4, hint=6), 6),                  # registered capacity
    (GreyboxConfig(max_inflight=3), member("a", cap=4, hint=6), 3),    # configured wins
    (GreyboxConfig(inflight_limit_factor=1.5), member("a", cap=4), 6),
])
def test_inflight_limit(settings: GreyboxConfig, m: MemberState, limit: float) -> None:
    assert inflight_limit(m, settings) == limit


@pytest.mark.parametrize(("settings", "m", "guarded"), [
    (GreyboxConfig(max_inflight=2), member("a", inflight=1), None),
    (GreyboxConfig(max_inflight=2), member("a", inflight=2), "in flight 2 >= limit 2"),
    (GreyboxConfig(max_waiting=3), member("a", q=4), "waiting 4 > 3"),
    (GreyboxConfig(max_waiting=3), member("a", q=4, age=60), None),    # stale: in-flight only
    (GreyboxConfig(max_waiting=3, stale_policy="exclude"), member("a", age=60),
     "metrics stale"),
    (GreyboxConfig(), member("a", kv=0.99), "KV usage 0.99 (resumes below 0.9)"),
])
def test_guard_reasons(settings: GreyboxConfig, m: MemberState, guarded: str | None) -> None:
    assert guard_reason(m, ctx(), settings) == guarded


def test_kv_guard_has_hysteresis() -> None:
    m = member("a", kv=0.99)
    s = GreyboxConfig()
    assert guard_reason(m, ctx(), s) is not None
    m.cache_usage = 0.95  # below the limit but above the resume level: still guarded
    assert guard_reason(m, ctx(), s) is not None
    m.cache_usage = 0.85
    assert guard_reason(m, ctx(), s) is None


def test_circuit_open_half_open_closed() -> None:
    view = ClusterView()
    view.apply_snapshot(PoolSnapshot(pool="p", partition="Common", engine_type="vllm",
                                     source="t", fetched_at=0.0,
                                     members=[MemberInfo(key="a", host="a", port=1)]))
    clock = [NOW]
    fb = Feedback(view, lambda: clock[0])
    fb.configure(("p", "Common"), None, CircuitConfig(failures=3, successes=2, open_s=10))
    m = view.pools[("p", "Common")].members["a"]
    settings = GreyboxConfig()

    def outcome(status: int) -> None:
        fb.outcome(OutcomeEvent(request_id="", pool="p", partition="Common", member="a",
                                status=status))

    for _ in range(3):
        outcome(502)
    assert m.circuit == "open", m
    assert "circuit open" in (guard_reason(m, ctx(), settings) or "")
    clock[0] = NOW + 11
    c = DecisionContext(pool="p", partition="Common", now=clock[0], stale_after_s=1e9,
                        rng=random.Random(1))
    assert guard_reason(m, c, settings) is None and m.circuit == "half_open"
    outcome(0)  # the trial failed: open again
    assert m.circuit == "open"
    clock[0] = NOW + 30
    c.now = clock[0]
    assert guard_reason(m, c, settings) is None
    outcome(200)
    outcome(200)
    assert m.circuit == "closed"


def test_predictor_learns_each_members_speed() -> None:
    p = TtftPredictor(PredictorSettings(min_samples=10))
    fast, slow = ("p", "c", "fast"), ("p", "c", "slow")
    rng = random.Random(0)
    for _ in range(200):
        prompt = rng.randint(50, 2000)
        running = rng.randint(0, 3)
        x = features(running, running, 0, 0.1, prompt)
        p.learn(fast, x, 0.01 + prompt * 0.00002)
        p.learn(slow, x, 0.04 + prompt * 0.00008)
    x = features(1, 1, 0, 0.1, 800)
    f_ttft, f_ok = p.predict(fast, x)
    s_ttft, s_ok = p.predict(slow, x)
    assert f_ok and s_ok
    assert 2.5 < s_ttft / f_ttft < 6, (f_ttft, s_ttft)
    assert p.predict(("p", "c", "new"), x) == (p.predict(("p", "c", "new"), x)[0], False)
    assert math.isnan(p.predict(("p", "c", "new"), x)[0])


def _trained(keys: list[str], ttft: dict[str, float]) -> TtftPredictor:
    p = TtftPredictor(PredictorSettings(min_samples=5))
    for key in keys:
        for i in range(20):
            p.learn(("p", "Common", key), features(i % 3, i % 3, 0, 0.1, 100), ttft[key])
    return p


@pytest.mark.parametrize(("inflight", "ttft", "low_zone", "best"), [
    # the predictor prefers the faster member
    ({"a": 1, "b": 1}, {"a": 0.2, "b": 0.05}, -1, ["b"]),
    # low zone: someone is idle, least load decides (the idle one)
    ({"a": 0, "b": 2}, {"a": 0.2, "b": 0.05}, 0, ["a"]),
    # near-equal predictions: either (no herding onto one)
    ({"a": 1, "b": 1}, {"a": 0.100, "b": 0.101}, -1, ["a", "b"]),
])
def test_greybox_scorer_and_picker(inflight: dict[str, int], ttft: dict[str, float],
                                   low_zone: int, best: list[str]) -> None:
    settings = GreyboxConfig(low_zone_inflight=low_zone)
    members = [member(k, inflight=n, r=n) for k, n in inflight.items()]
    c = ctx(_trained(list(inflight), ttft))
    scores = [s or 0.0 for s in GreyboxScorer(settings).score(c, members)]
    top = max(scores)
    chosen = {m.key for m, s in zip(members, scores, strict=True) if s >= top - 0.05}
    assert chosen == set(best), (scores, best)


def test_untrusted_predictor_falls_back_to_least_load() -> None:
    members = [member("a", inflight=3), member("b", inflight=1)]
    scores = GreyboxScorer(GreyboxConfig()).score(ctx(TtftPredictor()), members)
    assert scores[1] is not None and scores[0] is not None and scores[1] > scores[0]


def test_all_guarded_answers_busy_only_with_admission() -> None:
    registry = default_registry()
    members = {k: member(k, inflight=2) for k in ("a", "b")}
    pool = PoolState(name="p", partition="Common", engine_type="vllm", source="t",
                     members=members, fetched_at=NOW)
    for admission, answer in ((True, "busy"), (False, "none")):
        mode = ModeConfig(name="g", type="greybox",
                          greybox=GreyboxConfig(max_inflight=2, admission=admission))
        profile = build_profile(registry, mode, FallbackConfig())
        assert isinstance(profile.filters[1], GuardFilter)
        got = decide(pool, ["a", "b"], profile, ctx(), pool_fallback=False)
        assert got.answer == answer, got


def test_batch_size_learned_from_repeated_waits() -> None:
    m = member("a")
    m.running_req = None

    def scrape(running: float, waiting: float) -> None:
        m.apply(MemberMetrics(key="a", scraped_at=(m.last_scrape_at or 0) + 1, ok=True,
                              waiting_queue=waiting, running_req=running, cache_usage=0.1))

    scrape(1, 1)
    scrape(1, 1)
    assert m.running_cap == 0, "a wait at one running request teaches nothing"
    scrape(4, 2)
    assert m.running_cap == 0, "one wait is not enough"
    scrape(4, 3)
    assert m.running_cap == 4 and m.cap_confirmed


def test_batch_size_learned_too_low_recovers() -> None:
    """Two waits at 2 running (long prefills filling a step's token budget) confirm a size
    of 2 on an engine that runs 4; the guard then never sends a third request, so the
    member probes above it after CAP_PROBE_SCRAPES quiet scrapes and climbs back."""
    m = member("a")

    def scrape(running: float, waiting: float) -> None:
        m.apply(MemberMetrics(key="a", scraped_at=(m.last_scrape_at or 0) + 1, ok=True,
                              waiting_queue=waiting, running_req=running, cache_usage=0.1))

    scrape(2, 1)
    scrape(2, 1)
    assert (m.running_cap, m.cap_confirmed) == (2, True)
    for i in range(CAP_PROBE_SCRAPES - 1):
        scrape(2, 0)
        assert m.running_cap == 2, f"probed after {i + 1} quiet scrapes"
    scrape(1, 0)  # below the size: the count starts over
    for _ in range(CAP_PROBE_SCRAPES - 1):
        scrape(2, 0)
    assert m.running_cap == 2
    scrape(2, 0)
    assert (m.running_cap, m.cap_confirmed) == (3, False), "probe one above"
    scrape(3, 0)
    assert m.running_cap == 4, "unconfirmed: it runs all it gets, so it may take more"
    scrape(4, 0)
    scrape(4, 1)
    scrape(4, 1)
    assert (m.running_cap, m.cap_confirmed) == (4, True), "the real batch size"


@pytest.mark.parametrize(("arrivals", "now", "slo", "max_wait", "position"), [
    ([0.0, 1.0, 2.0], 2.05, None, 1.0, 0),     # FIFO without a target
    ([1.99, 2.0], 2.05, 0.133, 1.0, 0),        # both can still make it: the oldest
    ([1.0, 2.0], 2.05, 0.133, 5.0, 1),         # the oldest cannot: the one that can
    ([0.0, 2.0], 2.05, 0.133, 1.0, 0),         # the oldest waited past max_wait: it goes
    ([1.0, 1.5], 2.05, 0.133, 5.0, 0),         # nobody can: the oldest
])
def test_admission_order(arrivals: list[float], now: float, slo: float | None,
                         max_wait: float, position: int) -> None:
    assert next_to_serve(arrivals, now, slo_s=slo, max_wait_s=max_wait) == position
