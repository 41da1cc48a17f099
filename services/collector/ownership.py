"""Which pools this collector scrapes when several run: heartbeats, rendezvous, pool leases.

Each tick one Lua script (one round trip) heartbeats this collector into a sorted set
of live collectors (scored by expiry, on the Redis clock), renews or takes the leases
of the pools it owns and releases the ones it no longer owns. The owner of a pool is
its rendezvous winner among the live collectors (``rendezvous.py``); the lease (SET NX
PX, renewed every tick) makes sure two collectors never scrape one pool even while
their views of the membership differ. A pool is scraped only while its lease is held
and locally unexpired. When Redis cannot be reached and this collector's leases have
run out, it scrapes every pool (fail open): pools scraped twice beat pools nobody scrapes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.collector.rendezvous import PoolIdent, owned_by

log = logging.getLogger("llmsched.collector.ownership")

TICKS_PER_LEASE = 5
"""Heartbeats per lease: a dead collector's pools move within lease × (1 + 1/this)."""

_TICK = """
local me, ttl, take = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[4] == '1' then
  redis.call('ZADD', KEYS[1], now + ttl, me)
else
  redis.call('ZREM', KEYS[1], me)
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], ttl * 10)
local held = {}
for i = 2, #KEYS do
  local holder = redis.call('GET', KEYS[i])
  if i - 1 <= take then
    if holder == me then
      redis.call('PEXPIRE', KEYS[i], ttl)
      held[#held + 1] = 1
    elseif not holder then
      redis.call('SET', KEYS[i], me, 'PX', ttl)
      held[#held + 1] = 1
    else
      held[#held + 1] = 0
    end
  elseif holder == me then
    redis.call('DEL', KEYS[i])
  end
end
return {redis.call('ZRANGE', KEYS[1], 0, -1), held}
"""


