"""The scheduler replica's in-memory view of pools, members and their latest metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from shared.members import url_host
from shared.messages import MemberInfo, MemberMetrics, MetricsBatch, PoolSnapshot

ITL_SMOOTHING = 0.3
"""Weight of the newest scrape in a member's inter-token latency average."""
CAP_PROBE_SCRAPES = 10
"""Scrapes in a row at a confirmed batch size with nobody waiting before probing one
above it (a size learned too low would otherwise hold the member below its capacity for
good)."""


@dataclass(slots=True)
class MemberState:
    """One member: membership facts plus the last good metrics and the last scrape result."""

    key: str
    host: str
    port: int
    available: bool
    waiting_queue: float | None = None
    running_req: float | None = None
    cache_usage: float | None = None
    metrics_at: float | None = None
    """Scrape time of the values above (the last successful scrape)."""
    last_scrape_at: float | None = None
    last_error: str | None = None
    extra: dict[str, float] = field(default_factory=dict)
    asleep: bool = False
    """The engine said it is asleep; it stays out of selection until a scrape says awake."""
    asleep_reason: str | None = None
    inflight: int = 0
    """Requests routed here and not yet finished, as every router replica counts them."""
    capacity_hint: int = 0
    """Concurrent requests the member is known to serve (a registered instance's capacity)."""
    running_cap: float = 0.0
    """The engine's batch size as learned from its metrics (0: not yet known): the running
    count when requests waited in two scrapes in a row (at least 2); until that happens,
    raised by one whenever the engine runs that many and nobody waits."""
    queued_last_scrape: bool = False
    cap_confirmed: bool = False
    """The batch size was seen saturated (requests waited); probing above it only after
    ``CAP_PROBE_SCRAPES`` scrapes at it with nobody waiting."""
    full_quiet_scrapes: int = 0
    """Scrapes in a row at the confirmed batch size with nobody waiting."""
    kv_guarded: bool = False
    """Guarded for KV usage (until it falls below the resume level)."""
    itl_s: float | None = None
    """The engine's recent mean inter-token latency (its decode speed; moving average of
    the ``itl_sum`` / ``itl_count`` counters' growth between scrapes), None until seen."""
    _itl_seen: tuple[float, float] | None = None
    circuit: str = "closed"
    """closed, open (out of routing until ``open_until``) or half_open (one trial at a time)."""
    consecutive_failures: int = 0
    trial_successes: int = 0
    open_until: float = 0.0
    _url: tuple[str, int, str] | None = None

    def base_url(self) -> str:
        """``http://host:port`` (IPv6 bracketed), made once per host and port."""
        cached = self._url
        if cached is None or cached[0] != self.host or cached[1] != self.port:
            cached = self._url = (self.host, self.port,
                                  f"http://{url_host(self.host)}:{self.port}")
        return cached[2]

    def fresh(self, now: float, stale_after_s: float) -> bool:
        """True when the values are present and younger than the staleness window."""
        return (
            self.metrics_at is not None
            and now - self.metrics_at <= stale_after_s
            and self.waiting_queue is not None
            and self.cache_usage is not None
        )

    def exclusion(self) -> str | None:
        """Why selection skips this member, or None when it is a candidate."""
        # Asleep first: a sleeping worker instance is also made unavailable at once, and
        # the operator should read the cause, not its consequence.
        if self.asleep:
            return f"asleep: {self.asleep_reason or 'engine reports sleeping'}"
        if not self.available:
            return "unavailable (down or disabled)"
        return None

    def apply(self, m: MemberMetrics) -> bool:
        """Take a scrape result; True when it changed whether the member is asleep.

        A failure keeps the old values so they age into staleness, and keeps the asleep
        state unless the result still carries a positive signal (from the member's worker):
        an asleep engine stays out until a successful scrape says it is awake.
        """
        if self.last_scrape_at is not None and m.scraped_at < self.last_scrape_at:
            return False
        self.last_scrape_at = m.scraped_at
        was_asleep = self.asleep
        if m.asleep or m.ok:
            self.asleep, self.asleep_reason = m.asleep, m.asleep_reason
        if not m.ok:
            # No error and asleep: not scraped at all (its worker says it sleeps).
            if m.error is not None or not m.asleep:
                self.last_error = m.error or "scrape failed"
            return self.asleep != was_asleep
        self.last_error = None
        self._learn_batch_size(m)
        self.waiting_queue = m.waiting_queue
        self.running_req = m.running_req
        self.cache_usage = m.cache_usage
        self.metrics_at = m.scraped_at
        self.extra = dict(m.extra)
        self._learn_itl(m.extra)
        return self.asleep != was_asleep

    def _learn_itl(self, extra: dict[str, float]) -> None:
        total, count = extra.get("itl_sum"), extra.get("itl_count")
        if total is None or count is None:
            return
        seen, self._itl_seen = self._itl_seen, (total, count)
        if seen is None or count <= seen[1] or total < seen[0]:
            return  # first sight, nothing decoded since, or counters reset (restart)
        sample = (total - seen[0]) / (count - seen[1])
        self.itl_s = sample if self.itl_s is None else (
            ITL_SMOOTHING * sample + (1 - ITL_SMOOTHING) * self.itl_s)

    def _learn_batch_size(self, m: MemberMetrics) -> None:
        running, waiting = m.running_req or 0.0, m.waiting_queue or 0.0
        if waiting > 0:
            self.full_quiet_scrapes = 0
            # Waiting twice in a row at the same running count: that is the batch size (a
            # single wait may only be a step's token budget taken by a long prefill).
            if self.queued_last_scrape and running >= 2 and running == self.running_req:
                if running > self.running_cap or not self.cap_confirmed:
                    self.running_cap = running
                self.cap_confirmed = True
            self.queued_last_scrape = True
            return
        self.queued_last_scrape = False
        if not self.running_cap or running < self.running_cap:
            self.full_quiet_scrapes = 0
            return
        if not self.cap_confirmed:
            self.running_cap = running + 1  # it runs all it was given: it may take more
            return
        # A confirmed size may be too low: two waits in a row at a running count below the
        # batch size happen when long prefills take a step's token budget. The guard then
        # never lets more requests reach the engine, so nothing would ever show a larger
        # batch: after a while at the size with nobody waiting, probe one above it again.
        self.full_quiet_scrapes += 1
        if self.full_quiet_scrapes >= CAP_PROBE_SCRAPES:
            self.running_cap, self.cap_confirmed = running + 1, False
            self.full_quiet_scrapes = 0

    def to_metrics(self) -> MemberMetrics:
        """The last good values, for the durable copy."""
        return MemberMetrics(
            key=self.key, scraped_at=self.metrics_at or 0.0, ok=self.metrics_at is not None,
            error=self.last_error, waiting_queue=self.waiting_queue,
            running_req=self.running_req, cache_usage=self.cache_usage, extra=self.extra,
            asleep=self.asleep, asleep_reason=self.asleep_reason,
        )


