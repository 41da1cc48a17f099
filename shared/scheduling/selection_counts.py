"""Fleet-wide selection counts: each deciding process (a scheduler replica, an API deciding
locally) adds its new answers to a Redis hash per pool and reads the totals back."""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

import redis.asyncio as aioredis

from shared.runtime import sleep_or_stop
from shared.scheduling.view import ClusterView, SelectionCounts
from shared.state import connect_redis
from shared.subjects import RedisKeys

log = logging.getLogger("llmsched.selections")

Deltas = dict[str, dict[str, int]]
"""Hash key → answer → how many to add (may be empty: just read)."""


class SelectionStore(Protocol):
    """Where the replicas' counts meet; every call may raise on an outage."""

    async def add_and_read(self, deltas: Deltas, ttl_s: float) -> dict[str, dict[str, int]]:
        """Add ``deltas`` and return each hash's totals afterwards."""
        ...

    async def close(self) -> None: ...


class RedisSelectionStore:
    """HINCRBY, PEXPIRE and HGETALL per pool in one pipeline; short timeouts like the state store.

    Not a MULTI transaction (pools may sit on different Cluster slots): commands on one
    key still run in order on the connection, so a hash read back includes the additions.
    """

    def __init__(self, url: str | None = None) -> None:
        self._redis: aioredis.Redis = connect_redis(
            url, socket_timeout=1.0, socket_connect_timeout=1.0,
            health_check_interval=5, retry_on_timeout=False)

    async def add_and_read(self, deltas: Deltas, ttl_s: float) -> dict[str, dict[str, int]]:
        """Add every delta, keep each hash alive for ``ttl_s``, read each back."""
        if not deltas:
            return {}
        async with self._redis.pipeline(transaction=False) as pipe:
            for key, fields in deltas.items():
                for answer, n in fields.items():
                    pipe.hincrby(key, answer, n)
                pipe.pexpire(key, int(ttl_s * 1000))
                pipe.hgetall(key)
            replies = await pipe.execute()
        totals: dict[str, dict[str, int]] = {}
        at = 0
        for key, fields in deltas.items():
            at += len(fields) + 2
            raw = replies[at - 1]
            totals[key] = {_text(answer): int(n) for answer, n in raw.items()}
        return totals

    async def close(self) -> None:
        await self._redis.aclose()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def flush_selections(view: ClusterView, store: SelectionStore, keys: RedisKeys,
                           ttl_s: float) -> None:
    """Add each pool's pending answers to its shared hash and read the totals back; on
    failure the totals become unknown (status then shows this process's own)."""
    if not view.pools:
        return
    taken: dict[str, tuple[SelectionCounts, dict[str, int]]] = {}
    deltas: Deltas = {}
    for pool in view.pools.values():
        key = keys.selections(pool.partition, pool.name)
        taken[key] = (pool.counts, dict(pool.counts.local))
        deltas[key] = pool.counts.pending()
    try:
        totals = await store.add_and_read(deltas, ttl_s)
    except BaseException:
        for pool in view.pools.values():
            pool.counts.fleet = None
        raise
    for key, (counts, local) in taken.items():
        counts.flushed = local
        counts.fleet = totals.get(key, {})


async def flush_selections_every(view: ClusterView, store: SelectionStore, keys: RedisKeys,
                                 ttl_s: float, stop: asyncio.Event,
                                 period_s: float = 0.5) -> None:
    """:func:`flush_selections` every ``period_s`` until ``stop``, then once more; an outage
    is logged once and only delays the counts."""
    ok = True
    while True:
        stopping = await sleep_or_stop(stop, period_s)
        try:
            await flush_selections(view, store, keys, ttl_s)
            if not ok:
                log.info("Selection counts reach the state store again")
            ok = True
        except Exception as err:
            if ok:
                log.warning("Selection counts not written (%s); will retry", err)
            ok = False
        if stopping:
            return
