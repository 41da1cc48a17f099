"""F5 outcome reports on the select path: a report at the engine's response headers.

The iRule reports at ``HTTP_RESPONSE``; a streaming engine sends its headers at once, so
the report comes milliseconds after the select. It must neither end the select's in-flight
count before a scrape of the engine holds the request (every select between two scrapes
would see nothing in flight and take the same member), nor teach the TTFT predictor a
header time as a TTFT.
"""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from services.api.fastpath import outcome_event
from services.api.validation import decode_outcome
from shared.config import Config, GreyboxConfig, ModeConfig, PoolConfig, SchedulerConfig
from shared.messages import MemberInfo, MemberMetrics, MetricsBatch, PoolSnapshot, SelectRequest
from shared.routing import OutcomeEvent, SelectionEvent
from shared.scheduling.core import SchedulerCore
from shared.scheduling.inflight import SCRAPE_MARGIN_S, InflightTracker
from shared.scheduling.plugins.registry import default_registry

POOL = ("gb", "Common")
KEYS = ["10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000", "10.0.0.4:8000"]
HEADERS_S = dict(zip(KEYS, (0.002, 0.003, 0.004, 0.006), strict=True))
"""Time to the response headers per member: unequal, as unequal engines answer."""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_core(clock: Clock, replica: str = "r1", seed: int = 0) -> SchedulerCore:
    mode = ModeConfig(name="gb", type="greybox", greybox=GreyboxConfig())
    config = Config(scheduler=SchedulerConfig(metrics_fetch_interval=200), modes=[mode],
                    pools=[PoolConfig(name=POOL[0], engine_type="vllm", source="static",
                                      members=KEYS, mode="gb")])
    core = SchedulerCore(config, default_registry(), rng=random.Random(seed), clock=clock,
                         replica=replica)
    core.view.apply_snapshot(PoolSnapshot(
        pool=POOL[0], partition=POOL[1], engine_type="vllm", source="static",
        members=[MemberInfo(key=k, host=k.split(":")[0], port=8000) for k in KEYS],
        fetched_at=clock.now))
    return core


def scrape(core: SchedulerCore, at: float, running: dict[str, float] | None = None) -> None:
    running = running or {}
    core.view.apply_metrics(MetricsBatch(pool=POOL[0], partition=POOL[1], round_started_at=at,
                                         members=[
        MemberMetrics(key=k, scraped_at=at, ok=True, waiting_queue=0.0,
                      running_req=running.get(k, 0.0), cache_usage=0.1) for k in KEYS]))


def select(core: SchedulerCore) -> tuple[str, SelectionEvent | None]:
    decision, event = core.select(SelectRequest(pool_name=POOL[0], partition=POOL[1],
                                                members=KEYS))
    return decision.answer, event


def report(member: str, at: float, status: int = 200, ttft_s: float | None = None,
           **extra: object) -> OutcomeEvent:
    """The event the API publishes for the iRule's report (the real decoding path)."""
    body: dict[str, object] = {"pool_name": POOL[0], "partition": POOL[1], "member": member,
                               "status": status, **extra}
    took = HEADERS_S[member] if ttft_s is None else ttft_s
    body["ttft_ms"] = took * 1000
    return outcome_event(decode_outcome(json.dumps(body).encode()), at)


def inflight(core: SchedulerCore) -> dict[str, int]:
    status = core.pool_status(*POOL)
    assert status is not None
    return {m.key: m.inflight for m in status.members}


def samples(core: SchedulerCore) -> dict[str, int]:
    status = core.pool_status(*POOL)
    assert status is not None
    return {m.key: (m.greybox or {})["model"]["samples"] for m in status.members}


def test_header_reports_between_two_scrapes_spread_instead_of_herding() -> None:
    clock = Clock()
    core = make_core(clock)
    scrape(core, clock.now)
    # A warm-up as the F5 path sees it: each select reported at its headers, a scrape
    # after each (the engines idle, the requests short).
    for _ in range(160):
        clock.now += 0.1
        answer, _ = select(core)
        assert answer in KEYS, answer
        core.apply_outcome(report(answer, clock.now + 0.003))
        scrape(core, clock.now + 0.1)
    assert samples(core) == dict.fromkeys(KEYS, 0), "header times must not train the predictor"

    # Then a burst between two scrapes: each select reported within milliseconds.
    clock.now += 0.1
    scrape(core, clock.now)
    first_report = clock.now + 0.004 + 0.003
    answers: list[str] = []
    for _ in range(24):
        clock.now += 0.004
        answer, _ = select(core)
        answers.append(answer)
        if answer in KEYS:
            core.apply_outcome(report(answer, clock.now + 0.003))
    shares = Counter(answers)
    # Least load picks among members within the picker's tolerance (5 % of the best score
    # 1 / (1 + in flight)): even, give or take a few; never a pile on one member.
    assert set(shares) == set(KEYS) and max(shares.values()) <= 8, \
        f"24 selects between two scrapes: {shares}"
    assert inflight(core) == shares, "reported, but no scrape holds them yet"

    # A scrape taken when the reports came does not end them (the engine may not hold
    # them yet) ...
    running = {k: float(n) for k, n in shares.items()}
    scrape(core, first_report, running=running)
    assert inflight(core) == shares
    # ... the first one after them does: the engine's running count holds them now.
    clock.now += SCRAPE_MARGIN_S + 0.01
    scrape(core, clock.now, running=running)
    assert inflight(core) == dict.fromkeys(KEYS, 0)