class PoolOwnership:
    """The pools this collector may scrape now; ``tick`` keeps them current."""

    def __init__(self, redis: aioredis.Redis, prefix: str, me: str, *, lease_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.redis = redis
        self.prefix = prefix
        self.me = me
        self.lease_s = lease_s
        """Lifetime of the heartbeat and the leases; the service follows config reloads."""
        self.clock = clock
        self.members: list[str] = []
        """Live collectors at the last successful tick (this one included)."""
        self.held: set[PoolIdent] = set()
        self.deadline = 0.0
        """Monotonic time until which ``held`` is certain (tick start + lease)."""
        self.failing = False
        self._mine: set[PoolIdent] | None = None  # None: not known yet, want every pool
        self._owned_for: tuple[tuple[str, ...], frozenset[PoolIdent]] | None = None
        self._script: Any = redis.register_script(_TICK)
        self._kick = asyncio.Event()
        self._fail_open_logged = False

    @property
    def members_key(self) -> str:
        return f"{self.prefix}:collector:members"

    def lease_key(self, pool: PoolIdent) -> str:
        name, partition = pool
        return f"{self.prefix}:collector:lease:{partition}/{name}"

    def fail_open(self, now: float | None = None) -> bool:
        """True while Redis fails and this collector's leases have run out: scrape all."""
        return self.failing and (self.clock() if now is None else now) >= self.deadline

    def owns(self, pool: PoolIdent, now: float | None = None) -> bool:
        """May this collector scrape ``pool`` now?"""
        now = self.clock() if now is None else now
        if self.failing and now >= self.deadline:
            return True
        return now < self.deadline and pool in self.held

    def active(self, pools: Collection[PoolIdent]) -> set[PoolIdent]:
        """The pools of ``pools`` this collector scrapes now."""
        now = self.clock()
        return {pool for pool in pools if self.owns(pool, now)}

    def kick(self) -> None:
        """Tick now (the pool list changed)."""
        self._kick.set()

    async def _call(self, take: list[PoolIdent], release: Collection[PoolIdent], *,
                    join: bool = True) -> tuple[list[str], set[PoolIdent]]:
        keys = [self.members_key, *(self.lease_key(p) for p in take),
                *(self.lease_key(p) for p in release)]
        ttl_ms = max(1, int(self.lease_s * 1000))
        raw_members, flags = await self._script(
            keys=keys, args=[self.me, ttl_ms, len(take), "1" if join else "0"])
        members = sorted(m.decode() if isinstance(m, bytes) else str(m) for m in raw_members)
        return members, {pool for pool, flag in zip(take, flags, strict=True) if int(flag)}

    def _owned(self, pools: Collection[PoolIdent]) -> set[PoolIdent]:
        """Rendezvous over the live members, recomputed only when an input changed."""
        inputs = (tuple(self.members), frozenset(pools))
        if self._mine is None or inputs != self._owned_for:
            self._mine = owned_by(self.me, pools, self.members)
            self._owned_for = inputs
        return self._mine

    async def tick(self, pools: Collection[PoolIdent]) -> None:
        """Heartbeat; renew, take and release leases so ``held`` = the pools this one owns."""
        started = self.clock()
        configured = set(pools)
        wanted = sorted(configured if self._mine is None else self._mine & configured)
        release = self.held - set(wanted)
        self.held -= release  # stop scraping before the lease is given up
        try:
            members, held = await self._call(wanted, release)
        except (RedisError, OSError) as err:
            self._failed(err)
            return
        self._recovered(members)
        self.members = members
        self.held = held
        self.deadline = started + self.lease_s
        mine = self._owned(configured)
        take, drop = sorted(mine - held), held - mine
        if take or drop:
            self.held -= drop
            try:
                _members, taken = await self._call(take, drop)
            except (RedisError, OSError) as err:
                self._failed(err)
                return
            self.held |= taken

    def _failed(self, err: Exception) -> None:
        first, self.failing = not self.failing, True
        if self.fail_open():
            if not self._fail_open_logged:
                self._fail_open_logged = True
                log.warning("Collector %s: state store unreachable (%s); scraping every pool "
                            "until it answers (fail open)", self.me, err)
        elif first:
            log.warning("Collector %s: state store unreachable (%s); keeping its %d pool(s) "
                        "while their leases last, then scraping every pool (fail open)",
                        self.me, err, len(self.held))

    def _recovered(self, members: list[str]) -> None:
        if self.failing:
            log.info("Collector %s: state store reachable again; splitting pools among %d "
                     "collector(s)", self.me, len(members))
            self.failing = False
            self._fail_open_logged = False
        if members != self.members:
            joined = sorted(set(members) - set(self.members))
            left = sorted(set(self.members) - set(members))
            log.info("Live collectors: %d%s%s", len(members),
                     f"; joined: {', '.join(joined)}" if joined else "",
                     f"; left: {', '.join(left)}" if left and self.members else "")

    async def leave(self) -> None:
        """Clean stop: drop out of the membership and give every lease up at once."""
        release, self.held = self.held, set()
        self.deadline = 0.0
        with contextlib.suppress(RedisError, OSError):
            await self._call([], release, join=False)

    async def run(self, stop: asyncio.Event, pools: Callable[[], Collection[PoolIdent]],
                  on_change: Callable[[], None]) -> None:
        """Tick ``TICKS_PER_LEASE`` times per lease (or when kicked) until ``stop``."""
        before = self._state()
        while not stop.is_set():
            self._kick.clear()
            try:
                await self.tick(pools())
            except Exception:
                log.exception("Pool ownership tick failed")
            now = self._state()
            if now != before:
                before = now
                on_change()
            waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._kick.wait())]
            try:
                await asyncio.wait(waiters, timeout=self.lease_s / TICKS_PER_LEASE,
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()

    def _state(self) -> tuple[bool, frozenset[PoolIdent]]:
        return self.fail_open(), frozenset(self.held)
