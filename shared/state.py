"""The durable, shared copy of scheduler state (Redis) behind a small protocol.

Every Redis client of the services is made here (:func:`connect_redis`), from a plain
``redis://`` / ``rediss://`` / ``unix://`` URL or a Sentinel set's URL::

    redis+sentinel://[user:password@]host[:port][,host[:port]...]/service_name[/db][?options]
    rediss+sentinel://...   (TLS to the data nodes and the sentinels)

the grammar of the Redis-Sentinel-Url package (also Prefect's): sentinels default to port
26379; ``user:password@`` authenticates to the data nodes; options ``sentinel_username``
and ``sentinel_password`` to the sentinels. A Sentinel client asks the sentinels for the
primary at each new connection, so after a failover the next command reaches the new one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel

from shared.subjects import RedisKeys

log = logging.getLogger("llmsched.state")

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


SENTINEL_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}
"""Sentinel URL scheme → TLS."""
SENTINEL_PORT = 26379
SENTINEL_OPTIONS = ("sentinel_username", "sentinel_password")


def redis_url(url: str | None = None) -> str:
    return url or os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL


class RedisUrlError(ValueError):
    """A Redis URL that cannot be used; the message names the problem."""


@dataclass(frozen=True)
class SentinelUrl:
    """A parsed ``redis+sentinel://`` URL."""

    sentinels: list[tuple[str, int]]
    service_name: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    ssl: bool = False


def parse_sentinel_url(url: str) -> SentinelUrl | None:
    """The Sentinel set a URL names; None for any other URL (redis-py parses those)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in SENTINEL_SCHEMES:
        return None
    # urlsplit would read "h1:1,h2:2" as one host with a bad port: split the hosts by hand.
    netloc, _, tail = rest.partition("/")
    path, _, query = tail.partition("?")
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        userinfo, hosts = "", netloc
    sentinels = [_host_port(part, url) for part in hosts.split(",") if part.strip()]
    if not sentinels:
        raise RedisUrlError(f"Redis URL {_safe(url)}: no sentinel host")
    parts = [p for p in path.split("/") if p]
    if not parts:
        raise RedisUrlError(f"Redis URL {_safe(url)}: no service name (…/mymaster[/db])")
    if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise RedisUrlError(f"Redis URL {_safe(url)}: the path must be /service_name[/db]")
    options = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    unknown = sorted(set(options) - set(SENTINEL_OPTIONS))
    if unknown:
        raise RedisUrlError(f"Redis URL {_safe(url)}: unknown option(s) {', '.join(unknown)} "
                            f"(known: {', '.join(SENTINEL_OPTIONS)})")
    user, colon, password = userinfo.partition(":")
    return SentinelUrl(
        sentinels=sentinels, service_name=unquote(parts[0]),
        db=int(parts[1]) if len(parts) == 2 else 0,
        username=unquote(user) or None, password=unquote(password) if colon else None,
        sentinel_username=options.get("sentinel_username") or None,
        sentinel_password=options.get("sentinel_password") or None,
        ssl=SENTINEL_SCHEMES[scheme.lower()])


def _host_port(part: str, url: str) -> tuple[str, int]:
    split = urlsplit(f"//{part.strip()}")
    try:
        port = split.port
    except ValueError:
        raise RedisUrlError(f"Redis URL {_safe(url)}: bad sentinel port in {part!r}") from None
    if not split.hostname:
        raise RedisUrlError(f"Redis URL {_safe(url)}: bad sentinel host {part!r}")
    return split.hostname, port or SENTINEL_PORT


def _safe(url: str) -> str:
    """The URL without its password (for messages and logs)."""
    scheme, sep, rest = url.partition("://")
    netloc, slash, tail = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.split(':', 1)[0]}:***@{hosts}"
    return f"{scheme}{sep}{netloc}{slash}{tail.split('?', 1)[0]}"


class SentinelRedis(aioredis.Redis):
    """A client of a Sentinel set's primary that also closes its sentinel connections."""

    manager: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.manager is not None:
            manager, self.manager = self.manager, None
            await manager.aclose()


