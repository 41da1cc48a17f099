"""Fleet-wide in-flight requests per member: selections add, outcomes remove, expiry cleans.

Every scheduler replica applies the same selection and outcome events, so each holds
the same counts. A request whose outcome is never reported (a lost event, an F5 path
without outcome reports, a crashed API) leaves at its expiry instead of counting forever.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

MemberIdent = tuple[str, str, str]
"""(pool, partition, member key)."""

EARLY_DONE_TTL_S = 60.0
"""How long an outcome that arrived before its selection is remembered."""


@dataclass(slots=True)
class InflightEntry:
    """One routed request still counted as in flight."""

    request_id: str
    member: MemberIdent
    started_at: float
    expires_at: float


class InflightTracker:
    """Counts per member with O(log n) add/expiry and O(1) lookups; no I/O."""

    def __init__(self) -> None:
        self._entries: dict[str, InflightEntry] = {}
        self._counts: dict[MemberIdent, int] = {}
        self._expiry: list[tuple[float, str]] = []
        self._done_early: dict[str, float] = {}
        self.expired_total = 0
        """Requests that left by expiry rather than by an outcome (lost outcome events)."""

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._entries

    def add(self, request_id: str, member: MemberIdent, now: float, ttl_s: float) -> bool:
        """Count a routed request; False when already known or already reported done."""
        if request_id in self._entries:
            return False
        if self._done_early.pop(request_id, None) is not None:
            return False
        entry = InflightEntry(request_id, member, now, now + ttl_s)
        self._entries[request_id] = entry
        self._counts[member] = self._counts.get(member, 0) + 1
        heapq.heappush(self._expiry, (entry.expires_at, request_id))
        return True

    def done(self, request_id: str, now: float) -> InflightEntry | None:
        """The request finished; None when it was unknown (its selection may still come)."""
        entry = self._entries.pop(request_id, None)
        if entry is None:
            self._done_early[request_id] = now + EARLY_DONE_TTL_S
            return None
        self._drop(entry.member)
        return entry

    def done_oldest(self, member: MemberIdent) -> InflightEntry | None:
        """Finish the oldest request of ``member`` (outcome reports that carry no request id)."""
        oldest: InflightEntry | None = None
        for entry in self._entries.values():
            if entry.member == member and (oldest is None or entry.started_at < oldest.started_at):
                oldest = entry
        if oldest is not None:
            del self._entries[oldest.request_id]
            self._drop(member)
        return oldest

    def _drop(self, member: MemberIdent) -> None:
        left = self._counts.get(member, 0) - 1
        if left > 0:
            self._counts[member] = left
        else:
            self._counts.pop(member, None)

    def expire(self, now: float) -> list[MemberIdent]:
        """Drop entries past their expiry; returns the member of each dropped entry."""
        dropped: list[MemberIdent] = []
        heap = self._expiry
        while heap and heap[0][0] <= now:
            _at, request_id = heapq.heappop(heap)
            entry = self._entries.get(request_id)
            if entry is None or entry.expires_at > now:
                continue  # already done (stale heap item)
            del self._entries[request_id]
            self._drop(entry.member)
            dropped.append(entry.member)
        self.expired_total += len(dropped)
        if self._done_early:
            self._done_early = {k: v for k, v in self._done_early.items() if v > now}
        if len(heap) > 4 * len(self._entries) + 64:
            self._expiry = [(e.expires_at, e.request_id) for e in self._entries.values()]
            heapq.heapify(self._expiry)
        return dropped

    def count(self, member: MemberIdent) -> int:
        """Requests in flight on ``member`` as the whole fleet of routers sees them."""
        return self._counts.get(member, 0)

    def counts_for_pool(self, pool: str, partition: str) -> dict[str, int]:
        """Member key → in-flight count, for one pool."""
        return {key: n for (p, part, key), n in self._counts.items()
                if p == pool and part == partition}

    def forget_member(self, member: MemberIdent) -> int:
        """Drop every entry of a member that left its pool; returns how many."""
        gone = [rid for rid, e in self._entries.items() if e.member == member]
        for rid in gone:
            del self._entries[rid]
        self._counts.pop(member, None)
        return len(gone)