@pytest.mark.parametrize(("extra", "status", "counted", "learned"), [
    ({}, 200, 1, 0),                                  # the shipped iRule: headers
    ({"ttft_at": "headers"}, 200, 1, 0),
    ({"ttft_at": "first_token"}, 200, 1, 1),          # a real TTFT teaches
    ({"ttft_at": "first_token"}, 503, 0, 0),          # a failure: over at once, no lesson
    ({}, 0, 0, 0),                                    # no answer at all
])
def test_what_a_report_does(extra: dict[str, str], status: int, counted: int,
                            learned: int) -> None:
    clock = Clock()
    core = make_core(clock)
    scrape(core, clock.now)
    answer, _ = select(core)
    core.apply_outcome(report(answer, clock.now + 0.002, status, 0.25, **extra))
    assert inflight(core)[answer] == counted
    assert samples(core)[answer] == learned
    clock.now += 0.2
    scrape(core, clock.now)
    assert inflight(core)[answer] == 0


def test_without_scrapes_a_reported_select_leaves_after_the_staleness_window() -> None:
    """A member whose metrics fail is routed on in-flight counts: its reported selects must
    not pile up until their TTL (traffic would drain away from it)."""
    clock = Clock()
    core = make_core(clock)
    scrape(core, clock.now)
    answer, _ = select(core)
    core.apply_outcome(report(answer, clock.now + 0.002))
    window = core.config.stale_after_s(len(KEYS))
    clock.now += window / 2
    assert core.expire_inflight() == 0 and inflight(core)[answer] == 1
    clock.now += window
    core.expire_inflight()
    assert inflight(core)[answer] == 0


def test_gateway_outcomes_are_unchanged() -> None:
    """An outcome with a request id (the gateway's, at the first token) ends it at once."""
    clock = Clock()
    core = make_core(clock)
    scrape(core, clock.now)
    answer, event = select(core)
    assert event is not None
    core.apply_outcome(OutcomeEvent(request_id=event.request_id, pool=POOL[0],
                                    partition=POOL[1], member=answer, status=200,
                                    ttft_s=0.4, at=clock.now + 0.4))
    assert inflight(core)[answer] == 0
    assert samples(core)[answer] == 1


def test_replicas_agree_whatever_order_scrapes_and_reports_arrive_in() -> None:
    clock = Clock()
    a, b = make_core(clock, "a"), make_core(clock, "b")
    scrape(a, clock.now)
    scrape(b, clock.now)
    events = []
    for _ in range(8):
        clock.now += 0.005
        answer, event = select(a)
        assert event is not None
        b.apply_selection(event)
        events.append(report(answer, clock.now + 0.002))
    after = clock.now + SCRAPE_MARGIN_S + 0.05
    # a: the reports, then the scrape; b: the scrape arrives before the reports.
    for e in events:
        a.apply_outcome(e)
    assert sum(inflight(a).values()) == 8
    scrape(a, after)
    scrape(b, after)
    for e in events:
        b.apply_outcome(e)
    assert inflight(a) == inflight(b) == dict.fromkeys(KEYS, 0)


def test_tracker_reported_entries() -> None:
    m = ("p", "Common", "a")
    t = InflightTracker()
    t.add("r1", m, now=0, ttl_s=10)
    t.add("r2", m, now=1, ttl_s=10)
    t.add("r3", m, now=2, ttl_s=5)
    first = t.report_oldest(m, at=3)
    second = t.report_oldest(m, at=4)
    assert (first and first.request_id, second and second.request_id) == ("r1", "r2")
    assert t.count(m) == 3, "reported entries still count"
    assert t.settle(m, scraped_at=3 + SCRAPE_MARGIN_S) == 1
    assert t.count(m) == 2 and "r1" not in t and "r2" in t
    third = t.report_oldest(m, at=5)
    assert third is not None and third.request_id == "r3"
    assert t.expire(now=7) == [m], "a reported entry still expires"
    assert t.report_oldest(m, at=8) is None, "nothing unreported left"
    assert t.settle(m, scraped_at=100) == 1 and t.count(m) == 0 and len(t) == 0
    assert t.reported_pools() == []
    t.add("r4", m, now=10, ttl_s=10)
    t.report_oldest(m, at=11)
    assert t.settle(m, scraped_at=None, reported_before=11) == 0, "not waited long enough"
    assert t.settle(m, scraped_at=None, reported_before=11.5) == 1, "no scrape came in time"
    assert t.count(m) == 0 and t.reported_pools() == []


def test_selects_the_engine_shows_leave_the_count_but_not_the_load() -> None:
    """Once scrapes hold the reported selects, the engines' running counts are the load:
    the select path must not see busy engines as idle ones."""
    clock = Clock()
    core = make_core(clock)
    busy = {KEYS[0]: 6.0, KEYS[1]: 6.0, KEYS[2]: 6.0, KEYS[3]: 0.0}
    scrape(core, clock.now, running=busy)
    assert inflight(core) == dict.fromkeys(KEYS, 0)
    answers: Counter[str] = Counter()
    for _ in range(3):  # three selects between two scrapes: in flight counts on top
        clock.now += 0.01
        answer, _ = select(core)
        answers[answer] += 1
    assert answers == {KEYS[3]: 3}, f"the idle engine should take them: {answers}"
    clock.now += 0.01
    answer, _ = select(core)
    # 3 in flight there now, against 6 running elsewhere: still the least loaded.
    assert answer == KEYS[3], answer
