"""The PD admin API on the API service: register, unregister and drain instances, list them by
role, run the health checks now (the seed's ``PDRouter`` methods over HTTP)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

import msgspec
from fastapi import APIRouter, Query, Request, Response
from redis.exceptions import RedisError

from services.api.scheduler_client import SchedulerClient
from services.api.scheduler_errors import SchedulerError, SchedulerUnavailable
from shared.auth import AdminAuth
from shared.config import Config, PoolConfig
from shared.decoding import decode_object
from shared.errors import BadRequest, error_response
from shared.members import MemberAddressError, member_key, parse_member_key, url_host
from shared.model_spec import ALIAS_PATTERN
from shared.openapi import errors
from shared.pd_config import ROLES, role_pool
from shared.pd_members import PDMember
from shared.pd_registry import HealthRecord, PDMemberRecord
from shared.pd_source import PDSource

log = logging.getLogger("llmsched.pd.admin")

DRAIN_POLL_S = 0.2
Partition = Annotated[str, Query(description="The pool's partition")]


class RegisterBody(msgspec.Struct, kw_only=True):
    """``POST /admin/pd/{pool}/instances``: the seed's ``PDInstance``."""

    id: Annotated[str, msgspec.Meta(pattern=ALIAS_PATTERN)]
    role: Literal["prefill", "decode"]
    host: Annotated[str, msgspec.Meta(min_length=1)]
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)]


_INSTANCE: dict[str, Any] = {
    "type": "object", "required": ["id", "role", "host", "port", "url", "origin", "state"],
    "properties": {
        "id": {"type": "string"}, "role": {"type": "string", "enum": ["prefill", "decode",
                                                                     "both"]},
        "host": {"type": "string"}, "port": {"type": "integer"}, "url": {"type": "string"},
        "origin": {"type": "string", "enum": ["config", "api", "worker"]},
        "state": {"type": "string", "enum": ["active", "draining", "drained"]},
        "healthy": {"type": ["boolean", "null"]}, "health_error": {"type": ["string", "null"]},
        "checked_at": {"type": ["number", "null"]},
        "routable": {"type": ["boolean", "null"],
                     "description": "Whether the scheduler may route to it now"},
        "inflight": {"type": ["integer", "null"]},
        "drain": {"type": ["object", "null"]}}}
_INSTANCES: dict[str, Any] = {
    "type": "object", "required": ["pool", "partition", "instances"],
    "properties": {"pool": {"type": "string"}, "partition": {"type": "string"},
                   "instances": {"type": "array", "items": _INSTANCE}}}
_REGISTER_DOC: dict[str, Any] = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["id", "role", "host", "port"],
        "properties": {"id": {"type": "string"}, "role": {"enum": ["prefill", "decode"]},
                       "host": {"type": "string"}, "port": {"type": "integer"}},
        "example": {"id": "prefill-1", "role": "prefill", "host": "10.0.0.1", "port": 8000},
    }}}}}


def _json(value: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(value), status_code=status, media_type="application/json")


def _unavailable(err: Exception) -> Response:
    log.warning("PD registry unavailable: %s", err)
    return error_response(503, "PD registry unavailable (state store)", None,
                          "registry_unavailable", {"Retry-After": "1"})


