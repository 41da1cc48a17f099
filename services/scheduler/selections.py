"""Fleet-wide selection counts: each replica adds its new answers to a Redis hash per pool."""

from __future__ import annotations

from typing import Protocol

import redis.asyncio as aioredis

from shared.state import connect_redis

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
