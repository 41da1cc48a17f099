"""Rendezvous hashing of pools over collectors: one owner each, balanced, minimal moves."""

from __future__ import annotations

import pytest

from services.collector.rendezvous import owned_by, owner

POOLS = [(f"pool-{i}", "Common") for i in range(600)]
COLLECTORS = ["host-a-101-aaaaaa", "host-b-202-bbbbbb", "host-c-303-cccccc"]


def test_every_pool_has_exactly_one_owner_and_the_shares_are_balanced() -> None:
    shares = [owned_by(c, POOLS, COLLECTORS) for c in COLLECTORS]
    assert sum(len(s) for s in shares) == len(POOLS)
    assert set().union(*shares) == set(POOLS)
    for share in shares:  # 200 each on average; a hash this poor would be a bug
        assert 140 <= len(share) <= 260, [len(s) for s in shares]


def test_the_answer_does_not_depend_on_order_or_process() -> None:
    assert {p: owner(p, COLLECTORS) for p in POOLS} == {
        p: owner(p, list(reversed(COLLECTORS))) for p in POOLS}
    assert owner(("pool-0", "Common"), COLLECTORS) == owner(("pool-0", "Common"),
                                                            sorted(COLLECTORS))


def test_a_collector_leaving_moves_only_its_own_pools() -> None:
    before = {p: owner(p, COLLECTORS) for p in POOLS}
    after = {p: owner(p, COLLECTORS[:2]) for p in POOLS}
    moved = {p for p in POOLS if before[p] != after[p]}
    assert moved == {p for p in POOLS if before[p] == COLLECTORS[2]}


def test_a_collector_joining_takes_pools_only_for_itself() -> None:
    before = {p: owner(p, COLLECTORS[:2]) for p in POOLS}
    after = {p: owner(p, COLLECTORS) for p in POOLS}
    assert all(after[p] in (before[p], COLLECTORS[2]) for p in POOLS)


@pytest.mark.parametrize("collectors", [[], ["solo"]])
def test_alone_or_with_an_empty_view_a_collector_owns_everything(
        collectors: list[str]) -> None:
    assert owned_by("solo", POOLS, collectors) == set(POOLS)
    assert owner(POOLS[0], []) is None
