"""Every service's in-memory copy of the registries, refreshed on change events and periodically.

The API publishes ``registry.changed`` after each registration, deletion or instance
change; every replica of every service re-reads Redis at once, and every
``refresh_s`` anyway (a lost event costs at most that long).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from redis.exceptions import RedisError

from shared.model_registry import ModelRecord, ModelRegistry
from shared.workers import WorkerRecord, WorkerRegistry

log = logging.getLogger("llmsched.registry")


class RegistryChanged(msgspec.Struct, frozen=True, kw_only=True):
    """Something in the model or worker registry changed."""

    kind: str
    """``model``, ``worker`` or ``instance``."""
    name: str
    op: str
    """``register``, ``delete``, ``heartbeat``, ``lost``, ``drain``, ..."""
    at: float


async def announce(nc: NATS, subject: str, kind: str, name: str, op: str) -> None:
    """Publish a change (fire and forget: the periodic refresh covers a lost one)."""
    with contextlib.suppress(Exception):
        await nc.publish(subject, msgspec.json.encode(
            RegistryChanged(kind=kind, name=name, op=op, at=time.time())))


class RegistryView:
    """Models and workers as last read from Redis; ``listeners`` run after each change."""

    def __init__(self, models: ModelRegistry, workers: WorkerRegistry, *,
                 refresh_s: float = 2.0) -> None:
        self._models_store = models
        self._workers_store = workers
        self.refresh_s = refresh_s
        self.models: dict[str, ModelRecord] = {}
        self.workers: list[WorkerRecord] = []
        self.loaded = False
        self.healthy = True
        self.listeners: list[Callable[[], None]] = []
        self._kick = asyncio.Event()

    async def refresh(self) -> bool:
        """Read both registries; False (and the last copy kept) when Redis is unreachable."""
        try:
            models = await self._models_store.all()
            workers = await self._workers_store.workers()
        except (RedisError, OSError) as err:
            if self.healthy:
                log.warning("Registry unreadable (%s); keeping the last copy", err)
            self.healthy = False
            return False
        if not self.healthy:
            log.info("Registry readable again")
        self.healthy = True
        changed = (not self.loaded or models.keys() != self.models.keys()
                   or msgspec.json.encode(workers) != msgspec.json.encode(self.workers)
                   or any(models[a].updated_at != self.models[a].updated_at for a in models))
        self.models, self.workers, self.loaded = models, workers, True
        if changed:
            for listener in self.listeners:
                listener()
        return True

    def kick(self) -> None:
        """Re-read now (a change event arrived)."""
        self._kick.set()

    async def on_event(self, _msg: Msg) -> None:
        self.kick()

    async def run(self, stop: asyncio.Event) -> None:
        """Refresh on every kick and every ``refresh_s`` until ``stop``."""
        while not stop.is_set():
            self._kick.clear()
            await self.refresh()
            waiters = {asyncio.ensure_future(self._kick.wait()),
                       asyncio.ensure_future(stop.wait())}
            try:
                await asyncio.wait(waiters, timeout=self.refresh_s,
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
