"""Sleeping engines leave selection in F5, static and workers pools, and come back awake."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.api.main import serve as serve_api
from services.collector.main import serve as serve_collector
from services.doubles.f5_emulator import F5Emulator
from services.enginesim.config import EngineConfig
from services.enginesim.launcher import RunningEngine, start_engine
from services.scheduler.main import serve as serve_scheduler
from services.worker.instances import WorkerSettings
from services.worker.main import Worker, WorkerOptions
from shared.http_server import start_app
from tests.integration.system import InProcess, edit_config, load, wait_until, write_config

pytestmark = pytest.mark.integration

PASSWORD_ENV = "LLMSCHED_TEST_F5_PASSWORD"
VLLM_ASLEEP = "asleep: vllm:engine_sleep_state{sleep_state=awake}=0"
PROBE_ASLEEP = "asleep: GET /is_sleeping is_sleeping=true"
ENGINE = EngineConfig(model="/models/tiny", served_model_name=("tiny",), max_model_len=512,
                      max_num_seqs=8, num_gpu_blocks=1024, speed=20.0, seed=7)
# An engine type whose metrics say nothing about sleep: only the probe tells.
DEV_VLLM = {"waiting_queue": ["vllm:num_requests_waiting"],
            "running_req": ["vllm:num_requests_running"],
            "cache_usage": ["vllm:kv_cache_usage_perc"],
            "asleep_probe": {"path": "/is_sleeping", "field": "is_sleeping"}}
ROUNDS = 150


class Api:
    """Selects and pool status through the real API."""

    def __init__(self, http: httpx.AsyncClient, url: str) -> None:
        self.http = http
        self.url = url

    async def select(self, pool: str, members: list[str], partition: str = "Common") -> str:
        r = await self.http.post(f"{self.url}/scheduler/select", json={
            "pool_name": pool, "partition": partition, "members": members})
        assert r.status_code == 200, r.text
        return r.text

    async def answers(self, pool: str, members: list[str], n: int,
                      partition: str = "Common") -> Counter[str]:
        return Counter([await self.select(pool, members, partition) for _ in range(n)])

    async def member(self, pool: str, key: str, partition: str = "Common") -> dict[str, Any]:
        r = await self.http.get(f"{self.url}/pools/{pool}/{partition}/status")
        assert r.status_code == 200, r.text
        found = [m for m in r.json()["members"] if m["key"] == key]
        assert found, f"{key} not in the status of {pool}: {r.text}"
        member: dict[str, Any] = found[0]
        return member


@asynccontextmanager
async def running_stack(path: Path, nats_url: str, redis_url: str) -> AsyncIterator[Api]:
    """Scheduler, collector and API in-process on ``path``'s config."""
    loaded = load(path)
    port = loaded.config.global_.api_port
    kw = {"nats_url": nats_url, "redis_url": redis_url}
    services = [InProcess(serve_scheduler, loaded, **kw), InProcess(serve_collector, loaded, **kw),
                InProcess(serve_api, loaded, port=port, **kw)]
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            api = Api(http, f"http://127.0.0.1:{port}")

            async def healthy() -> bool:
                for svc in services:
                    if svc.task.done():
                        svc.task.result()  # a start-up crash, not a time-out
                return (await http.get(f"{api.url}/health")).status_code == 200

            await wait_until(healthy, 15, "API healthy")
            yield api
    finally:
        for svc in reversed(services):
            await svc.stop()


async def poll(check: Callable[[], Awaitable[bool]], timeout_s: float, what: str,
               seen: Callable[[], object]) -> None:
    """wait_until that says what it last saw when it times out."""
    try:
        await wait_until(check, timeout_s, what)
    except AssertionError as err:
        raise AssertionError(f"{err}; last seen: {seen()}") from None


async def expect_out(api: Api, pools: list[tuple[str, str, list[str]]], sleeper: str,
                     excluded: dict[str, str]) -> None:
    """Every pool stops choosing ``sleeper`` and its status says why."""
    for pool, partition, members in pools:
        await _out_of_one(api, pool, partition, members, sleeper, excluded[pool])


async def _out_of_one(api: Api, pool: str, partition: str, members: list[str], sleeper: str,
                      excluded: str) -> None:
    last: dict[str, object] = {}

    async def out() -> bool:
        got = await api.answers(pool, members, 30, partition)
        status = await api.member(pool, sleeper, partition)
        last.update(answers=got, status=status)
        return (sleeper not in got and status.get("asleep") is True
                and status.get("excluded") == excluded)

    await poll(out, 15, f"{sleeper} out of selection in {pool}", lambda: last)
    got = await api.answers(pool, members, ROUNDS, partition)
    assert sleeper not in got and set(got) <= set(members), (pool, got)


async def expect_back(api: Api, pools: list[tuple[str, str, list[str]]], sleeper: str) -> None:
    """Every pool chooses ``sleeper`` again and its status is clear."""
    for pool, partition, members in pools:
        await _back_in_one(api, pool, partition, members, sleeper)


async def _back_in_one(api: Api, pool: str, partition: str, members: list[str],
                       sleeper: str) -> None:
    last: dict[str, object] = {}

    async def back() -> bool:
        got = await api.answers(pool, members, 30, partition)
        last.update(answers=got)
        return sleeper in got

    await poll(back, 15, f"{sleeper} selected in {pool}", lambda: last)
    status = await api.member(pool, sleeper, partition)
    assert not status.get("asleep") and status.get("excluded") is None, status


