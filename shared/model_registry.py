"""Registered models (SPEC §2.2), kept in Redis: what an alias is and how it autoscales."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import msgspec
import redis.asyncio as aioredis

from shared.autoscaling import AutoscalingOverrides
from shared.decoding import decode_object
from shared.errors import BadRequest
from shared.model_spec import ModelSpec
from shared.state import open_redis, write_replicated

log = logging.getLogger("llmsched.registry")

PLACEMENT_FIELDS = ("instance", "add_replica", "port")
"""ModelSpec fields the autoscaler chooses per instance; a registration may not set them."""

class ModelRecord(msgspec.Struct, kw_only=True):
    """One registered alias."""

    spec: ModelSpec
    autoscaling: AutoscalingOverrides = AutoscalingOverrides()
    registered_at: float
    updated_at: float

    @property
    def alias(self) -> str:
        return self.spec.alias

    @property
    def model_name(self) -> str:
        return self.spec.model_name

    def public(self) -> dict[str, Any]:
        """The registration as the admin API shows it: the seed's flat body plus settings."""
        body = {k: v for k, v in msgspec.to_builtins(self.spec).items()
                if k not in PLACEMENT_FIELDS}
        body["autoscaling"] = msgspec.to_builtins(self.autoscaling)
        body["registered_at"] = self.registered_at
        body["updated_at"] = self.updated_at
        return body


def parse_registration(raw: bytes) -> tuple[ModelSpec, AutoscalingOverrides, list[str]]:
    """The seed's register body (flat engine args + optional ``autoscaling``) → typed parts."""
    spec, ignored = decode_object(raw, _RegisterBody)
    for name in PLACEMENT_FIELDS:
        if getattr(spec, name) not in (None, False):
            raise BadRequest(name, f"`{name}` is chosen per instance by the autoscaler; "
                             "leave it out of a registration")
    if spec.fake and spec.model_name not in ("", "__fake__"):
        raise BadRequest("model_name", "a fake model's model_name must be __fake__ (or empty)")
    if not spec.fake and not spec.model_name:
        raise BadRequest("model_name", "model_name is required (or fake: true)")
    spec.autoscaling.check()
    plain = msgspec.convert({k: v for k, v in msgspec.to_builtins(spec).items()
                             if k != "autoscaling"}, ModelSpec)
    return plain, spec.autoscaling, ignored


class _RegisterBody(ModelSpec, kw_only=True):
    autoscaling: AutoscalingOverrides = AutoscalingOverrides()


class ModelRegistry:
    """``<prefix>:model:<alias>`` records plus the ``<prefix>:models`` index set.

    Nothing re-asserts a registration, so each write waits for a replica behind Sentinel
    (shared.state.write_replicated): a failover right after it loses nothing.
    """

    def __init__(self, redis: aioredis.Redis | str | None = None, prefix: str = "llmsched",
                 clock: Callable[[], float] = time.time) -> None:
        self.redis, self._owned = open_redis(redis)
        self.prefix = prefix
        self.clock = clock
        self._decode = msgspec.json.Decoder(ModelRecord).decode
        self._encode = msgspec.json.Encoder().encode

    def key(self, alias: str) -> str:
        return f"{self.prefix}:model:{alias}"

    @property
    def index_key(self) -> str:
        return f"{self.prefix}:models"

    async def register(self, spec: ModelSpec, autoscaling: AutoscalingOverrides
                       ) -> tuple[ModelRecord, bool]:
        """Add or replace an alias; returns the record and whether it is new."""
        now = self.clock()
        old = await self.get(spec.alias)
        record = ModelRecord(spec=spec, autoscaling=autoscaling,
                             registered_at=old.registered_at if old else now, updated_at=now)
        encoded = self._encode(record)

        def write(pipe: Any) -> None:
            pipe.set(self.key(spec.alias), encoded)
            pipe.sadd(self.index_key, spec.alias)

        await write_replicated(self.redis, write, f"model {spec.alias}")
        log.info("Model %s %s (%s)", spec.alias, "updated" if old else "registered",
                 "fake" if spec.fake else spec.model_name)
        return record, old is None

    async def delete(self, alias: str) -> ModelRecord | None:
        """Forget an alias; returns what was registered."""
        old = await self.get(alias)

        def write(pipe: Any) -> None:
            pipe.delete(self.key(alias))
            pipe.srem(self.index_key, alias)

        await write_replicated(self.redis, write, f"model {alias} deleted")
        if old is not None:
            log.info("Model %s deleted", alias)
        return old

    async def get(self, alias: str) -> ModelRecord | None:
        raw = await self.redis.get(self.key(alias))
        return None if raw is None else self._decode(raw)

    async def all(self) -> dict[str, ModelRecord]:
        """Every registered alias."""
        aliases = sorted(m.decode() if isinstance(m, bytes) else str(m)
                         for m in await self.redis.smembers(self.index_key))
        if not aliases:
            return {}
        values = await self.redis.mget([self.key(a) for a in aliases])
        out: dict[str, ModelRecord] = {}
        for alias, raw in zip(aliases, values, strict=True):
            if raw is None:
                continue
            try:
                out[alias] = self._decode(raw)
            except msgspec.DecodeError as err:
                log.warning("Ignoring unreadable registration of %s: %s", alias, err)
        return out

    async def close(self) -> None:
        if self._owned:
            await self.redis.aclose()
