"""Survival: a scheduler replica killed mid-traffic, and Redis stopped then started again."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import httpx
import pytest

from services.api.main import serve as serve_api
from services.scheduler.main import serve as serve_scheduler
from tests.integration.system import (
    Bus,
    ChildProcess,
    InProcess,
    edit_config,
    load,
    wait_until,
    write_config,
)
from tests.servers import private_valkey

pytestmark = pytest.mark.integration

A, B = "10.0.0.1:8001", "10.0.0.2:8001"
POOL = {"name": "p1", "engine_type": "vllm", "source": "static", "members": [A, B]}


async def test_killed_scheduler_replica_loses_no_select(tmp_path: Path, nats_url: str,
                                                        redis_url: str, prefix: str) -> None:
    # Metrics are published once: they must stay fresh (3 intervals) however slowly a busy
    # machine starts the replicas and runs the traffic. The select budget is generous too:
    # what is tested is that a request the killed replica held is retried, not how fast.
    path = write_config(tmp_path / "config.yaml", prefix, [POOL], metrics_ms=60_000,
                        log_level="INFO")
    edit_config(path, lambda doc: doc["global"].update(select_timeout_ms=4000))
    loaded = load(path)
    replicas = [ChildProcess("scheduler", path, nats_url, redis_url, tmp_path)
                for _ in range(2)]
    port = loaded.config.global_.api_port
    api = InProcess(serve_api, loaded, nats_url=nats_url, redis_url=redis_url, port=port)
    bus = await Bus.connect(nats_url, prefix)
    url = f"http://127.0.0.1:{port}"
    body = {"pool_name": "p1", "members": [A, B]}
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            async def two_replicas() -> bool:
                r = await http.get(f"{url}/health")
                return r.status_code == 200 and r.json()["checks"]["scheduler_replicas"] == 2

            await wait_until(two_replicas, 30, "two scheduler processes")
            await bus.snapshot("p1", [A, B])
            await bus.metrics("p1", {A: (0, 1, 0.1), B: (2, 1, 0.5)})

            async def member() -> bool:
                # The replicas share the requests: a run of answers means both know the pool.
                for _ in range(20):
                    r = await http.post(f"{url}/scheduler/select", json=body)
                    if r.text not in (A, B):
                        return False
                return True

            await wait_until(member, 30, "both replicas to know the pool")
            results: Counter[str] = Counter()

            async def worker(n: int) -> None:
                for _ in range(n):
                    r = await http.post(f"{url}/scheduler/select", json=body)
                    results[f"{r.status_code}:{r.text if r.status_code != 200 else 'ok'}"] += 1
                    if r.status_code == 200:
                        results[r.text] += 1

            traffic = asyncio.gather(*(worker(150) for _ in range(4)))
            await asyncio.sleep(0.5)
            replicas[0].kill()
            await traffic
            assert replicas[0].proc.returncode is not None
            assert results["200:ok"] == 600, results
            assert results[A] + results[B] == 600, results
            r = await http.get(f"{url}/health")
            assert r.json()["checks"]["scheduler_replicas"] == 1
    finally:
        await api.stop()
        for rep in replicas:
            rep.terminate()
        await bus.close()


async def test_redis_outage_degrades_and_recovers(tmp_path: Path, nats_url: str,
                                                  prefix: str) -> None:
    valkey = private_valkey().start()
    path = write_config(tmp_path / "config.yaml", prefix, [POOL], metrics_ms=5000,
                        log_level="INFO")
    loaded = load(path)
    port = loaded.config.global_.api_port
    kw = {"nats_url": nats_url, "redis_url": valkey.url}
    scheduler = InProcess(serve_scheduler, loaded, **kw)
    api = InProcess(serve_api, loaded, port=port, **kw)
    bus = await Bus.connect(nats_url, prefix)
    url = f"http://127.0.0.1:{port}"
    body = {"pool_name": "p1", "members": [A, B]}
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            async def healthy() -> bool:
                r = await http.get(f"{url}/health")
                return r.status_code == 200 and r.json()["status"] == "healthy"

            await wait_until(healthy, 15, "healthy start")
            await bus.snapshot("p1", [A, B])
            await bus.metrics("p1", {A: (0, 1, 0.1), B: (9, 1, 1.0)})

            async def picks_a() -> bool:
                return (await http.post(f"{url}/scheduler/select", json=body)).text == A

            await wait_until(picks_a, 15, "selects from live events")
            valkey.stop()

            async def degraded() -> bool:
                r = await http.get(f"{url}/health")
                return r.status_code == 200 and r.json()["status"] == "degraded"

            await wait_until(degraded, 10, "health to report degraded")
            for _ in range(50):
                r = await http.post(f"{url}/scheduler/select", json=body)
                assert r.status_code == 200 and r.text == A
            # New facts during the outage are served and reach Redis once it is back.
            await bus.metrics("p1", {A: (9, 1, 1.0), B: (0, 1, 0.1)})

            async def picks_b() -> bool:
                return (await http.post(f"{url}/scheduler/select", json=body)).text == B

            await wait_until(picks_b, 15, "selects follow new metrics during the outage")
            valkey.start()
            await wait_until(healthy, 15, "healthy after Redis is back")
            # A fresh replica, started after the outage, warms up from Redis alone.
            await scheduler.stop()
            replacement = InProcess(serve_scheduler, loaded, **kw)
            try:
                await wait_until(picks_b, 10, "restarted replica warmed up from Redis")
            finally:
                await replacement.stop()
    finally:
        await api.stop()
        await scheduler.stop()
        await bus.close()
        valkey.stop()
