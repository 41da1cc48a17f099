"""One process among several acts: a Redis key with a TTL, taken with SET NX and renewed.

Only the holder acts; when it dies its lease expires and another process takes it
within one ``ttl_s`` (plus the taker's period). Compare-and-set scripts make renew and
release safe against a lease that was already lost. The autoscaler's leader and the
scheduler's load publisher use it.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

RENEW_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
RELEASE_SCRIPT = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


class Lease:
    """``await lease.hold()`` each tick: True while this process holds the lease."""

    def __init__(self, redis: aioredis.Redis, key: str, holder: str, ttl_s: float, *,
                 role: str = "process", logger: logging.Logger | None = None) -> None:
        self.redis = redis
        self.key = key
        self.holder = holder
        self.ttl_ms = max(100, int(ttl_s * 1000))
        self.role = role
        """Who holds it, for log lines (``autoscaler``, ``load publisher``)."""
        self.log = logger or logging.getLogger("llmsched.lease")
        self.leading = False
        self.reachable = True
        """False after a call failed on an unreachable store, until one succeeds again."""
        self._renew: Any = redis.register_script(RENEW_SCRIPT)
        self._release: Any = redis.register_script(RELEASE_SCRIPT)

    async def hold(self) -> bool:
        """Take or renew the lease; False (not holding) when Redis is unreachable."""
        try:
            if self.leading:
                ok = bool(await self._renew(keys=[self.key], args=[self.holder, self.ttl_ms]))
            else:
                ok = bool(await self.redis.set(self.key, self.holder, nx=True, px=self.ttl_ms))
        except (RedisError, OSError) as err:
            if self.leading:
                self.log.warning("%s lease %s lost: state store unreachable (%s)",
                                 self.role.capitalize(), self.key, err)
            self.leading = False
            self.reachable = False
            return False
        self.reachable = True
        if ok != self.leading:
            if ok:
                self.log.info("This %s (%s) now holds lease %s", self.role, self.holder,
                              self.key)
            else:
                self.log.warning("%s lease %s taken over by another process",
                                 self.role.capitalize(), self.key)
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
        """Give the lease up (clean shutdown) so another process takes it at once."""
        if not self.leading:
            return
        with contextlib.suppress(RedisError, OSError):
            await self._release(keys=[self.key], args=[self.holder])
        self.leading = False
