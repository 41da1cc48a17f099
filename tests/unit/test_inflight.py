"""The fleet-wide in-flight tracker: selections add, outcomes remove, expiry cleans."""

from __future__ import annotations

from shared.scheduling.inflight import InflightTracker

A = ("pool", "Common", "10.0.0.1:8000")
B = ("pool", "Common", "10.0.0.2:8000")


def test_add_and_done_count_per_member() -> None:
    t = InflightTracker()
    assert t.add("r1", A, now=0, ttl_s=10)
    assert t.add("r2", A, now=0, ttl_s=10)
    assert t.add("r3", B, now=0, ttl_s=10)
    assert (t.count(A), t.count(B)) == (2, 1)
    assert t.done("r1", now=1) is not None
    assert (t.count(A), t.count(B)) == (1, 1)
    assert t.counts_for_pool("pool", "Common") == {A[2]: 1, B[2]: 1}


def test_duplicate_selection_counts_once() -> None:
    t = InflightTracker()
    assert t.add("r1", A, now=0, ttl_s=10)
    assert not t.add("r1", A, now=0, ttl_s=10)
    assert t.count(A) == 1


def test_outcome_before_selection_is_not_counted_later() -> None:
    t = InflightTracker()
    assert t.done("r1", now=0) is None
    assert not t.add("r1", A, now=0.1, ttl_s=10), "a request already done must not count"
    assert t.count(A) == 0


def test_lost_outcomes_expire() -> None:
    t = InflightTracker()
    for i in range(5):
        t.add(f"r{i}", A, now=i, ttl_s=10)
    assert t.expire(now=12) == [A, A, A]  # r0 (10), r1 (11), r2 (12)
    assert t.count(A) == 2
    assert t.expired_total == 3
    assert t.done("r3", now=12) is not None
    assert t.expire(now=100) == [A]
    assert t.count(A) == 0 and len(t) == 0


def test_done_oldest_without_request_id() -> None:
    t = InflightTracker()
    t.add("late", A, now=5, ttl_s=10)
    t.add("early", A, now=1, ttl_s=10)
    entry = t.done_oldest(A)
    assert entry is not None and entry.request_id == "early"
    assert t.count(A) == 1
    assert t.done_oldest(B) is None


def test_forget_member() -> None:
    t = InflightTracker()
    t.add("r1", A, now=0, ttl_s=10)
    t.add("r2", B, now=0, ttl_s=10)
    assert t.forget_member(A) == 1
    assert t.count(A) == 0 and t.count(B) == 1
    assert t.expire(now=20) == [B]  # the forgotten entry's heap item is skipped
