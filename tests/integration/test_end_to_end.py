"""The whole select path with real parts: F5 emulator → collector → NATS → scheduler → API."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from pathlib import Path

import httpx
import pytest

from services.api.main import serve as serve_api
from services.autoscaler.main import serve as serve_autoscaler
from services.collector.main import serve as serve_collector
from services.doubles.f5_emulator import F5Emulator
from services.doubles.metrics_server import MetricsDouble
from services.scheduler.main import serve as serve_scheduler
from shared.http_server import RunningServer, start_app
from tests.integration.system import InProcess, edit_config, load, wait_until, write_config

pytestmark = pytest.mark.integration

PASSWORD_ENV = "LLMSCHED_TEST_F5_PASSWORD"


async def test_f5_pool_end_to_end(tmp_path: Path, nats_url: str, redis_url: str,
                                  prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSWORD_ENV, "s3cret")
    engines = [MetricsDouble(engine="vllm", model="m", waiting=0, running=1, kv_usage=0.2)
               for _ in range(3)]
    servers: list[RunningServer] = [await start_app(e) for e in engines]
    keys = [f"127.0.0.1:{s.port}" for s in servers]
    emulator = F5Emulator(users={"admin": "s3cret"}, token_lifetime=2)
    emulator.set_pool("llm-pool", keys, partition="Tenant1")
    f5 = await start_app(emulator)
    path = write_config(tmp_path / "config.yaml", prefix, [{
        "name": "llm-pool", "partition": "Tenant1", "engine_type": "vllm",
        "metrics": {"timeout": 1},
        "fallback": {"member_waiting_queue_threshold": 15},
    }], metrics_ms=200, extra={"f5": {"host": "127.0.0.1", "port": f5.port, "scheme": "http",
                                      "username": "admin", "password_env": PASSWORD_ENV}})
    loaded = load(path)
    port = loaded.config.global_.api_port
    kw = {"nats_url": nats_url, "redis_url": redis_url}
    services = [InProcess(serve_scheduler, loaded, **kw), InProcess(serve_collector, loaded, **kw),
                InProcess(serve_autoscaler, loaded, **kw),
                InProcess(serve_api, loaded, port=port, **kw)]
    api = f"http://127.0.0.1:{port}"
    body = {"pool_name": "llm-pool", "partition": "Tenant1", "members": keys}
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            async def selects_member() -> bool:
                r = await http.post(f"{api}/scheduler/select", json=body)
                return r.text in keys

            await wait_until(selects_member, 15, "a member selected from F5 membership")
            # Raising one engine's waiting queue shifts the shares /analyze reports.
            engines[0].set(waiting=10)
            engines[1].set(waiting=0)
            engines[2].set(waiting=0)

            async def shares_shifted() -> bool:
                r = await http.post(f"{api}/pools/llm-pool/Tenant1/analyze?iterations=2000",
                                    json=body)
                analysis = r.json()["member_analysis"]
                return bool(analysis[keys[0]]["theoretical_probability"] <
                            analysis[keys[1]]["theoretical_probability"] / 2)

            await wait_until(shares_shifted, 10, "engine 0's share to drop")
            # Over the threshold: engine 0 is never chosen.
            engines[0].set(waiting=20)

            async def first_over() -> bool:  # the scheduler has the new figure
                r = await http.get(f"{api}/pools/llm-pool/Tenant1/status")
                member = next(m for m in r.json()["members"] if m["key"] == keys[0])
                return bool(member["metrics"]["waiting_queue"] == 20)
            await wait_until(first_over, 15, "engine 0's waiting queue of 20 in the status")
            got = Counter([(await http.post(f"{api}/scheduler/select", json=body)).text
                           for _ in range(40)])
            assert keys[0] not in got and set(got) <= set(keys[1:]), got
            # F5 disables a member: it leaves selection.
            emulator.set_member("llm-pool", keys[1], session="user-disabled",
                                partition="Tenant1")

            async def only_third() -> bool:
                answers = {(await http.post(f"{api}/scheduler/select", json=body)).text
                           for _ in range(20)}
                return answers == {keys[2]}

            await wait_until(only_third, 10, "disabled member to leave selection")
            # Token expiry (2 s lifetime) was survived by logging in again.
            await asyncio.sleep(2.5)
            await wait_until(only_third, 15, "selection after F5 token expiry")
            assert emulator.counters.logins >= 2
            # pool_fallback written into the file answers fallback within `interval`.
            edit_config(path, lambda d: d["pools"][0]["fallback"].update(pool_fallback=True))

            async def fallback() -> bool:
                r = await http.post(f"{api}/scheduler/select", json=body)
                return r.text == "fallback"

            await wait_until(fallback, 15, "fallback after hot reload")
            health = (await http.get(f"{api}/health")).json()
            assert health["status"] == "healthy"
            assert "s3cret" not in str(health)
    finally:
        for svc in reversed(services):
            await svc.stop()
        for s in [f5, *servers]:
            await s.stop()
    assert os.environ[PASSWORD_ENV] == "s3cret"


async def test_scrape_failure_makes_member_stale_then_recovers(
        tmp_path: Path, nats_url: str, redis_url: str, prefix: str) -> None:
    engines = [MetricsDouble(engine="sglang", model="m", waiting=0, running=1, kv_usage=0.1)
               for _ in range(2)]
    servers = [await start_app(e) for e in engines]
    keys = [f"127.0.0.1:{s.port}" for s in servers]
    path = write_config(tmp_path / "config.yaml", prefix, [{
        "name": "sg", "engine_type": "sglang", "source": "static", "members": keys,
        "metrics": {"timeout": 0.3}}], metrics_ms=200)
    loaded = load(path)
    port = loaded.config.global_.api_port
    kw = {"nats_url": nats_url, "redis_url": redis_url}
    services = [InProcess(serve_scheduler, loaded, **kw), InProcess(serve_collector, loaded, **kw),
                InProcess(serve_api, loaded, port=port, **kw)]
    api = f"http://127.0.0.1:{port}"
    body = {"pool_name": "sg", "partition": "Common", "members": keys}
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            async def both_seen() -> bool:
                r = await http.get(f"{api}/pools/sg/Common/status")
                return r.status_code == 200 and all(not m["stale"] for m in r.json()["members"])

            await wait_until(both_seen, 10, "both members measured")
            engines[0].set(status=500)

            async def first_gone() -> bool:
                answers = {(await http.post(f"{api}/scheduler/select", json=body)).text
                           for _ in range(20)}
                return answers == {keys[1]}

            await wait_until(first_gone, 15, "failing member to go stale")
            status = (await http.get(f"{api}/pools/sg/Common/status")).json()
            first = next(m for m in status["members"] if m["key"] == keys[0])
            assert first["stale"] and "500" in (first["scrape_error"] or "")
            engines[0].set(status=200, malformed=True)
            await asyncio.sleep(0.5)
            status = (await http.get(f"{api}/pools/sg/Common/status")).json()
            first = next(m for m in status["members"] if m["key"] == keys[0])
            assert first["stale"] and first["scrape_error"]
            engines[0].set(malformed=False)

            async def back() -> bool:
                answers = Counter([(await http.post(f"{api}/scheduler/select", json=body)).text
                                   for _ in range(30)])
                return set(answers) == set(keys)

            await wait_until(back, 15, "member back after recovery")
    finally:
        for svc in reversed(services):
            await svc.stop()
        for s in servers:
            await s.stop()
