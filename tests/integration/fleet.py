"""The whole system in one test: scheduler(s), collector, API, autoscaler(s) and a worker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.api.main import serve as serve_api
from services.autoscaler.main import serve as serve_autoscaler
from services.collector.main import serve as serve_collector
from services.scheduler.main import serve as serve_scheduler
from services.worker.instances import WorkerSettings
from services.worker.main import Worker, WorkerOptions
from tests.integration.system import InProcess, edit_config, load, wait_until, write_config

FAKE = {"alias": "fake-model", "model_name": "__fake__", "fake": True,
        "fake_response": "FAKE_OK", "fake_delay_ms": 200, "fake_capacity": 2}


@dataclass
class Fleet:
    """Running services on a test's own prefix; ``api`` is the API's base URL."""

    api: str
    http: httpx.AsyncClient
    config_path: Path
    kwargs: dict[str, Any]
    services: dict[str, InProcess] = field(default_factory=dict)
    workers: list[Worker] = field(default_factory=list)
    tmp: Path = Path(".")

    async def register(self, body: dict[str, Any]) -> dict[str, Any]:
        r = await self.http.post(f"{self.api}/admin/models/register", json=body)
        assert r.status_code in (200, 201), r.text
        result: dict[str, Any] = r.json()
        return result

    async def status(self, alias: str) -> dict[str, Any]:
        r = await self.http.get(f"{self.api}/admin/status")
        assert r.status_code == 200, r.text
        for model in r.json()["models"]:
            if model["alias"] == alias:
                found: dict[str, Any] = model
                return found
        raise AssertionError(f"{alias} not in /admin/status: {r.text}")

    async def states(self, alias: str) -> dict[str, str]:
        """Instance name → ACTIVE / SLEEP_1 / ... as /admin/status shows it."""
        return {i["instance"]: i["state"] for i in (await self.status(alias))["instances"]}

    async def wait_states(self, alias: str, check: Callable[[dict[str, str]], bool],
                          timeout_s: float, what: str) -> dict[str, str]:
        seen: list[dict[str, str]] = []

        async def ok() -> bool:
            states = await self.states(alias)
            if not seen or seen[-1] != states:
                seen.append(states)
            return check(states)

        try:
            await wait_until(ok, timeout_s, what)
        except AssertionError as err:
            raise AssertionError(f"{err}; states seen: {seen}") from None
        return seen[-1]

    async def start(self, name: str) -> None:
        """(Re)start one service in-process."""
        serve = SERVES[name.split("-")[0]]
        loaded = load(self.config_path)
        extra = {"port": loaded.config.global_.api_port} if name.startswith("api") else {}
        self.services[name] = InProcess(serve, loaded, **self.kwargs, **extra)

    async def stop(self, name: str) -> None:
        await self.services.pop(name).stop()

    async def add_worker(self, worker_id: str = "w1", **options: Any) -> Worker:
        settings = WorkerSettings(log_dir=self.tmp / f"logs-{worker_id}")
        worker = await Worker(WorkerOptions(port=0, manager_url=self.api, worker_id=worker_id,
                                            heartbeat_interval_s=0.2, settings=settings,
                                            **options)).start()
        self.workers.append(worker)
        return worker


SERVES: dict[str, Callable[..., Awaitable[None]]] = {
    "scheduler": serve_scheduler, "collector": serve_collector, "api": serve_api,
    "autoscaler": serve_autoscaler}

MakeFleet = Callable[..., Awaitable[Fleet]]


@pytest.fixture
async def make_fleet(tmp_path: Path, nats_url: str, redis_url: str, prefix: str
                     ) -> AsyncIterator[MakeFleet]:
    """``fleet = await make_fleet(autoscaling={...}, pools=[...], autoscalers=1)``;
    ``global_={...}`` sets keys of the config's ``global`` section before anything starts."""
    fleets: list[Fleet] = []

    async def factory(*, pools: list[dict[str, Any]] | None = None, schedulers: int = 1,
                      autoscalers: int = 1, autoscaling: dict[str, Any] | None = None,
                      gateway: dict[str, Any] | None = None, worker: bool = True,
                      modes: list[dict[str, Any]] | None = None,
                      config: dict[str, Any] | None = None,
                      global_: dict[str, Any] | None = None,
                      stale_after_intervals: int | None = None) -> Fleet:
        extra: dict[str, Any] = {"autoscaling": {"scale_interval_s": 0.5, "cooldown_s": 0.5,
                                                 "down_after_s": 1.0, "drain_timeout_s": 10,
                                                 **(autoscaling or {})}}
        if gateway:
            extra["gateway"] = gateway
        if modes:
            extra["modes"] = modes
        extra.update(config or {})  # other top-level sections (metrics, engines, ...)
        path = write_config(tmp_path / "config.yaml", prefix, pools or [], metrics_ms=200,
                            stale_after_intervals=stale_after_intervals, extra=extra)
        # Keys of the ``global`` section, merged (not replacing it); write_config already
        # gives the in-process select budget unless the test sets its own.
        edit_config(path, lambda doc: doc["global"].update(global_ or {}))
        loaded = load(path)
        port = loaded.config.global_.api_port
        fleet = Fleet(api=f"http://127.0.0.1:{port}", http=httpx.AsyncClient(timeout=60),
                      config_path=path, kwargs={"nats_url": nats_url, "redis_url": redis_url},
                      tmp=tmp_path)
        fleets.append(fleet)
        for i in range(schedulers):
            await fleet.start(f"scheduler-{i + 1}")
        await fleet.start("collector")
        await fleet.start("api")
        for i in range(autoscalers):
            await fleet.start(f"autoscaler-{i + 1}")

        async def healthy() -> bool:
            for svc in fleet.services.values():
                if svc.task.done():
                    svc.task.result()
            return (await fleet.http.get(f"{fleet.api}/health")).status_code == 200

        await wait_until(healthy, 20, "API healthy")
        if worker:
            await fleet.add_worker()
        return fleet

    yield factory
    for fleet in fleets:
        for worker in fleet.workers:
            await worker.stop()
        for svc in reversed(list(fleet.services.values())):
            await svc.stop()
        await fleet.http.aclose()
        await asyncio.sleep(0)