def connect_redis(url: str | None = None, **options: Any) -> aioredis.Redis:
    """A client for ``url`` (default ``REDIS_URL``): one server, or a Sentinel set's primary.

    ``options`` are redis-py connection options (timeouts, ``health_check_interval``, ...);
    for a Sentinel set they apply to the data nodes, and the socket ones to the sentinels.
    """
    url = redis_url(url)
    sentinel_url = parse_sentinel_url(url)
    if sentinel_url is None:
        try:
            return aioredis.Redis.from_url(url, **options)
        except ValueError as err:
            raise RedisUrlError(f"Redis URL {_safe(url)}: {err}") from None
    tls: dict[str, Any] = {"ssl": True} if sentinel_url.ssl else {}
    sentinel_kwargs: dict[str, Any] = {k: v for k, v in options.items()
                                       if k.startswith("socket_")}
    if sentinel_url.sentinel_username:
        sentinel_kwargs["username"] = sentinel_url.sentinel_username
    if sentinel_url.sentinel_password:
        sentinel_kwargs["password"] = sentinel_url.sentinel_password
    sentinel = Sentinel(sentinel_url.sentinels,  # type: ignore[no-untyped-call]
                        sentinel_kwargs={**sentinel_kwargs, **tls})
    client: SentinelRedis = sentinel.master_for(
        sentinel_url.service_name, redis_class=SentinelRedis, db=sentinel_url.db,
        username=sentinel_url.username, password=sentinel_url.password, **tls, **options)
    client.manager = sentinel
    return client


REPLICA_WAIT_MS = 1000
"""How long a registry write waits for a replica's acknowledgement (Sentinel sets only)."""


def replicas_to_wait_for(client: aioredis.Redis) -> int:
    """Replicas a registry write waits for: one behind Sentinel (whose failover promotes a
    replica: a write only the old primary had would be lost), none for a single server."""
    return 1 if isinstance(client, SentinelRedis) else 0


async def write_replicated(client: aioredis.Redis, build: Callable[[Any], None],
                           what: str) -> list[Any]:
    """Run the writes ``build`` queues on one pipeline, then ``WAIT`` for a replica.

    Replication is asynchronous: a write the primary acknowledged but no replica has yet
    is lost when the primary dies and a replica is promoted. Registrations are written
    once (nothing re-asserts them), so they wait until a replica has them — at most
    REPLICA_WAIT_MS, then the write stands with a warning (a replica down must not stop
    registrations). Returns the results of ``build``'s commands.
    """
    wanted = replicas_to_wait_for(client)
    async with client.pipeline(transaction=False) as pipe:
        build(pipe)
        if wanted:
            pipe.wait(wanted, REPLICA_WAIT_MS)
        results: list[Any] = await pipe.execute()
    if not wanted:
        return results
    if int(results[-1]) < wanted:
        log.warning("%s: written on the primary, not yet on a replica after %d ms (a failover "
                    "now would lose it)", what, REPLICA_WAIT_MS)
    return results[:-1]


def open_redis(redis: aioredis.Redis | str | None) -> tuple[aioredis.Redis, bool]:
    """A client for ``redis`` (a client to share, or a URL); True when opened here."""
    if isinstance(redis, aioredis.Redis):
        return redis, False
    return connect_redis(redis, socket_timeout=2.0, socket_connect_timeout=2.0), True


class StateStore(Protocol):
    """What services need from durable state; every call may raise on an outage."""

    async def put_many(self, items: dict[str, bytes], ttl_s: float) -> None: ...

    async def get_pattern(self, pattern: str) -> dict[str, bytes]: ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


class RedisStateStore:
    """StateStore on redis-py asyncio; short timeouts so an outage is noticed, not waited on."""

    def __init__(self, url: str | None = None, *, keys: RedisKeys | None = None) -> None:
        self.url = redis_url(url)
        self.keys = keys or RedisKeys()
        self._redis: aioredis.Redis = connect_redis(
            self.url,
            socket_timeout=1.0,
            socket_connect_timeout=1.0,
            health_check_interval=5,
            retry_on_timeout=False,
        )

    async def put_many(self, items: dict[str, bytes], ttl_s: float) -> None:
        if not items:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for key, value in items.items():
                pipe.set(key, value, px=int(ttl_s * 1000))
            await pipe.execute()

    async def get_pattern(self, pattern: str) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        keys = [k async for k in self._redis.scan_iter(match=pattern, count=500)]
        if not keys:
            return out
        values = await self._redis.mget(keys)
        for key, value in zip(keys, values, strict=True):
            if value is not None:
                name = key.decode() if isinstance(key, bytes) else str(key)
                out[name] = value if isinstance(value, bytes) else str(value).encode()
        return out

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except Exception:
            return False

    async def close(self) -> None:
        await self._redis.aclose()
