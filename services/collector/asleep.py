"""Which scraped members are asleep: the scrape's own signals plus their workers' reports."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import msgspec

from shared.config import PoolConfig
from shared.members import member_key
from shared.messages import MemberInfo, MemberMetrics, MetricsBatch

log = logging.getLogger("llmsched.collector.asleep")


class AsleepTracker:
    """Adds the worker signal to a pool's batch and logs each member's asleep/awake change once.

    A failed scrape says nothing about sleep, so the last known state is kept for logging
    (the scheduler keeps it the same way).
    """

    def __init__(self) -> None:
        self._asleep: dict[tuple[str, str], dict[str, str]] = {}

    def apply(self, pool: PoolConfig, members: list[MemberInfo], batch: MetricsBatch,
              sleeping: Mapping[str, str]) -> MetricsBatch:
        """``batch`` with members their worker reports sleeping marked asleep."""
        if sleeping:
            addresses = {m.key: member_key(m.host, m.port) for m in members}
            results = [self._with_worker_signal(r, addresses.get(r.key, r.key), sleeping)
                       for r in batch.members]
            # A member left unscraped (a sleeping worker instance is unavailable at once)
            # still carries its worker's word, so the scheduler knows why it is out.
            scraped = {r.key for r in results}
            for m in members:
                reason = sleeping.get(m.key) or sleeping.get(addresses[m.key])
                if m.key not in scraped and reason is not None:
                    results.append(MemberMetrics(key=m.key, scraped_at=batch.round_started_at,
                                                 ok=False, asleep=True, asleep_reason=reason))
            batch = msgspec.structs.replace(batch, members=results)
        self._log_changes(pool, batch.members)
        return batch

    def forget(self, ident: tuple[str, str]) -> None:
        """Drop what is kept for a pool that left the config."""
        self._asleep.pop(ident, None)

    @staticmethod
    def _with_worker_signal(result: MemberMetrics, address: str,
                            sleeping: Mapping[str, str]) -> MemberMetrics:
        if result.asleep:
            return result
        reason = sleeping.get(result.key) or sleeping.get(address)
        if reason is None:
            return result
        return msgspec.structs.replace(result, asleep=True, asleep_reason=reason)

    def _log_changes(self, pool: PoolConfig, results: list[MemberMetrics]) -> None:
        before = self._asleep.get(pool.ident, {})
        after: dict[str, str] = {}
        for r in results:
            if r.asleep:
                after[r.key] = r.asleep_reason or "asleep"
                if r.key not in before:
                    log.info("pool %s:%s: member %s asleep (%s); out of selection until awake",
                             pool.name, pool.partition, r.key, after[r.key])
            elif r.ok:
                if r.key in before:
                    log.info("pool %s:%s: member %s awake again; back in selection",
                             pool.name, pool.partition, r.key)
            elif r.key in before:
                after[r.key] = before[r.key]
        self._asleep[pool.ident] = after
