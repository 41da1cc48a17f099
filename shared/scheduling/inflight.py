"""Fleet-wide in-flight requests per member: selections add, outcomes remove, expiry cleans.

Every scheduler replica applies the same selection and outcome events, so each holds
the same counts. A request whose outcome is never reported (a lost event, an F5 path
without outcome reports, a crashed API) leaves at its expiry instead of counting forever.

An F5 outcome report carries no request id and comes at the engine's response headers,
which a streaming engine sends at once: the request has only started. Such a report marks
the member's oldest select *reported*; it keeps counting until a metrics scrape of the
member taken after the report (the engine's own running/waiting figures then hold it),
or, when no scrape comes (failing metrics), for the pool's staleness window. Every
replica applies the same reports and scrapes, so all agree.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass

MemberIdent = tuple[str, str, str]
"""(pool, partition, member key)."""

EARLY_DONE_TTL_S = 60.0
"""How long an outcome that arrived before its selection is remembered."""

SCRAPE_MARGIN_S = 0.05
"""A reported request leaves the count at the first scrape taken at least this long after
its report: the engine may add a request just after sending its headers, a scrape's time
is when its answer arrived, and the API's and the collector's clocks may differ a little."""


@dataclass(slots=True)
class InflightEntry:
    """One routed request still counted as in flight."""

    request_id: str
    member: MemberIdent
    started_at: float
    expires_at: float
    reported_at: float | None = None
    """When an outcome report without request id named it (it counts until a scrape)."""


class InflightTracker:
    """Counts per member with O(log n) add/expiry and O(1) lookups; no I/O."""

    def __init__(self) -> None:
        self._entries: dict[str, InflightEntry] = {}
        self._counts: dict[MemberIdent, int] = {}
        self._expiry: list[tuple[float, str]] = []
        self._done_early: dict[str, float] = {}
        self._reported: dict[tuple[str, str], dict[str, deque[InflightEntry]]] = {}
        """(pool, partition) → member key → reported entries, in the order of their reports."""
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
        if entry.reported_at is not None:
            self._unlist(entry.member, entry)
        return entry

    def done_oldest(self, member: MemberIdent) -> InflightEntry | None:
        """Finish the oldest unreported request of ``member`` (a failed report without id)."""
        oldest = self._oldest_unreported(member)
        if oldest is not None:
            del self._entries[oldest.request_id]
            self._drop(member)
        return oldest

    def report_oldest(self, member: MemberIdent, at: float) -> InflightEntry | None:
        """Mark the oldest unreported request of ``member`` reported at ``at``; it keeps
        counting until :meth:`settle` sees a scrape of the member taken after ``at``."""
        oldest = self._oldest_unreported(member)
        if oldest is not None:
            oldest.reported_at = at
            pool = self._reported.setdefault((member[0], member[1]), {})
            pool.setdefault(member[2], deque()).append(oldest)
        return oldest

    def _oldest_unreported(self, member: MemberIdent) -> InflightEntry | None:
        oldest: InflightEntry | None = None
        for entry in self._entries.values():
            if (entry.member == member and entry.reported_at is None
                    and (oldest is None or entry.started_at < oldest.started_at)):
                oldest = entry
        return oldest

    def reported(self, pool: str, partition: str) -> dict[str, deque[InflightEntry]]:
        """Member key → reported requests still counted, for one pool (do not modify)."""
        return self._reported.get((pool, partition), {})

    def reported_pools(self) -> list[tuple[str, str]]:
        """Pools with reported requests still counted."""
        return list(self._reported)

    def settle(self, member: MemberIdent, scraped_at: float | None,
               reported_before: float = float("-inf")) -> int:
        """The reported requests of ``member`` that its scrape taken at ``scraped_at``
        already holds, or that were reported before ``reported_before`` (no scrape came in
        time: the member's metrics fail), leave the count; returns how many left."""
        pool = self._reported.get((member[0], member[1]))
        queue = None if pool is None else pool.get(member[2])
        if pool is None or queue is None:
            return 0
        seen = float("-inf") if scraped_at is None else scraped_at - SCRAPE_MARGIN_S
        left = 0
        while queue:
            entry = queue[0]
            reported_at = entry.reported_at
            if reported_at is not None and reported_at > seen and reported_at >= reported_before:
                break
            queue.popleft()
            del self._entries[entry.request_id]
            self._drop(member)
            left += 1
        if not queue:
            self._unlist(member)
        return left

    def _unlist(self, member: MemberIdent, entry: InflightEntry | None = None) -> None:
        """Take ``entry`` (None: every entry) of ``member`` off the reported lists."""
        pool = self._reported.get((member[0], member[1]))
        if pool is None:
            return
        queue = pool.get(member[2])
        if queue is not None and entry is not None:
            queue.remove(entry)
        if queue is not None and (entry is None or not queue):
            del pool[member[2]]
        if not pool:
            del self._reported[(member[0], member[1])]

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
            if entry.reported_at is not None:
                self._unlist(entry.member, entry)
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
        self._unlist(member)
        return len(gone)
