"""PD pool members registered or changed at run time, and their health, kept in Redis.

Members listed in the config file need no record; one appears when such a member is
drained or unregistered. Records live under the PD pool's name (ids span both roles);
health under the member's ``host:port``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

import msgspec
import redis.asyncio as aioredis

from shared.state import write_replicated

Origin = Literal["api", "config", "worker"]
MemberState = Literal["active", "draining", "removed"]
MemberRole = Literal["prefill", "decode", "both"]
"""A worker instance started without a role serves both."""


class PDMemberRecord(msgspec.Struct, kw_only=True):
    """One member as registered, or the run-time state of one from the file or a worker."""

    id: str
    role: MemberRole
    host: str
    port: int
    origin: Origin = "api"
    state: MemberState = "active"
    drain_started: float | None = None
    drain_deadline: float | None = None
    """When a drain gives up waiting for the member's requests in flight."""
    updated_at: float = 0.0


class HealthRecord(msgspec.Struct, kw_only=True):
    """What the active checks found of one member."""

    healthy: bool = True
    failures: int = 0
    """Consecutive failed checks (while healthy, towards the failure threshold)."""
    successes: int = 0
    """Consecutive good checks (while unhealthy, towards the success threshold)."""
    last_error: str | None = None
    checked_at: float | None = None
    changed_at: float | None = None


class PDRegistry:
    """Members and health of PD pools under ``<prefix>:pd:<partition>/<pool>:...``."""

    def __init__(self, redis: aioredis.Redis, prefix: str = "llmsched", *,
                 clock: Callable[[], float] = time.time) -> None:
        self.redis = redis
        self.prefix = prefix
        self.clock = clock
        self._member = msgspec.json.Decoder(PDMemberRecord).decode
        self._health = msgspec.json.Decoder(HealthRecord).decode
        self._encode = msgspec.json.Encoder().encode

    def members_key(self, pool: str, partition: str) -> str:
        """Hash: member id → PDMemberRecord."""
        return f"{self.prefix}:pd:{partition}/{pool}:members"

    def health_key(self, pool: str, partition: str) -> str:
        """Hash: member ``host:port`` → HealthRecord."""
        return f"{self.prefix}:pd:{partition}/{pool}:health"

    async def records(self, pool: str, partition: str) -> dict[str, PDMemberRecord]:
        """Every record of ``pool``; unreadable entries are skipped."""
        raw = await self.redis.hgetall(self.members_key(pool, partition))
        out: dict[str, PDMemberRecord] = {}
        for value in raw.values():
            try:
                record = self._member(value)
            except msgspec.DecodeError:
                continue
            out[record.id] = record
        return out

    async def put(self, pool: str, partition: str, record: PDMemberRecord) -> None:
        record.updated_at = self.clock()
        encoded = self._encode(record)
        await write_replicated(self.redis, lambda pipe: pipe.hset(
            self.members_key(pool, partition), record.id, encoded),
            f"PD member {record.id} of {pool}")

    async def delete(self, pool: str, partition: str, member_id: str) -> bool:
        results = await write_replicated(self.redis, lambda pipe: pipe.hdel(
            self.members_key(pool, partition), member_id),
            f"PD member {member_id} of {pool} deleted")
        return bool(results[0])

    async def health(self, pool: str, partition: str) -> dict[str, HealthRecord]:
        raw = await self.redis.hgetall(self.health_key(pool, partition))
        out: dict[str, HealthRecord] = {}
        for key, value in raw.items():
            try:
                out[key.decode() if isinstance(key, bytes) else str(key)] = self._health(value)
            except msgspec.DecodeError:
                continue
        return out

    async def put_health(self, pool: str, partition: str,
                         records: dict[str, HealthRecord]) -> None:
        if records:
            await self.redis.hset(self.health_key(pool, partition),
                                  mapping={k: self._encode(v) for k, v in records.items()})

    async def forget_health(self, pool: str, partition: str, keys: list[str]) -> None:
        if keys:
            await self.redis.hdel(self.health_key(pool, partition), *keys)
