"""Registered workers and their instances, kept in Redis (SPEC §2.2), shared by every service.

The API writes it (registration, heartbeats, the lost-worker detector); the collector,
scheduler and autoscaler read it. A restarted service loses nothing: Redis is the copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError, WatchError

from shared.state import open_redis

log = logging.getLogger("llmsched.registry")

WORKER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
URL_PATTERN = r"^https?://[^\s/]+(/\S*)?$"


class InstanceSummary(msgspec.Struct, kw_only=True):
    """What a heartbeat says about one instance (the registry's routing input)."""

    alias: str
    model_alias: str
    url: str
    model_name: str = ""
    engine: str = "vllm"
    state: str = "running"
    sleep_level: int = 0
    capacity: int = 1
    inflight_requests: int = 0
    ttft_avg: float | None = None
    e2e_avg: float | None = None
    fake: bool = False
    role: str | None = None
    """prefill, decode or both (PD pools); None: not started for one."""


class RegisterRequest(msgspec.Struct, kw_only=True):
    """Body of ``POST /workers/register``."""

    worker_id: Annotated[str, msgspec.Meta(pattern=WORKER_ID_PATTERN)]
    worker_url: Annotated[str, msgspec.Meta(pattern=URL_PATTERN)]
    gpu_info: dict[str, Any] = {}
    heartbeat_interval_s: Annotated[float, msgspec.Meta(gt=0)] | None = None
    instances: list[InstanceSummary] = []


class HeartbeatRequest(msgspec.Struct, kw_only=True):
    """Body of ``POST /workers/{worker_id}/heartbeat`` (may be empty: nothing changes)."""

    instances: list[InstanceSummary] | None = None
    gpu_info: dict[str, Any] | None = None


MISSED_HEARTBEATS = 3
FORGET_AFTER_S = 86400.0
WATCH_RETRIES = 5

WorkerState = Literal["active", "lost"]


class WorkerRecord(msgspec.Struct, kw_only=True):
    """One worker as the registry keeps it in Redis."""

    worker_id: str
    worker_url: str
    gpu_info: dict[str, Any] = {}
    instances: list[InstanceSummary] = []
    heartbeat_interval_s: float | None = None
    registered_at: float
    last_heartbeat: float
    state: WorkerState = "active"
    lost_at: float | None = None
    heartbeats: int = 0


class RoutableInstance(msgspec.Struct, frozen=True, kw_only=True):
    """An instance of an active worker, with where to reach it."""

    worker_id: str
    worker_url: str
    alias: str
    model_alias: str
    url: str
    model_name: str
    engine: str
    state: str
    sleep_level: int
    capacity: int
    inflight_requests: int
    ttft_avg: float | None
    e2e_avg: float | None
    fake: bool
    role: str | None = None


def _routable(worker: WorkerRecord, inst: InstanceSummary) -> RoutableInstance:
    return RoutableInstance(
        worker_id=worker.worker_id, worker_url=worker.worker_url, alias=inst.alias,
        model_alias=inst.model_alias, url=inst.url, model_name=inst.model_name,
        engine=inst.engine, state=inst.state, sleep_level=inst.sleep_level,
        capacity=inst.capacity, inflight_requests=inst.inflight_requests,
        ttft_avg=inst.ttft_avg, e2e_avg=inst.e2e_avg, fake=inst.fake, role=inst.role)


class WorkerRegistry:
    """Registered workers under ``<prefix>:worker:<id>``; a restarted API loses nothing."""

    def __init__(self, redis: aioredis.Redis | str | None = None, prefix: str = "llmsched", *,
                 lost_after_s: float = 15.0, check_interval_s: float | None = None,
                 forget_after_s: float = FORGET_AFTER_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.redis, self._owned = open_redis(redis)
        self.prefix = prefix
        self.lost_after_s = lost_after_s
        self.check_interval_s = check_interval_s or max(0.1, min(1.0, lost_after_s / 5))
        self.forget_after_s = forget_after_s
        self.clock = clock
        self._decode = msgspec.json.Decoder(WorkerRecord).decode
        self._encode = msgspec.json.Encoder().encode
        self._outage = False
        """The last check failed: Redis could take no heartbeat."""
        self._heard_since = 0.0
        """When the last outage the detector saw ended."""

    # -- keys and storage -----------------------------------------------------------
    def key(self, worker_id: str) -> str:
        """Redis key of one worker."""
        return f"{self.prefix}:worker:{worker_id}"

    @property
    def index_key(self) -> str:
        """Redis set of every known worker id."""
        return f"{self.prefix}:workers"

    def lost_after(self, record: WorkerRecord) -> float:
        """Silence after which ``record`` counts as lost: never before 3 missed heartbeats."""
        interval = record.heartbeat_interval_s or 0.0
        return max(self.lost_after_s, MISSED_HEARTBEATS * interval)

    def _put(self, pipe: Any, record: WorkerRecord) -> None:
        pipe.set(self.key(record.worker_id), self._encode(record),
                 px=int(self.forget_after_s * 1000))

    async def _index(self, worker_id: str) -> None:
        # Kept out of the record's transaction: the two keys may live on different
        # Redis Cluster slots. An index entry without a record is dropped by workers().
        await self.redis.sadd(self.index_key, worker_id)

    async def _update(self, worker_id: str,
                      change: Callable[[WorkerRecord], WorkerRecord | None]
                      ) -> WorkerRecord | None:
        """Read-modify-write one record atomically (WATCH); ``change`` returning None skips."""
        key = self.key(worker_id)
        for _ in range(WATCH_RETRIES):
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(key)
                    raw = await pipe.get(key)
                    if raw is None:
                        return None
                    new = change(self._decode(raw))
                    if new is None:
                        return None
                    pipe.multi()  # type: ignore[no-untyped-call]
                    self._put(pipe, new)
                    await pipe.execute()
                except WatchError:
                    continue
            await self._index(worker_id)
            return new
        raise RedisError(f"worker {worker_id}: too much contention updating its record")

    # -- operations -----------------------------------------------------------------
    async def register(self, req: RegisterRequest) -> WorkerRecord:
        """Add (or replace, after a worker restart) a worker; it is active at once."""
        now = self.clock()
        record = WorkerRecord(worker_id=req.worker_id, worker_url=req.worker_url,
                              gpu_info=req.gpu_info, instances=req.instances,
                              heartbeat_interval_s=req.heartbeat_interval_s,
                              registered_at=now, last_heartbeat=now)
        async with self.redis.pipeline(transaction=True) as pipe:
            self._put(pipe, record)
            await pipe.execute()
        await self._index(record.worker_id)
        log.info("Worker %s registered from %s with %d instance(s)", req.worker_id,
                 req.worker_url, len(req.instances))
        return record

    async def heartbeat(self, worker_id: str, req: HeartbeatRequest) -> WorkerRecord | None:
        """Record a heartbeat; None when the worker is unknown (it must register again)."""
        now = self.clock()

        def change(record: WorkerRecord) -> WorkerRecord:
            if record.state == "lost":
                log.info("Worker %s is back after %.1fs of silence", worker_id,
                         now - record.last_heartbeat)
            return msgspec.structs.replace(
                record, last_heartbeat=now, state="active", lost_at=None,
                heartbeats=record.heartbeats + 1,
                instances=record.instances if req.instances is None else req.instances,
                gpu_info=record.gpu_info if req.gpu_info is None else req.gpu_info)

        return await self._update(worker_id, change)

    async def unregister(self, worker_id: str) -> WorkerRecord | None:
        """Forget a worker; returns what was known of it."""
        record = await self.get(worker_id)
        await self.redis.delete(self.key(worker_id))
        await self.redis.srem(self.index_key, worker_id)
        if record is not None:
            log.info("Worker %s unregistered (%d instance(s) leave routing)", worker_id,
                     len(record.instances))
        return record

    async def get(self, worker_id: str) -> WorkerRecord | None:
        """One worker, or None."""
        raw = await self.redis.get(self.key(worker_id))
        return None if raw is None else self._decode(raw)

    async def workers(self) -> list[WorkerRecord]:
        """Every known worker (active and lost), by id."""
        ids = sorted(m.decode() if isinstance(m, bytes) else str(m)
                     for m in await self.redis.smembers(self.index_key))
        if not ids:
            return []
        values = await self.redis.mget([self.key(i) for i in ids])
        gone = [i for i, v in zip(ids, values, strict=True) if v is None]
        if gone:  # expired records: drop them from the index too
            await self.redis.srem(self.index_key, *gone)
        return [self._decode(v) for v in values if v is not None]

    async def instances(self, *, include_lost: bool = False) -> list[RoutableInstance]:
        """Every instance of every active (or, on request, lost) worker.

        An instance the autoscaler is draining reports state ``draining`` while it runs.
        """
        draining = await self.draining()
        out = []
        for w in await self.workers():
            if w.state != "active" and not include_lost:
                continue
            for inst in w.instances:
                item = _routable(w, inst)
                if item.state == "running" and inst.url in draining:
                    item = msgspec.structs.replace(item, state="draining")
                out.append(item)
        return out

    # -- drain marks ------------------------------------------------------------------
    @property
    def draining_key(self) -> str:
        """Redis hash: instance URL → time its drain mark lapses."""
        return f"{self.prefix}:draining"

    async def mark_draining(self, url: str, for_s: float) -> None:
        """Take an instance out of routing for up to ``for_s`` (the autoscaler's drain)."""
        await self.redis.hset(self.draining_key, url, str(self.clock() + for_s))

    async def clear_draining(self, url: str) -> None:
        """The instance may take requests again (or it went to sleep)."""
        await self.redis.hdel(self.draining_key, url)

    async def draining(self) -> set[str]:
        """URLs of instances being drained now (lapsed marks are dropped)."""
        raw = await self.redis.hgetall(self.draining_key)
        now = self.clock()
        live: set[str] = set()
        lapsed: list[str] = []
        for key, value in raw.items():
            url = key.decode() if isinstance(key, bytes) else str(key)
            try:
                until = float(value)
            except ValueError:
                until = 0.0
            if until > now:
                live.add(url)
            else:
                lapsed.append(url)
        if lapsed:
            await self.redis.hdel(self.draining_key, *lapsed)
        return live

    async def routable_instances(self, *, include_sleeping: bool = False
                                 ) -> list[RoutableInstance]:
        """Instances that may take requests: running ones of active workers."""
        wanted = ("running", "sleeping") if include_sleeping else ("running",)
        return [i for i in await self.instances() if i.state in wanted and i.url]

    def silence(self, record: WorkerRecord, now: float) -> float:
        """Seconds without a heartbeat the registry could have taken.

        While Redis was unreachable heartbeats were refused (503), so that time is no
        worker's fault: silence counts from the end of the last outage this detector saw.
        """
        return now - max(record.last_heartbeat, self._heard_since)

    async def check(self) -> list[str]:
        """Mark silent workers lost; returns the ids newly marked."""
        now = self.clock()
        try:
            return await self._check(now)
        except (RedisError, OSError):
            self._outage = True
            raise

    async def _check(self, now: float) -> list[str]:
        lost: list[str] = []
        records = await self.workers()
        if self._outage:
            self._outage = False
            self._heard_since = now
            log.info("Worker registry reachable again; silence counts from now")
        for record in records:
            if record.state != "active" or self.silence(record, now) <= self.lost_after(record):
                continue

            def change(current: WorkerRecord) -> WorkerRecord | None:
                silent = self.silence(current, now)
                if current.state != "active" or silent <= self.lost_after(current):
                    return None  # a heartbeat slipped in meanwhile
                return msgspec.structs.replace(current, state="lost", lost_at=now)

            marked = await self._update(record.worker_id, change)
            if marked is not None:
                lost.append(record.worker_id)
                log.warning("Worker %s (%s) lost: no heartbeat for %.1fs; its %d instance(s) "
                            "leave routing", record.worker_id, record.worker_url,
                            now - record.last_heartbeat, len(record.instances))
        return lost

    async def run(self, stop: asyncio.Event,
                  on_lost: Callable[[list[str]], Awaitable[None]] | None = None) -> None:
        """The lost-worker detector: check every ``check_interval_s`` until ``stop``."""
        failing = False
        while not stop.is_set():
            try:
                lost = await self.check()
                failing = False
                if lost and on_lost is not None:
                    await on_lost(lost)
            except (RedisError, OSError) as err:
                if not failing:
                    log.warning("Worker registry check failed (Redis): %s", err)
                failing = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.check_interval_s)

    async def close(self) -> None:
        """Close the Redis connection if the registry opened it."""
        if self._owned:
            await self.redis.aclose()


def instance_signature(record: WorkerRecord | None) -> frozenset[tuple[str, str, str, int]]:
    """What routing and scaling care about in a worker's instances (not load figures)."""
    if record is None:
        return frozenset()
    return frozenset((i.alias, i.url, i.state, i.sleep_level) for i in record.instances)