@dataclass(slots=True)
class SelectionCounts:
    """A pool's answer counts: this replica's, and the fleet's totals shared through Redis."""

    local: dict[str, int] = field(default_factory=dict)
    """This replica's answers since it started: member keys, ``none``, ``fallback``."""
    flushed: dict[str, int] = field(default_factory=dict)
    """The part of ``local`` already added to the shared totals."""
    fleet: dict[str, int] | None = None
    """The shared totals read back at this replica's last flush (``flushed`` included);
    None while the state store has not answered, or since it failed."""

    def pending(self) -> dict[str, int]:
        """Answers counted here and not yet added to the shared totals."""
        flushed = self.flushed
        return {k: n - flushed.get(k, 0) for k, n in self.local.items() if n != flushed.get(k, 0)}

    def totals(self) -> tuple[dict[str, int], Literal["fleet", "replica"]]:
        """Fleet-wide counts and ``fleet``; this replica's alone and ``replica`` when unknown."""
        if self.fleet is None:
            return dict(self.local), "replica"
        totals = dict(self.fleet)
        for answer, n in self.pending().items():
            totals[answer] = totals.get(answer, 0) + n
        return totals, "fleet"


@dataclass(slots=True)
class PoolState:
    """One pool as this replica knows it."""

    name: str
    partition: str
    engine_type: str
    source: str
    members: dict[str, MemberState]
    fetched_at: float
    stale_since: float | None = None
    source_error: str | None = None
    counts: SelectionCounts = field(default_factory=SelectionCounts)

    def count(self, answer: str) -> None:
        """Count one answer (the select path: a dict increment, nothing more)."""
        local = self.counts.local
        local[answer] = local.get(answer, 0) + 1


class ClusterView:
    """All pools; fed by snapshot and metrics events, read by every decision."""

    def __init__(self) -> None:
        self.pools: dict[tuple[str, str], PoolState] = {}

    def get(self, name: str, partition: str) -> PoolState | None:
        return self.pools.get((name, partition))

    def apply_snapshot(self, snap: PoolSnapshot) -> PoolState:
        """Replace membership, keeping metrics of members that stay."""
        ident = (snap.pool, snap.partition)
        old = self.pools.get(ident)
        if old is not None and snap.fetched_at < old.fetched_at:
            return old  # an older copy (e.g. the warm-up read) never overrides a newer one
        members: dict[str, MemberState] = {}
        for info in snap.members:
            members[info.key] = self._member(info, old.members.get(info.key) if old else None)
        pool = PoolState(
            name=snap.pool, partition=snap.partition, engine_type=snap.engine_type,
            source=snap.source, members=members, fetched_at=snap.fetched_at,
            stale_since=snap.stale_since, source_error=snap.error,
            counts=old.counts if old else SelectionCounts(),
        )
        self.pools[ident] = pool
        return pool

    @staticmethod
    def _member(info: MemberInfo, old: MemberState | None) -> MemberState:
        if old is None:
            return MemberState(key=info.key, host=info.host, port=info.port,
                               available=info.available, capacity_hint=info.capacity)
        old.host, old.port, old.available = info.host, info.port, info.available
        old.capacity_hint = info.capacity
        return old

    def apply_metrics(self, batch: MetricsBatch,
                      sleep_changes: list[MemberState] | None = None) -> PoolState | None:
        """Merge a scrape round; members unknown to the snapshot are ignored.

        Members that fell asleep or woke up are appended to ``sleep_changes`` when given.
        """
        pool = self.pools.get((batch.pool, batch.partition))
        if pool is None:
            return None
        for m in batch.members:
            member = pool.members.get(m.key)
            if member is not None and member.apply(m) and sleep_changes is not None:
                sleep_changes.append(member)
        return pool

    def retain(self, idents: set[tuple[str, str]]) -> list[tuple[str, str]]:
        """Drop pools no longer configured; returns the dropped ones."""
        dropped = [ident for ident in self.pools if ident not in idents]
        for ident in dropped:
            del self.pools[ident]
        return dropped