class PDAdmin:
    """What the routes do, over the config in force, the registry and the scheduler."""

    def __init__(self, config: Callable[[], Config], source: PDSource,
                 scheduler: SchedulerClient, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.source = source
        self.registry = source.registry
        self.scheduler = scheduler
        self.clock = clock

    def role_pools(self, pool: str, partition: str) -> dict[str, PoolConfig]:
        """Role → role pool config of PD pool ``pool``; BadRequest 404 when there is none."""
        found = {p.role: p for p in self.config().pools
                 if p.pd_pool == pool and p.partition == partition and p.role is not None}
        if not found:
            raise BadRequest("pool", f"no PD pool {pool!r} in partition {partition!r} (a pool "
                             "with roles in the config file)", 404, "pool_not_found")
        return {str(role): cfg for role, cfg in found.items()}

    async def instances(self, pool: str, partition: str,
                        role: str | None = None) -> list[dict[str, Any]]:
        """Every member (of ``role``) with its health, drain and in-flight count."""
        pools = self.role_pools(pool, partition)
        members = await self.source.members(pools["prefill"])
        health = await self.registry.health(pool, partition)
        seen = {r: await self._routing(cfg) for r, cfg in pools.items()}
        out = []
        for member in sorted(members, key=lambda m: (m.role, m.id)):
            if role is not None and not member.serves(role):
                continue
            routing = [seen[r].get(member.key) for r in ROLES if member.serves(r)]
            out.append(self._view(member, health.get(member.key),
                                  [x for x in routing if x is not None]))
        return out

    async def _routing(self, cfg: PoolConfig) -> dict[str, tuple[bool, int]]:
        """Member key → (routable, in flight) as the scheduler sees the role pool now."""
        try:
            reply = await self.scheduler.status(cfg.name, cfg.partition)
        except (SchedulerUnavailable, SchedulerError):
            return {}
        if not reply.pools:
            return {}
        return {m.key: (m.available and m.excluded is None, m.inflight)
                for m in reply.pools[0].members}

    def _view(self, member: PDMember, health: HealthRecord | None,
              routing: list[tuple[bool, int]]) -> dict[str, Any]:
        inflight = sum(n for _, n in routing) if routing else None
        routable = any(ok for ok, _ in routing) if routing else None
        state: str = member.state
        drain: dict[str, Any] | None = None
        if member.state == "draining":
            timed_out = member.drain_deadline is not None and self.clock() > member.drain_deadline
            done = routable is False and inflight == 0
            if done or timed_out:
                state = "drained"
            drain = {"started": member.drain_started, "deadline": member.drain_deadline,
                     "timed_out": timed_out and not done}
        return {"id": member.id, "role": member.role, "host": member.host, "port": member.port,
                "url": f"http://{url_host(member.host)}:{member.port}", "origin": member.origin,
                "state": state, "healthy": None if health is None else health.healthy,
                "health_error": None if health is None else health.last_error,
                "checked_at": None if health is None else health.checked_at,
                "routable": routable, "inflight": inflight, "drain": drain}

    async def register(self, pool: str, partition: str, body: RegisterBody) -> bool:
        """Add or replace instance ``body.id``; True when it is new."""
        pools = self.role_pools(pool, partition)
        try:
            host, port = parse_member_key(member_key(body.host.strip("[]"), body.port))
        except MemberAddressError as err:
            raise BadRequest("host", str(err)) from None
        members = await self.source.members(pools["prefill"])
        key = member_key(host, port)
        for other in members:
            if other.key == key and other.id != body.id and other.serves(body.role):
                raise BadRequest("host", f"{key} is already {body.role} instance "
                                 f"{other.id!r} of pool {pool!r}", 409, "conflict")
        created = all(m.id != body.id for m in members)
        await self.registry.put(pool, partition, PDMemberRecord(
            id=body.id, role=body.role, host=host, port=port, origin="api"))
        log.info("PD pool %s: %s instance %s at %s %s", pool, body.role, body.id, key,
                 "registered" if created else "re-registered")
        return created

    async def unregister(self, pool: str, partition: str, member_id: str) -> PDMember:
        pools = self.role_pools(pool, partition)
        member = await self._member(pools, member_id)
        if member.origin == "worker":
            raise BadRequest("id", f"{member_id!r} is an instance of a worker: stop it on its "
                             "worker (or drain it here)", 409, "conflict")
        if member.origin == "api":
            await self.registry.delete(pool, partition, member_id)
        else:  # listed in the file: remembered as removed until registered again
            await self.registry.put(pool, partition, PDMemberRecord(
                id=member.id, role=member.role, host=member.host, port=member.port,
                origin="config", state="removed"))
        log.info("PD pool %s: %s instance %s (%s) unregistered", pool, member.role, member_id,
                 member.key)
        return member

    async def drain(self, pool: str, partition: str, member_id: str) -> PDMember:
        """Stop new requests to ``member_id``; those in flight have ``drain_timeout``."""
        pools = self.role_pools(pool, partition)
        member = await self._member(pools, member_id)
        if member.state == "draining":
            return member
        now = self.clock()
        timeout = pools["prefill"].pd.drain_timeout
        await self.registry.put(pool, partition, PDMemberRecord(
            id=member.id, role=member.role, host=member.host, port=member.port,
            origin=member.origin, state="draining", drain_started=now,
            drain_deadline=now + timeout))
        log.info("PD pool %s: draining %s instance %s (%s): no new requests, %gs for those "
                 "in flight", pool, member.role, member_id, member.key, timeout)
        return member

    async def wait_drained(self, pool: str, partition: str,
                           member_id: str) -> dict[str, Any]:
        """Poll until the drain completes or times out; the instance's view then."""
        while True:
            view = next((v for v in await self.instances(pool, partition)
                         if v["id"] == member_id), None)
            if view is None or view["state"] != "draining":
                if view is not None and view["state"] == "drained":
                    log.info("PD pool %s: instance %s drained%s", pool, member_id,
                             " (timed out with requests in flight)"
                             if view["drain"] and view["drain"]["timed_out"] else "")
                return view or {"id": member_id, "state": "removed"}
            await asyncio.sleep(DRAIN_POLL_S)

    async def check_now(self, pool: str, partition: str) -> list[dict[str, Any]]:
        for cfg in self.role_pools(pool, partition).values():
            await self.source.check_now(cfg)
        return await self.instances(pool, partition)

    async def _member(self, pools: dict[str, PoolConfig], member_id: str) -> PDMember:
        for member in await self.source.members(pools["prefill"]):
            if member.id == member_id:
                return member
        cfg = pools["prefill"]
        raise BadRequest("id", f"no instance {member_id!r} in PD pool {cfg.pd_pool!r}", 404,
                         "instance_not_found")

    def pools(self) -> list[dict[str, Any]]:
        """Every PD pool of the config with its alias and strategies."""
        out: dict[tuple[str, str], dict[str, Any]] = {}
        config = self.config()
        for cfg in config.pools:
            if cfg.pd_pool is None or cfg.role is None:
                continue
            entry = out.setdefault((cfg.pd_pool, cfg.partition), {
                "pool": cfg.pd_pool, "partition": cfg.partition, "model": cfg.model,
                "role_pools": {}, "strategies": {}, "settings": msgspec.to_builtins(cfg.pd)})
            entry["role_pools"][cfg.role] = role_pool(cfg.pd_pool, cfg.role)
            entry["strategies"][cfg.role] = config.mode_for(cfg).name
        return list(out.values())


def pd_router(admin: PDAdmin, auth: AdminAuth) -> APIRouter:
    """``/admin/pd...``; the admin key guards all."""
    router = APIRouter(tags=["pd"])
    listed: dict[int | str, dict[str, Any]] = {200: {"description": "The instances",
                    "content": {"application/json": {"schema": _INSTANCES}}}}

    async def guarded(request: Request, work: Callable[[], Any]) -> Response:
        if (refusal := auth.denied(request)) is not None:
            return refusal
        try:
            result: Response = await work()
        except BadRequest as err:
            return err.response()
        except (RedisError, OSError) as err:
            return _unavailable(err)
        return result

    @router.get("/admin/pd", summary="PD pools: alias, role pools, strategies, settings",
                responses={**errors(401)})
    async def pools(request: Request) -> Response:
        async def work() -> Response:
            return _json({"pools": admin.pools()})
        return await guarded(request, work)

    @router.get("/admin/pd/{pool}/instances", summary="A PD pool's instances (of one role)",
                responses={**listed, **errors(400, 401, 404, 422, 503)})
    async def instances(pool: str, request: Request, partition: Partition = "Common",
                        role: Annotated[Literal["prefill", "decode"] | None,
                                        Query(description="Only this role")] = None
                        ) -> Response:
        async def work() -> Response:
            return _json({"pool": pool, "partition": partition,
                          "instances": await admin.instances(pool, partition, role)})
        return await guarded(request, work)

    @router.post("/admin/pd/{pool}/instances", summary="Register (or replace) an instance",
                 status_code=201, openapi_extra=_REGISTER_DOC,
                 responses={201: {"description": "Registered (new)"},
                            200: {"description": "Replaced (the id existed)"},
                            **errors(400, 401, 404, 409, 503)})
    async def register(pool: str, request: Request, partition: Partition = "Common"
                       ) -> Response:
        async def work() -> Response:
            body, ignored = decode_object(await request.body(), RegisterBody)
            if ignored:
                raise BadRequest(ignored[0], f"unknown field {ignored[0]!r} (expected id, role, "
                                 "host, port)")
            created = await admin.register(pool, partition, body)
            return _json({"pool": pool, "instance": msgspec.to_builtins(body),
                          "created": created}, 201 if created else 200)
        return await guarded(request, work)

    @router.delete("/admin/pd/{pool}/instances/{instance_id}",
                   summary="Unregister an instance (it leaves routing at once)",
                   responses={**errors(401, 404, 409, 503)})
    async def unregister(pool: str, instance_id: str, request: Request,
                         partition: Partition = "Common") -> Response:
        async def work() -> Response:
            member = await admin.unregister(pool, partition, instance_id)
            return _json({"pool": pool, "id": member.id, "role": member.role,
                          "unregistered": True})
        return await guarded(request, work)

    @router.post("/admin/pd/{pool}/instances/{instance_id}/drain",
                 summary="Drain an instance: no new requests; those in flight finish "
                         "(until drain_timeout)",
                 responses={**errors(401, 404, 422, 503)})
    async def drain(pool: str, instance_id: str, request: Request,
                    partition: Partition = "Common",
                    wait: Annotated[bool, Query(description="Answer once drained or timed "
                                                            "out")] = False) -> Response:
        async def work() -> Response:
            await admin.drain(pool, partition, instance_id)
            if wait:
                return _json(await admin.wait_drained(pool, partition, instance_id))
            view = next(v for v in await admin.instances(pool, partition)
                        if v["id"] == instance_id)
            return _json(view, 202 if view["state"] == "draining" else 200)
        return await guarded(request, work)

    @router.post("/admin/pd/{pool}/health-check", summary="Check every instance's health now",
                 responses={**listed, **errors(401, 404, 503)})
    async def health_check(pool: str, request: Request, partition: Partition = "Common"
                           ) -> Response:
        async def work() -> Response:
            return _json({"pool": pool, "partition": partition,
                          "instances": await admin.check_now(pool, partition)})
        return await guarded(request, work)

    return router
