"""The durable, shared copy of scheduler state (Redis) behind a small protocol."""

from __future__ import annotations

import logging
import os
from typing import Protocol

import redis.asyncio as aioredis

from shared.subjects import RedisKeys

log = logging.getLogger("llmsched.state")

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def redis_url(url: str | None = None) -> str:
    return url or os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL


def open_redis(redis: aioredis.Redis | str | None) -> tuple[aioredis.Redis, bool]:
    """A client for ``redis`` (a client to share, or a URL); True when opened here."""
    if isinstance(redis, aioredis.Redis):
        return redis, False
    return aioredis.Redis.from_url(redis_url(redis), socket_timeout=2.0,
                                   socket_connect_timeout=2.0), True


class StateStore(Protocol):
    """What services need from durable state; every call may raise on an outage."""

    async def put_many(self, items: dict[str, bytes], ttl_s: float) -> None: ...

    async def get_pattern(self, pattern: str) -> dict[str, bytes]: ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


class RedisStateStore:
    """StateStore on redis-py asyncio; short timeouts so an outage is noticed, not waited on."""

    def __init__(self, url: str | None = None, *, keys: RedisKeys | None = None) -> None:
        self.url = redis_url(url)
        self.keys = keys or RedisKeys()
        self._redis: aioredis.Redis = aioredis.Redis.from_url(
            self.url,
            socket_timeout=1.0,
            socket_connect_timeout=1.0,
            health_check_interval=5,
            retry_on_timeout=False,
        )

    async def put_many(self, items: dict[str, bytes], ttl_s: float) -> None:
        if not items:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for key, value in items.items():
                pipe.set(key, value, px=int(ttl_s * 1000))
            await pipe.execute()

    async def get_pattern(self, pattern: str) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        keys = [k async for k in self._redis.scan_iter(match=pattern, count=500)]
        if not keys:
            return out
        values = await self._redis.mget(keys)
        for key, value in zip(keys, values, strict=True):
            if value is not None:
                name = key.decode() if isinstance(key, bytes) else str(key)
                out[name] = value if isinstance(value, bytes) else str(value).encode()
        return out

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except Exception:
            return False

    async def close(self) -> None:
        await self._redis.aclose()
