"""Consistent hashing with bounded loads: a leaving member moves only its own sessions."""

from __future__ import annotations

from collections import Counter

from shared.scheduling.plugins.session_affinity import HashRing, session_member

MEMBERS = [f"10.0.0.{i}:8000" for i in range(1, 6)]
SESSIONS = [f"session-{i}" for i in range(3000)]


def owners(members: list[str], loads: dict[str, int] | None = None) -> dict[str, str]:
    ring = HashRing(members, vnodes=64)
    loads = loads if loads is not None else dict.fromkeys(members, 0)
    out = {}
    for s in SESSIONS:
        member = session_member(ring, s, loads, load_bound=1.25)
        assert member is not None
        out[s] = member
    return out


def test_a_leaving_member_moves_only_its_sessions() -> None:
    before = owners(MEMBERS)
    gone = MEMBERS[2]
    after = owners([m for m in MEMBERS if m != gone])
    moved = [s for s in SESSIONS if before[s] != after[s]]
    assert moved, "the leaving member owned sessions"
    assert all(before[s] == gone for s in moved), \
        f"{sum(before[s] != gone for s in moved)} sessions of staying members moved"
    assert len(moved) == sum(1 for s in SESSIONS if before[s] == gone)


def test_a_member_out_of_the_candidates_hands_over_only_its_sessions() -> None:
    ring = HashRing(MEMBERS, vnodes=64)
    everyone = dict.fromkeys(MEMBERS, 0)
    guarded = {m: 0 for m in MEMBERS if m != MEMBERS[0]}
    for s in SESSIONS:
        home = session_member(ring, s, everyone, 1.25)
        now = session_member(ring, s, guarded, 1.25)
        assert home == now or home == MEMBERS[0]


def test_sessions_spread_over_members() -> None:
    counts = Counter(owners(MEMBERS).values())
    assert min(counts.values()) > len(SESSIONS) / len(MEMBERS) / 2, counts


def test_bounded_load_passes_a_busy_member_by() -> None:
    ring = HashRing(MEMBERS, vnodes=64)
    idle = dict.fromkeys(MEMBERS, 0)
    home = session_member(ring, "s-1", idle, 1.25)
    assert home is not None
    busy = {**idle, home: 5}  # cap = 1.25 * (5 + 1) / 5 + 1 = 2.5
    other = session_member(ring, "s-1", busy, 1.25)
    assert other is not None and other != home
    assert session_member(ring, "s-1", {**busy, home: 1}, 1.25) == home
