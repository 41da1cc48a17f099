"""Fixtures that run the real scheduler and API services for a test."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from services.api.main import serve as serve_api
from services.scheduler.main import serve as serve_scheduler
from shared.registry_view import RegistryChanged
from shared.subjects import Subjects
from tests.integration.system import Bus, InProcess, load, wait_until, write_config


@dataclass
class Stack:
    """A running scheduler (or several) and API on a test's own prefix."""

    config_path: Path
    api_url: str
    http: httpx.AsyncClient
    bus: Bus
    services: list[InProcess] = field(default_factory=list)

    async def select(self, pool: str, members: list[str], partition: str = "Common") -> str:
        r = await self.http.post(f"{self.api_url}/scheduler/select",
                                 json={"pool_name": pool, "partition": partition,
                                       "members": members})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/plain")
        return r.text

    async def wait_select(self, pool: str, members: list[str], expect: str,
                          timeout_s: float = 5.0) -> None:
        async def check() -> bool:
            return await self.select(pool, members) == expect
        await wait_until(check, timeout_s, f"select → {expect}")


StackFactory = Callable[..., Any]


@pytest.fixture
async def make_stack(tmp_path: Path, nats_url: str, redis_url: str, prefix: str
                     ) -> AsyncIterator[StackFactory]:
    """``stack = await make_stack(pools=[...], replicas=1)``: scheduler(s) + API in-process."""
    stacks: list[Stack] = []

    async def factory(pools: list[dict[str, Any]], *, replicas: int = 1,
                      **config_kwargs: Any) -> Stack:
        path = write_config(tmp_path / "config.yaml", prefix, pools, **config_kwargs)
        loaded = load(path)
        services = [InProcess(serve_scheduler, loaded, nats_url=nats_url, redis_url=redis_url)
                    for _ in range(replicas)]
        port = loaded.config.global_.api_port
        services.append(InProcess(serve_api, loaded, nats_url=nats_url, redis_url=redis_url,
                                  port=port))
        http = httpx.AsyncClient(timeout=10)
        stack = Stack(config_path=path, api_url=f"http://127.0.0.1:{port}", http=http,
                      bus=await Bus.connect(nats_url, prefix), services=services)
        stacks.append(stack)

        async def healthy() -> bool:
            for svc in services:
                if svc.task.done():
                    svc.task.result()  # surface a start-up crash instead of a time-out
            r = await http.get(f"{stack.api_url}/health")
            return r.status_code == 200
        await wait_until(healthy, 15, "API healthy")
        return stack

    yield factory
    for stack in stacks:
        for svc in reversed(stack.services):
            await svc.stop()
        await stack.http.aclose()
        await stack.bus.close()


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[NATS]:
    """The test's own NATS connection, drained at the end."""
    conn = await nats.connect(nats_url)
    yield conn
    with contextlib.suppress(Exception):
        await conn.drain()


@pytest.fixture
async def changes(nats_url: str, prefix: str) -> AsyncIterator[list[tuple[str, str, str]]]:
    """Every ``registry.changed`` event of the test, as (kind, name, op)."""
    seen: list[tuple[str, str, str]] = []
    nc: NATS = await nats.connect(nats_url)

    async def on_change(msg: Msg) -> None:
        event = msgspec.json.decode(msg.data, type=RegistryChanged)
        seen.append((event.kind, event.name, event.op))

    await nc.subscribe(Subjects(prefix).registry_changed, cb=on_change)
    yield seen
    await nc.drain()


from tests.integration.fleet import make_fleet  # noqa: E402,F401  (fixture)
