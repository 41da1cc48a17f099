"""Membership sources: where a pool's members come from (static config or F5)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import msgspec

from services.collector.f5_client import F5Client, F5PoolNotFound
from services.collector.f5_parse import F5Error
from shared.config import PoolConfig
from shared.members import static_snapshot
from shared.messages import MemberInfo, PoolSnapshot

log = logging.getLogger("llmsched.collector.membership")

PoolIdent = tuple[str, str]


class MembershipSource(Protocol):
    """What the collector loop needs from a source."""

    async def snapshot(self, pool: PoolConfig, engine_type: str | None = None) -> PoolSnapshot:
        """The pool's current membership."""
        ...

    def next_delay(self, pool: PoolConfig) -> float | None:
        """Seconds until the next fetch, or None for the normal ``pool_fetch_interval``."""
        ...


def _label(pool: PoolConfig) -> str:
    return f"/{pool.partition}/{pool.name}"


class StaticSource:
    """Members listed in the config (``source: static``); all available."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock

    async def snapshot(self, pool: PoolConfig, engine_type: str | None = None) -> PoolSnapshot:
        """The configured members, keys normalised as a gateway sends them."""
        return static_snapshot(pool, self._clock(), engine_type)

    def next_delay(self, pool: PoolConfig) -> float | None:
        """Static membership never backs off."""
        return None


@dataclass
class _PoolState:
    last_good: PoolSnapshot | None = None
    failures: int = 0
    stale_since: float | None = None
    last_outcome: str | None = None
    """The last error text logged (None after a success), to log each change once."""


def _signature(members: list[MemberInfo]) -> frozenset[tuple[str, bool, str, str]]:
    return frozenset((m.key, m.available, m.state, m.session) for m in members)


def _describe_change(old: list[MemberInfo] | None, new: list[MemberInfo]) -> str:
    available = sum(m.available for m in new)
    head = f"{len(new)} members, {available} available"
    if old is None:
        return head
    before = {m.key: m for m in old}
    after = {m.key: m for m in new}
    added = sorted(after.keys() - before.keys())
    removed = sorted(before.keys() - after.keys())
    changed = sorted(
        f"{k} {after[k].state}/{after[k].session}"
        for k in after.keys() & before.keys()
        if _signature([after[k]]) != _signature([before[k]])
    )
    parts = [head]
    for sign, keys in (("+", added), ("-", removed), ("~", changed)):
        if keys:
            parts.append(f"{sign}[{', '.join(keys)}]")
    return " ".join(parts)


class F5Source:
    """Pool members read from the BIG-IP; keeps the last good snapshot while F5 fails."""

    def __init__(
        self,
        client: F5Client,
        clock: Callable[[], float] = time.time,
        *,
        min_backoff: float = 1.0,
        max_backoff: float = 60.0,
    ) -> None:
        self._client = client
        self._clock = clock
        self._min_backoff = min_backoff
        self.max_backoff = max_backoff
        """Longest retry delay; the collector keeps it at ``scheduler.pool_fetch_backoff_max``."""
        self._pools: dict[PoolIdent, _PoolState] = {}

    async def snapshot(self, pool: PoolConfig, engine_type: str | None = None) -> PoolSnapshot:
        """Fetch the members; on failure the last good snapshot marked stale (or an empty one)."""
        state = self._pools.setdefault(pool.ident, _PoolState())
        engine = engine_type or pool.engine_type
        try:
            members = await self._client.get_members(pool.name, pool.partition)
        except F5PoolNotFound as err:
            return self._not_found(pool, engine, state, str(err))
        except F5Error as err:
            return self._failed(pool, engine, state, str(err))
        return self._fetched(pool, engine, state, members)

    def next_delay(self, pool: PoolConfig) -> float | None:
        """Delay after consecutive failures (1 s doubling to ``max_backoff``); None if healthy."""
        state = self._pools.get(pool.ident)
        if state is None or state.failures == 0:
            return None
        return float(min(self.max_backoff, self._min_backoff * 2 ** (state.failures - 1)))

    def forget(self, pool: PoolConfig) -> None:
        """Drop what is kept for a pool removed from the config."""
        self._pools.pop(pool.ident, None)

    def _fetched(
        self, pool: PoolConfig, engine: str, state: _PoolState, members: list[MemberInfo]
    ) -> PoolSnapshot:
        old = state.last_good.members if state.last_good is not None else None
        if state.stale_since is not None:
            log.info("pool %s: F5 answers again after %.1fs", _label(pool),
                     self._clock() - state.stale_since)
        if old is None or _signature(old) != _signature(members):
            log.info("pool %s: %s", _label(pool), _describe_change(old, members))
        else:
            log.debug("pool %s: unchanged, %d members", _label(pool), len(members))
        snap = PoolSnapshot(
            pool=pool.name,
            partition=pool.partition,
            engine_type=engine,
            source="f5",
            members=members,
            fetched_at=self._clock(),
        )
        state.last_good = snap
        state.failures = 0
        state.stale_since = None
        state.last_outcome = None
        return snap

    def _not_found(
        self, pool: PoolConfig, engine: str, state: _PoolState, error: str
    ) -> PoolSnapshot:
        # Authoritative: the pool is gone, so the old membership must not be served.
        if state.last_outcome != error:
            log.warning("pool %s: %s", _label(pool), error)
        else:
            log.debug("pool %s: still not found", _label(pool))
        state.last_good = None
        state.failures = 0
        state.stale_since = None
        state.last_outcome = error
        return PoolSnapshot(
            pool=pool.name,
            partition=pool.partition,
            engine_type=engine,
            source="f5",
            members=[],
            fetched_at=self._clock(),
            error=error,
        )

    def _failed(self, pool: PoolConfig, engine: str, state: _PoolState, error: str) -> PoolSnapshot:
        now = self._clock()
        state.failures += 1
        if state.stale_since is None:
            state.stale_since = now
        delay = self.next_delay(pool)
        if state.last_outcome != error:
            kept = "keeping the last good members" if state.last_good else "no members known yet"
            log.warning("pool %s: F5 fetch failed (%s); %s, retry in %gs",
                        _label(pool), error, kept, delay)
        else:
            log.debug("pool %s: F5 still failing (%d in a row)", _label(pool), state.failures)
        state.last_outcome = error
        if state.last_good is None:
            return PoolSnapshot(
                pool=pool.name,
                partition=pool.partition,
                engine_type=engine,
                source="f5",
                members=[],
                fetched_at=now,
                error=error,
            )
        return msgspec.structs.replace(
            state.last_good, engine_type=engine, stale_since=state.stale_since, error=error
        )
