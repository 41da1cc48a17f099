"""A PD pool on real services: simulated prefill and decode engines, collector, scheduler, API."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.api.main import serve as serve_api
from services.collector.main import serve as serve_collector
from services.enginesim.config import EngineConfig
from services.enginesim.launcher import RunningEngine, start_engine
from services.scheduler.main import serve as serve_scheduler
from tests.integration.system import InProcess, load, wait_until, write_config

SIM = EngineConfig(model="/models/tiny", served_model_name=("tiny",), max_model_len=2048,
                   max_num_seqs=16, num_gpu_blocks=2048, speed=20.0, seed=7)
FAST_PD = {"health_check_interval": 0.2, "health_check_timeout": 1.0,
           "health_failure_threshold": 2, "health_success_threshold": 2}
"""Health checks quick enough for a test (a failure shows within about half a second)."""


@dataclass
class PDStack:
    """Engines by id, the services, and an HTTP client on the API."""

    api: str
    http: httpx.AsyncClient
    engines: dict[str, RunningEngine]
    config_path: Path
    services: list[InProcess] = field(default_factory=list)

    def key(self, engine_id: str) -> str:
        return self.engines[engine_id].url.removeprefix("http://")

    def id_of(self, key: str) -> str:
        return next(i for i in self.engines if self.key(i) == key)

    async def chat(self, content: str = "hello there", max_tokens: int = 8,
                   timeout_s: float = 30.0, **extra: Any) -> httpx.Response:
        return await self.http.post(f"{self.api}/v1/chat/completions", json={
            "model": "chat", "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens, **extra}, timeout=timeout_s)

    async def instances(self, role: str | None = None) -> dict[str, dict[str, Any]]:
        params = {"role": role} if role else {}
        r = await self.http.get(f"{self.api}/admin/pd/chat/instances", params=params)
        assert r.status_code == 200, r.text
        return {i["id"]: i for i in r.json()["instances"]}

    async def routable(self, role: str) -> set[str]:
        """Ids of the role's members the scheduler may route to now."""
        r = await self.http.get(f"{self.api}/pools/chat@{role}/Common/status")
        if r.status_code != 200:
            return set()
        return {self.id_of(f"{m['ip']}:{m['port']}") for m in r.json()["members"]
                if m["available"] and not m.get("excluded")}

    async def wait_routable(self, role: str, ids: set[str], timeout_s: float = 60.0) -> None:
        seen: list[set[str]] = []

        async def check() -> bool:
            now = await self.routable(role)
            if not seen or seen[-1] != now:
                seen.append(now)
            return now == ids
        try:
            await wait_until(check, timeout_s, f"{role} routable = {sorted(ids)}")
        except AssertionError as err:
            raise AssertionError(f"{err}; seen {seen}") from None


MakePD = Callable[..., Awaitable[PDStack]]


@pytest.fixture(name="make_pd")
async def make_pd_fixture(tmp_path: Path, nats_url: str, redis_url: str, prefix: str
                  ) -> AsyncIterator[MakePD]:
    """``stack = await make_pd({"p1": ("prefill", 20.0), ...}, pd={...})``."""
    stacks: list[PDStack] = []

    async def factory(engines: dict[str, tuple[str, float]], *, pd: dict[str, Any] | None = None,
                      sim: EngineConfig = SIM, extra: dict[str, Any] | None = None,
                      listed: bool = True) -> PDStack:
        running: dict[str, RunningEngine] = {}
        for i, (engine_id, (role, speed)) in enumerate(engines.items()):
            running[engine_id] = await start_engine(dataclasses.replace(
                sim, role=role, speed=speed, seed=sim.seed + i))
        roles: dict[str, list[dict[str, Any]]] = {"prefill": [], "decode": []}
        for engine_id, (role, _) in engines.items():
            server = running[engine_id].server
            if listed:
                roles[role].append({"id": engine_id, "host": "127.0.0.1", "port": server.port})
        pool = {"name": "chat", "engine_type": "vllm", "served_model_name": "tiny",
                "roles": roles, "pd": {**FAST_PD, **(pd or {})}}
        path = write_config(tmp_path / "config.yaml", prefix, [pool], metrics_ms=100,
                            log_level="INFO", extra=extra)
        loaded = load(path)
        port = loaded.config.global_.api_port
        services = [InProcess(serve_scheduler, loaded, nats_url=nats_url, redis_url=redis_url),
                    InProcess(serve_collector, loaded, nats_url=nats_url, redis_url=redis_url),
                    InProcess(serve_api, loaded, nats_url=nats_url, redis_url=redis_url,
                              port=port)]
        stack = PDStack(api=f"http://127.0.0.1:{port}", http=httpx.AsyncClient(timeout=30),
                        engines=running, config_path=path, services=services)
        stacks.append(stack)

        async def healthy() -> bool:
            for svc in services:
                if svc.task.done():
                    svc.task.result()
            return (await stack.http.get(f"{stack.api}/health")).status_code == 200
        await wait_until(healthy, 60, "API healthy")
        if listed:
            for role in ("prefill", "decode"):
                await stack.wait_routable(role, {i for i, (r, _) in engines.items()
                                                 if r == role})
        return stack

    yield factory
    for stack in stacks:
        for svc in reversed(stack.services):
            await svc.stop()
        await stack.http.aclose()
        await asyncio.gather(*(e.stop(grace=1.0) for e in stack.engines.values()),
                             return_exceptions=True)
