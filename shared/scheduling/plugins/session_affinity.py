"""Scorer ``session``: one session's requests to one member, by consistent hashing with
bounded loads (Mirrokni, Thorup, Zadimoghaddam 2018).

Every member owns ``vnodes`` points on a 64-bit ring (BLAKE2b of ``member#i``). A session
hashes to a point and walks clockwise to the first member that is a candidate now (not
guarded, awake) and whose in-flight count is under ``load_bound`` × the candidates' mean
(counting this request) + 1. The ring is built from the pool's members, not from the
candidates: a member leaving moves only the sessions it owned, and a busy member hands its
sessions on only while busy.
Small and dependency-free: the PyPI rings (uhashring, hash_ring) have no bounded loads.
"""

from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass, field

from shared.prefix_config import SessionConfig
from shared.scheduling.plugins.base import DecisionContext
from shared.scheduling.view import MemberState


def _point(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class HashRing:
    """Points of every member on the ring, sorted."""

    def __init__(self, members: list[str], vnodes: int) -> None:
        points = sorted((_point(f"{m}#{i}"), m) for m in members for i in range(vnodes))
        self.points = [p for p, _m in points]
        self.owners = [m for _p, m in points]

    def walk(self, key: str) -> list[str]:
        """Members in ring order from ``key``'s point, each once."""
        if not self.points:
            return []
        start = bisect.bisect(self.points, _point(key)) % len(self.points)
        seen: dict[str, None] = {}
        n = len(self.owners)
        for i in range(n):
            seen.setdefault(self.owners[(start + i) % n], None)
        return list(seen)


def session_member(ring: HashRing, session: str, loads: dict[str, int],
                   load_bound: float) -> str | None:
    """The member that takes ``session`` among ``loads``' keys (the candidates)."""
    if not loads:
        return None
    # One request of slack: in a quiet pool a session does not move for a single request.
    cap = load_bound * (sum(loads.values()) + 1) / len(loads) + 1
    first = None
    for member in ring.walk(session):
        if member not in loads:
            continue
        if first is None:
            first = member
        if loads[member] < cap:
            return member
    return first


@dataclass(slots=True)
class SessionScorer:
    """1 for the session's member, 0 for the others; no opinion without a session."""

    settings: SessionConfig
    name: str = "session"
    _rings: dict[tuple[str, ...], HashRing] = field(default_factory=dict)

    def ring(self, members: tuple[str, ...]) -> HashRing:
        ring = self._rings.get(members)
        if ring is None:
            if len(self._rings) > 16:
                self._rings.clear()
            ring = self._rings[members] = HashRing(list(members), self.settings.vnodes)
        return ring

    def score(self, ctx: DecisionContext, members: list[MemberState]) -> list[float | None]:
        session = ctx.keys.session if ctx.keys is not None else ""
        if not session or not members:
            return [None] * len(members)
        ring = self.ring(ctx.pool_members or tuple(sorted(m.key for m in members)))
        chosen = session_member(ring, session, {m.key: m.inflight for m in members},
                                self.settings.load_bound)
        return [1.0 if m.key == chosen else 0.0 for m in members]