async def test_sleeping_engine_leaves_f5_static_and_probe_pools(
        tmp_path: Path, nats_url: str, redis_url: str, prefix: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "s3cret")
    engines: list[RunningEngine] = [await start_engine(ENGINE) for _ in range(3)]
    keys = [f"127.0.0.1:{e.server.port}" for e in engines]
    emulator = F5Emulator(users={"admin": "s3cret"})
    emulator.set_pool("f5-pool", keys, partition="Tenant1")
    f5 = await start_app(emulator)
    path = write_config(tmp_path / "config.yaml", prefix, [
        {"name": "f5-pool", "partition": "Tenant1", "engine_type": "vllm", "source": "f5",
         "metrics": {"timeout": 1}},
        {"name": "static-pool", "engine_type": "vllm", "source": "static", "members": keys,
         "metrics": {"timeout": 1}},
        {"name": "probe-pool", "engine_type": "dev-vllm", "source": "static", "members": keys,
         "metrics": {"timeout": 1}},
    ], metrics_ms=200, log_level="INFO",
        # Stale after 2 s rather than 3 x 200 ms: with a core busy, a late scrape round once
        # left the two awake members without fresh metrics for a moment (2 of 150 selects
        # answered none, no_metrics). Sleep is read from the metrics, not from their age.
        stale_after_intervals=10, extra={
        "f5": {"host": "127.0.0.1", "port": f5.port, "scheme": "http", "username": "admin",
               "password_env": PASSWORD_ENV},
        "engines": {"dev-vllm": DEV_VLLM}})
    pools = [("f5-pool", "Tenant1", keys), ("static-pool", "Common", keys),
             ("probe-pool", "Common", keys)]
    excluded = {"f5-pool": VLLM_ASLEEP, "static-pool": VLLM_ASLEEP, "probe-pool": PROBE_ASLEEP}
    try:
        async with running_stack(path, nats_url, redis_url) as api:
            await expect_back(api, pools, keys[0])   # everyone measured and selectable
            async with httpx.AsyncClient(timeout=10) as http:
                r = await http.post(f"{engines[0].url}/sleep", params={"level": "1"})
                assert r.status_code == 200, r.text
                metrics = (await http.get(f"{engines[0].url}/metrics")).text
                assert 'sleep_state="awake"} 0' in metrics, "the engine must say it sleeps"
                await expect_out(api, pools, keys[0], excluded)
                r = await http.post(f"{engines[0].url}/wake_up")
                assert r.status_code == 200, r.text
            await expect_back(api, pools, keys[0])
    finally:
        await f5.stop()
        for engine in engines:
            await engine.stop()


async def test_instance_its_worker_reports_sleeping_leaves_selection(
        tmp_path: Path, nats_url: str, redis_url: str, prefix: str) -> None:
    # SGLang shows no sleep in its metrics: only the worker's heartbeat says so.
    path = write_config(tmp_path / "config.yaml", prefix, [
        {"name": "chat-pool", "engine_type": "sglang", "source": "workers", "model": "chat",
         "metrics": {"timeout": 1}},
        # the instances' addresses are filled in once they run
        {"name": "chat-static", "engine_type": "sglang", "source": "static",
         "members": ["127.0.0.1:1"], "metrics": {"timeout": 1}},
    ], metrics_ms=200, log_level="INFO")
    worker = None
    try:
        async with running_stack(path, nats_url, redis_url) as api:
            worker = await Worker(WorkerOptions(
                port=0, manager_url=api.url, heartbeat_interval_s=0.2, worker_id="w-sleep",
                settings=WorkerSettings(log_dir=tmp_path / "worker-logs"))).start()
            http = api.http
            for extra in ({}, {"add_replica": True}):
                r = await http.post(f"{worker.url}/instances/start", json={
                    "alias": "chat", "model_name": "sim-8b", "engine": "sglang", **extra})
                assert r.status_code in (200, 201), r.text
            listing = (await http.get(f"{worker.url}/instances")).json()
            listing = listing["instances"] if isinstance(listing, dict) else listing
            by_alias = {i["alias"]: i["url"].split("//", 1)[1].rstrip("/") for i in listing}
            assert len(by_alias) == 2, listing
            keys = sorted(by_alias.values())
            edit_config(path, lambda doc: doc["pools"][1].update(members=keys))
            pools = [("chat-static", "Common", keys), ("chat-pool", "Common", keys)]
            sleeper_alias = "chat"
            sleeper = by_alias[sleeper_alias]
            await expect_back(api, pools, sleeper)
            r = await http.post(f"{worker.url}/instances/{sleeper_alias}/sleep",
                                params={"level": "1"})
            assert r.status_code == 200, r.text
            reason = f"asleep: worker w-sleep reports instance {sleeper_alias} sleeping"
            await expect_out(api, pools, sleeper, {p[0]: reason for p in pools})
            r = await http.post(f"{worker.url}/instances/{sleeper_alias}/wake")
            assert r.status_code == 200, r.text
            await expect_back(api, pools, sleeper)
    finally:
        if worker is not None:
            await worker.stop()
