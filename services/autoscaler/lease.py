"""Leader election among autoscaler processes: one Redis key with a TTL, renewed by its holder.

Only the holder acts; when it dies its lease expires and another process takes it
within one ``ttl_s``. Compare-and-set scripts make renew and release safe against a
lease that was already lost.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger("llmsched.autoscaler.lease")

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


class Lease:
    """``await lease.hold()`` each tick: True while this process leads."""

    def __init__(self, redis: aioredis.Redis, key: str, holder: str, ttl_s: float) -> None:
        self.redis = redis
        self.key = key
        self.holder = holder
        self.ttl_ms = max(100, int(ttl_s * 1000))
        self.leading = False
        self._renew: Any = redis.register_script(_RENEW)
        self._release: Any = redis.register_script(_RELEASE)

    async def hold(self) -> bool:
        """Take or renew the lease; False (not leading) when Redis is unreachable."""
        try:
            if self.leading:
                ok = bool(await self._renew(keys=[self.key], args=[self.holder, self.ttl_ms]))
            else:
                ok = bool(await self.redis.set(self.key, self.holder, nx=True, px=self.ttl_ms))
        except (RedisError, OSError) as err:
            if self.leading:
                log.warning("Autoscaler lease %s lost: state store unreachable (%s)", self.key,
                            err)
            self.leading = False
            return False
        if ok != self.leading:
            if ok:
                log.info("This autoscaler (%s) now leads (lease %s)", self.holder, self.key)
            else:
                log.warning("Autoscaler lease %s taken over by another process", self.key)
        self.leading = ok
        return ok

    async def holder_now(self) -> str | None:
        """Who holds the lease (None when nobody or Redis is unreachable)."""
        try:
            raw = await self.redis.get(self.key)
        except (RedisError, OSError):
            return None
        if raw is None:
            return None
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    async def release(self) -> None:
        """Give the lease up (clean shutdown) so another process leads at once."""
        if not self.leading:
            return
        with contextlib.suppress(RedisError, OSError):
            await self._release(keys=[self.key], args=[self.holder])
        self.leading = False
