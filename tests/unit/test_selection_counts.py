"""A pool's selection counts: fleet totals plus what this replica has not flushed yet."""

from __future__ import annotations

from shared.messages import MemberInfo, PoolSnapshot
from shared.scheduling.view import ClusterView, SelectionCounts


def test_unknown_fleet_shows_this_replica_alone() -> None:
    counts = SelectionCounts(local={"a": 3, "none": 1})
    assert counts.totals() == ({"a": 3, "none": 1}, "replica")


def test_fleet_totals_plus_pending() -> None:
    counts = SelectionCounts(local={"a": 5, "b": 2}, flushed={"a": 3, "b": 2},
                             fleet={"a": 10, "b": 7, "fallback": 4})
    assert counts.pending() == {"a": 2}
    assert counts.totals() == ({"a": 12, "b": 7, "fallback": 4}, "fleet")


def snapshot(at: float, *keys: str) -> PoolSnapshot:
    return PoolSnapshot(pool="p", partition="Common", engine_type="vllm", source="static",
                        fetched_at=at, members=[MemberInfo(key=k, host="h", port=1) for k in keys])


def test_counts_survive_membership_changes() -> None:
    view = ClusterView()
    pool = view.apply_snapshot(snapshot(1.0, "a"))
    pool.count("a")
    pool.count("none")
    pool.counts.flushed, pool.counts.fleet = {"a": 1}, {"a": 4}
    changed = view.apply_snapshot(snapshot(2.0, "a", "b"))
    changed.count("b")
    assert changed is not pool and changed.counts is pool.counts
    assert changed.counts.totals() == ({"a": 4, "none": 1, "b": 1}, "fleet")
