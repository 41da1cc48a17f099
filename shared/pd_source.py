"""The collector's membership source for role pools: members, their health and drain state.

Health lives here, next to membership, as an F5 monitor's verdict lives in the F5 member
state: one collector checks each member (not every API or scheduler replica), and the
verdict reaches every scheduler replica in the snapshot they already consume. A member
leaves routing (``available: false``) when it is unhealthy or draining.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx

from shared.config import PoolConfig
from shared.messages import MemberInfo, PoolSnapshot
from shared.pd_health import check_members
from shared.pd_members import PDMember, WorkerMember, members_of
from shared.pd_registry import HealthRecord, MemberRole, PDRegistry
from shared.workers import RoutableInstance, WorkerRegistry

log = logging.getLogger("llmsched.pd.source")

FETCH_INTERVAL_S = 0.5
"""How often the registry is read (drains and registrations take effect within this)."""


class PDSource:
    """Snapshots of ``<pool>@prefill`` / ``<pool>@decode``; checks members every interval."""

    def __init__(self, registry: PDRegistry, workers: WorkerRegistry | None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.registry = registry
        self.workers = workers
        self.clock = clock
        self._client: httpx.AsyncClient | None = None
        self._checked: dict[tuple[str, str], float] = {}
        self._last: dict[tuple[str, str], PoolSnapshot] = {}
        self._failing: set[tuple[str, str]] = set()

    async def snapshot(self, pool: PoolConfig, engine_type: str | None = None) -> PoolSnapshot:
        """The role's members now; the last good snapshot (marked stale) if Redis fails."""
        parent, role = pool.pd_pool or pool.name, pool.role or "prefill"
        engine = engine_type or pool.engine_type
        try:
            members = [m for m in await self.members(pool) if m.serves(role)]
            health = await self.registry.health(parent, pool.partition)
            health = await self._check_if_due(pool, members, health)
        except Exception as err:  # Redis down: keep routing on what was known
            return self._failed(pool, engine, f"{type(err).__name__}: {err}")
        if pool.ident in self._failing:
            self._failing.discard(pool.ident)
            log.info("Pool %s:%s: PD registry reachable again", pool.name, pool.partition)
        infos = [_info(m, health.get(m.key)) for m in members]
        snap = PoolSnapshot(pool=pool.name, partition=pool.partition, engine_type=engine,
                            source="pd", members=infos, fetched_at=self.clock())
        self._last[pool.ident] = snap
        return snap

    def next_delay(self, pool: PoolConfig) -> float | None:
        return FETCH_INTERVAL_S

    async def members(self, pool: PoolConfig) -> list[PDMember]:
        """Every member of ``pool``'s PD pool (both roles)."""
        parent = pool.pd_pool or pool.name
        records = await self.registry.records(parent, pool.partition)
        instances: list[WorkerMember] = []
        if pool.source == "workers" and self.workers is not None:
            instances = worker_members(await self.workers.instances(), pool.model or parent)
        return members_of(pool, records, instances)

    async def check_now(self, pool: PoolConfig) -> dict[str, HealthRecord]:
        """Check every member of the role pool now (admin API); the records after it."""
        parent = pool.pd_pool or pool.name
        members = [m for m in await self.members(pool) if m.serves(pool.role or "prefill")]
        health = await self.registry.health(parent, pool.partition)
        return await self._check(pool, members, health)

    async def _check_if_due(self, pool: PoolConfig, members: list[PDMember],
                            health: dict[str, HealthRecord]) -> dict[str, HealthRecord]:
        now = self.clock()
        due = now - self._checked.get(pool.ident, float("-inf")) >= pool.pd.health_check_interval
        todo = members if due else [m for m in members if m.key not in health]
        if not todo:
            return health
        if due:
            self._checked[pool.ident] = now
        return await self._check(pool, todo, health)

    async def _check(self, pool: PoolConfig, members: list[PDMember],
                     health: dict[str, HealthRecord]) -> dict[str, HealthRecord]:
        parent = pool.pd_pool or pool.name
        fresh = await check_members(self.client(), parent, members, health, pool.pd,
                                    self.clock())
        await self.registry.put_health(parent, pool.partition, fresh)
        return {**health, **fresh}

    def _failed(self, pool: PoolConfig, engine: str, error: str) -> PoolSnapshot:
        if pool.ident not in self._failing:
            self._failing.add(pool.ident)
            log.warning("Pool %s:%s: PD registry unreachable (%s); keeping the last members",
                        pool.name, pool.partition, error)
        last = self._last.get(pool.ident)
        if last is None:
            return PoolSnapshot(pool=pool.name, partition=pool.partition, engine_type=engine,
                                source="pd", members=[], fetched_at=self.clock(), error=error)
        return PoolSnapshot(pool=last.pool, partition=last.partition, engine_type=engine,
                            source="pd", members=last.members, fetched_at=self.clock(),
                            stale_since=last.stale_since or last.fetched_at, error=error)

    def client(self) -> httpx.AsyncClient:
        """The checks' HTTP client (made again after :meth:`close`)."""
        if self._client is None or self._client.is_closed:
            self._client = httpx.AsyncClient()
        return self._client

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.aclose()


def worker_members(instances: list[RoutableInstance], alias: str) -> list[WorkerMember]:
    """The running or draining instances of ``alias``, with their role (none: both)."""
    out: list[WorkerMember] = []
    for inst in instances:
        if inst.model_alias != alias or inst.state not in ("running", "draining"):
            continue
        url = urlsplit(inst.url)
        with contextlib.suppress(ValueError):
            if url.hostname is not None and url.port is not None:
                role: MemberRole = "prefill" if inst.role == "prefill" else (
                    "decode" if inst.role == "decode" else "both")
                out.append(WorkerMember(inst.alias, role, url.hostname,
                                        url.port, "draining" if inst.state == "draining"
                                        else "active"))
    return out


def _info(member: PDMember, health: HealthRecord | None) -> MemberInfo:
    healthy = health is None or health.healthy
    state = member.state if healthy else "unhealthy"
    return MemberInfo(key=member.key, host=member.host, port=member.port, name=member.id,
                      state=state, session=member.role,
                      available=member.state == "active" and healthy)
