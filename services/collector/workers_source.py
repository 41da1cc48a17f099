"""Membership from registered workers: a model alias's running instances (``source: workers``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from services.api.workers import WorkerRegistry
from shared.config import PoolConfig
from shared.members import member_key
from shared.messages import MemberInfo, PoolSnapshot

log = logging.getLogger("llmsched.collector.workers")


class WorkersSource:
    """Members are the running instances of active workers serving ``pool.model``.

    Instances of a lost worker, and sleeping ones, are left out, so they leave selection.
    """

    def __init__(self, registry: WorkerRegistry, clock: Callable[[], float] = time.time) -> None:
        self._registry = registry
        self._clock = clock
        self._last: dict[tuple[str, str], frozenset[str]] = {}

    async def snapshot(self, pool: PoolConfig, engine_type: str | None = None) -> PoolSnapshot:
        """The alias's routable instances now (empty with an error if Redis is unreachable)."""
        alias = pool.model or pool.name
        try:
            instances = await self._registry.routable_instances()
        except Exception as err:
            return PoolSnapshot(pool=pool.name, partition=pool.partition,
                                engine_type=engine_type or pool.engine_type, source="workers",
                                members=[], fetched_at=self._clock(),
                                error=f"worker registry unreachable: {err}")
        members = []
        for inst in instances:
            if inst.model_alias != alias:
                continue
            url = urlsplit(inst.url)
            if url.hostname is None or url.port is None:
                continue
            members.append(MemberInfo(key=member_key(url.hostname, url.port), host=url.hostname,
                                      port=url.port, name=inst.alias, state=inst.state))
        keys = frozenset(m.key for m in members)
        if self._last.get(pool.ident) != keys:
            log.info("Pool %s:%s from workers (model %s): %d instance(s) %s", pool.name,
                     pool.partition, alias, len(members), ", ".join(sorted(keys)) or "-")
            self._last[pool.ident] = keys
        return PoolSnapshot(pool=pool.name, partition=pool.partition,
                            engine_type=engine_type or pool.engine_type, source="workers",
                            members=members, fetched_at=self._clock())

    def next_delay(self, pool: PoolConfig) -> float | None:
        """Follow the registry quickly: a lost worker must leave selection within seconds."""
        return 1.0
