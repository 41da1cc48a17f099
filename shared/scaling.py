"""What the autoscaler did and which instances it unloaded, kept in Redis for status pages."""

from __future__ import annotations

import logging

import msgspec
import redis.asyncio as aioredis

log = logging.getLogger("llmsched.registry")

MAX_ACTIONS = 200
"""Autoscaler actions kept (newest first)."""


class ActionRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One autoscaler action (also published on ``autoscaler.action``)."""

    alias: str
    kind: str
    """wake, start, sleep, unload."""
    instance: str | None
    worker_id: str | None
    reason: str
    at: float
    level: int = 0
    ok: bool = True
    error: str | None = None
    load: float | None = None
    autoscaler: str = ""


class UnloadedInstance(msgspec.Struct, frozen=True, kw_only=True):
    """An instance the autoscaler stopped: its slot, shown as UNLOADED."""

    alias: str
    instance: str
    worker_id: str
    at: float


class ScalingLog:
    """``<prefix>:autoscaler:actions`` (list) and ``<prefix>:autoscaler:unloaded`` (hash)."""

    def __init__(self, redis: aioredis.Redis, prefix: str) -> None:
        self.redis = redis
        self.actions_key = f"{prefix}:autoscaler:actions"
        self.unloaded_key = f"{prefix}:autoscaler:unloaded"
        self._action = msgspec.json.Decoder(ActionRecord)
        self._unloaded = msgspec.json.Decoder(UnloadedInstance)

    async def record(self, action: ActionRecord) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.lpush(self.actions_key, msgspec.json.encode(action))
            pipe.ltrim(self.actions_key, 0, MAX_ACTIONS - 1)
            await pipe.execute()

    async def recent(self, limit: int = 50) -> list[ActionRecord]:
        """Newest first."""
        out = []
        for raw in await self.redis.lrange(self.actions_key, 0, max(0, limit - 1)):
            try:
                out.append(self._action.decode(raw))
            except msgspec.DecodeError:
                continue
        return out

    async def unloaded(self, alias: str, instance: str, worker_id: str, at: float) -> None:
        record = UnloadedInstance(alias=alias, instance=instance, worker_id=worker_id, at=at)
        await self.redis.hset(self.unloaded_key, instance, msgspec.json.encode(record))

    async def reloaded(self, instance: str) -> None:
        """The slot is in use again (an instance of that name started)."""
        await self.redis.hdel(self.unloaded_key, instance)

    async def all_unloaded(self) -> list[UnloadedInstance]:
        out = []
        for raw in (await self.redis.hgetall(self.unloaded_key)).values():
            try:
                out.append(self._unloaded.decode(raw))
            except msgspec.DecodeError:
                continue
        return sorted(out, key=lambda u: (u.alias, u.instance))

    async def forget_alias(self, alias: str) -> None:
        """Drop the UNLOADED slots of a deleted alias."""
        for record in await self.all_unloaded():
            if record.alias == alias:
                await self.redis.hdel(self.unloaded_key, record.instance)


def scaling_state(state: str, sleep_level: int) -> str:
    """A worker's instance state as the autoscaler names it (ACTIVE, SLEEP_1, ...)."""
    if state == "running":
        return "ACTIVE"
    if state == "sleeping":
        return f"SLEEP_{2 if sleep_level >= 2 else 1}"
    return state.upper()
