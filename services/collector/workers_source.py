"""What the worker registry tells the collector: pool members (``source: workers``), sleepers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

import msgspec

from shared.config import PoolConfig
from shared.members import member_key
from shared.messages import MemberInfo, PoolSnapshot
from shared.workers import RoutableInstance, WorkerRegistry

log = logging.getLogger("llmsched.collector.workers")

SLEEPING_READ_INTERVAL_S = 1.0
SLEEPING_READ_TIMEOUT_S = 2.0
SLEEPING_STALE_AFTER_S = 5.0
"""A sleeper list older than this (registry unreachable) is dropped: no signal, not old news."""


def _address(inst: RoutableInstance) -> tuple[str, int] | None:
    url = urlsplit(inst.url)
    try:
        port = url.port
    except ValueError:
        return None
    if url.hostname is None or port is None:
        return None
    return url.hostname, port


class WorkersSource:
    """Members are the running and sleeping instances of active workers serving ``pool.model``.

    Instances of a lost worker leave the pool. Sleeping ones stay members so pool status
    shows them; the collector marks them asleep (see SleepingInstances), so they leave
    selection all the same. Draining ones stay members, unavailable.
    """

    def __init__(self, registry: WorkerRegistry, clock: Callable[[], float] = time.time) -> None:
        self._registry = registry
        self._clock = clock
        self._last: dict[tuple[str, str], frozenset[str]] = {}
        self._good: dict[tuple[str, str], PoolSnapshot] = {}
        """Each pool's last snapshot read from the registry, kept through its outages."""

    async def snapshot(self, pool: PoolConfig, engine_type: str | None = None) -> PoolSnapshot:
        """The alias's instances now; while Redis is unreachable, the last ones read."""
        alias = pool.model or pool.name
        try:
            instances = [i for i in await self._registry.instances()
                         if i.state in ("running", "sleeping", "draining") and i.url]
        except Exception as err:
            return self._failed(pool, engine_type or pool.engine_type,
                                f"worker registry unreachable: {err}")
        members = []
        for inst in instances:
            address = _address(inst)
            if inst.model_alias != alias or address is None:
                continue
            host, port = address
            # Draining and sleeping instances stay members (in-flight requests still count,
            # status shows them) but are unavailable at once: no wait for a scrape to say so.
            members.append(MemberInfo(key=member_key(host, port), host=host, port=port,
                                      name=inst.alias, state=inst.state,
                                      available=inst.state == "running",
                                      capacity=inst.capacity))
        keys = frozenset(m.key for m in members)
        if self._last.get(pool.ident) != keys:
            log.info("Pool %s:%s from workers (model %s): %d instance(s) %s", pool.name,
                     pool.partition, alias, len(members), ", ".join(sorted(keys)) or "-")
            self._last[pool.ident] = keys
        if pool.ident in self._good and self._good[pool.ident].stale_since is not None:
            log.info("Pool %s:%s: worker registry reachable again", pool.name, pool.partition)
        good = PoolSnapshot(pool=pool.name, partition=pool.partition,
                            engine_type=engine_type or pool.engine_type, source="workers",
                            members=members, fetched_at=self._clock())
        self._good[pool.ident] = good
        return good

    def _failed(self, pool: PoolConfig, engine: str, error: str) -> PoolSnapshot:
        """The last members read, marked stale (none if the registry was never read).

        An unreachable registry says nothing about the instances: they keep serving, so
        selection keeps them (scrapes still tell whether each one is up).
        """
        last = self._good.get(pool.ident)
        if last is None:
            return PoolSnapshot(pool=pool.name, partition=pool.partition, engine_type=engine,
                                source="workers", members=[], fetched_at=self._clock(),
                                error=error)
        if last.stale_since is None:
            log.warning("Pool %s:%s: %s; keeping its %d last member(s)", pool.name,
                        pool.partition, error, len(last.members))
            last = msgspec.structs.replace(last, stale_since=last.fetched_at)
            self._good[pool.ident] = last
        return msgspec.structs.replace(last, fetched_at=self._clock(), error=error)

    def next_delay(self, pool: PoolConfig) -> float | None:
        """Follow the registry quickly: a lost worker must leave selection within seconds."""
        return 1.0


class SleepingInstances:
    """Addresses of instances their workers report ``sleeping``, for every pool source.

    One background read of the registry per interval; scrape rounds take the latest
    answer without waiting. When the registry is unreachable the list is dropped after
    a few seconds, so the signal is absent rather than stale.
    """

    def __init__(self, registry: WorkerRegistry, *,
                 interval_s: float = SLEEPING_READ_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._registry = registry
        self._interval_s = interval_s
        self._clock = clock
        self._sleeping: dict[str, str] = {}
        self._read_at: float | None = None
        self._failing = False

    def current(self) -> Mapping[str, str]:
        """Member key (``host:port``) → why it is asleep; empty when the registry is not known."""
        if self._read_at is None or self._clock() - self._read_at > SLEEPING_STALE_AFTER_S:
            return {}
        return self._sleeping

    async def refresh(self) -> None:
        """Read the registry once; a failure is logged when it starts and when it ends."""
        try:
            async with asyncio.timeout(SLEEPING_READ_TIMEOUT_S):
                instances = await self._registry.instances()
        except Exception as err:
            if not self._failing:
                log.warning("Worker registry unreachable (%s); sleeping worker instances are "
                            "not known until it answers", f"{type(err).__name__}: {err}")
            self._failing = True
            return
        if self._failing:
            log.info("Worker registry reachable again; sleeping worker instances known")
        self._failing = False
        sleeping: dict[str, str] = {}
        for inst in instances:
            address = _address(inst)
            if inst.state == "sleeping" and address is not None:
                sleeping[member_key(*address)] = (
                    f"worker {inst.worker_id} reports instance {inst.alias} sleeping")
        self._sleeping = sleeping
        self._read_at = self._clock()

    async def run(self, stop: asyncio.Event) -> None:
        """Refresh every interval until ``stop``."""
        while not stop.is_set():
            await self.refresh()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._interval_s)
