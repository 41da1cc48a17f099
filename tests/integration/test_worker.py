"""The worker agent against real simulated engines, and worker registration against real Redis."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI

from services.api.workers import workers_router
from services.worker.instances import WorkerSettings
from services.worker.main import Worker, WorkerOptions
from shared.http_server import RunningServer, free_port, start_app
from shared.workers import WorkerRegistry
from tests.integration.system import REPO, wait_until

FAKE = {"alias": "fake-model", "model_name": "__fake__", "fake": True,
        "fake_response": "FAKE_OK", "fake_delay_ms": 0, "fake_capacity": 4}
CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hello"}]}

StartWorker = Callable[..., Awaitable[Worker]]


@pytest.fixture
async def start_worker(tmp_path: Path) -> AsyncIterator[StartWorker]:
    """``worker = await start_worker(manager_url=..., ...)``; all are stopped afterwards."""
    workers: list[Worker] = []

    async def start(**options: Any) -> Worker:
        settings = WorkerSettings(log_dir=tmp_path / f"logs-{len(workers)}")
        worker = await Worker(WorkerOptions(port=0, settings=settings, **options)).start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        await worker.stop()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


class Manager:
    """The API's worker routes and registry, served on a real socket."""

    def __init__(self, registry: WorkerRegistry, server: RunningServer, task: asyncio.Task[None],
                 stop: asyncio.Event) -> None:
        self.registry = registry
        self.server = server
        self.url = server.url
        self._task = task
        self._stop = stop

    async def close(self) -> None:
        self._stop.set()
        await self._task
        await self.server.stop()
        await self.registry.close()


StartManager = Callable[..., Awaitable[Manager]]


@pytest.fixture
async def start_manager(redis_url: str, prefix: str) -> AsyncIterator[StartManager]:
    managers: list[Manager] = []

    async def start(*, port: int = 0, lost_after_s: float = 15.0,
                    admin_key: str | None = None) -> Manager:
        registry = WorkerRegistry(redis_url, prefix, lost_after_s=lost_after_s)
        app = FastAPI()
        app.include_router(workers_router(registry, admin_key=admin_key or ""))
        server = await start_app(app, port=port)
        stop = asyncio.Event()
        manager = Manager(registry, server, asyncio.create_task(registry.run(stop)), stop)
        managers.append(manager)
        return manager

    yield start
    for manager in managers:
        await manager.close()


async def _status(http: httpx.AsyncClient, base: str, alias: str) -> dict[str, Any]:
    r = await http.get(f"{base}/instances/{alias}/status")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def _start(http: httpx.AsyncClient, base: str, spec: dict[str, Any],
                 expect: int = 201, query: str = "") -> dict[str, Any]:
    r = await http.post(f"{base}/instances/start{query}", json=spec)
    assert r.status_code == expect, r.text
    body: dict[str, Any] = r.json()
    return body


# -- worker API over simulated instances ------------------------------------------------

async def test_start_proxy_with_openai_sdk_and_stop(start_worker: StartWorker,
                                                    http: httpx.AsyncClient) -> None:
    worker = await start_worker()
    assert (await http.get(f"{worker.url}/health")).json()["status"] == "healthy"
    info = await _start(http, worker.url, FAKE)
    assert info["alias"] == "fake-model" and info["state"] == "running"
    assert info["capacity"] == 4 and info["url"].startswith("http://127.0.0.1:")
    listed = (await http.get(f"{worker.url}/instances")).json()["instances"]
    assert [i["alias"] for i in listed] == ["fake-model"]
    assert (await http.get(f"{worker.url}/instances/fake-model")).json()["port"] == info["port"]

    client = openai.AsyncOpenAI(base_url=f"{worker.url}/proxy/fake-model/v1", api_key="none")
    reply = await client.chat.completions.create(model="fake-model",
                                                 messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == "FAKE_OK"
    stream = await client.chat.completions.create(
        model="any-name-works", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True})
    parts = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in parts if c.choices)
    assert text == "FAKE_OK"
    assert parts[-1].usage is not None and parts[-1].usage.completion_tokens >= 1
    completion = await client.completions.create(model="fake-model", prompt="say it")
    assert completion.choices[0].text == "FAKE_OK"
    await client.close()

    status = await _status(http, worker.url, "fake-model")
    assert status["requests_total"] == 3
    assert status["ttft_last"] is not None and status["ttft_avg"] is not None
    assert status["e2e_last"] >= status["ttft_last"] > 0
    assert status["inflight_requests"] == 0 and status["sleep_level_value"] == 0
    assert status["engine_reachable"] is True
    assert set(status["gpu_info"]) >= {"available_memory_gb", "utilization"}

    stopped = await http.post(f"{worker.url}/instances/fake-model/stop")
    assert stopped.status_code == 200 and stopped.json()["stopped"] is True
    assert (await http.get(f"{worker.url}/instances/fake-model")).status_code == 404
    with pytest.raises(httpx.ConnectError):
        await http.get(info["url"] + "/health")


async def test_streaming_is_not_buffered(start_worker: StartWorker,
                                         http: httpx.AsyncClient) -> None:
    worker = await start_worker()
    # A slow engine (speed 0.02: ~300 ms per token) makes buffering visible.
    await _start(http, worker.url, {"alias": "slow", "model_name": "m", "speed": 0.02})
    body = {"model": "slow", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 6, "stream": True}
    arrivals: list[float] = []
    started = time.perf_counter()
    async with http.stream("POST", f"{worker.url}/proxy/slow/v1/chat/completions",
                           json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        async for chunk in r.aiter_raw():
            if chunk:
                arrivals.append(time.perf_counter() - started)
    assert len(arrivals) >= 3, arrivals
    assert arrivals[-1] - arrivals[0] > 0.5, arrivals  # chunks arrived spread over time
    status = await _status(http, worker.url, "slow")
    assert status["ttft_last"] < status["e2e_last"] - 0.5


async def test_status_reflects_inflight_and_capacity(start_worker: StartWorker,
                                                     http: httpx.AsyncClient) -> None:
    worker = await start_worker()
    await _start(http, worker.url, {**FAKE, "fake_delay_ms": 600, "fake_capacity": 1})
    url = f"{worker.url}/proxy/fake-model/v1/chat/completions"
    first = asyncio.create_task(http.post(url, json=CHAT))
    second = asyncio.create_task(http.post(url, json=CHAT))

    async def two_inflight() -> bool:
        return bool((await _status(http, worker.url, "fake-model"))["inflight_requests"] == 2)
    await wait_until(two_inflight, 20, "two requests in flight")
    started = time.perf_counter()
    results = await asyncio.gather(first, second)
    assert all(r.status_code == 200 for r in results)
    # Capacity 1: the second request waited for the first (two delays, not one).
    assert time.perf_counter() - started > 0.6
    status = await _status(http, worker.url, "fake-model")
    assert status["inflight_requests"] == 0
    assert status["ttft_last"] >= 0.6 and status["e2e_avg"] >= 0.6
    assert status["capacity"] == 1


async def test_sleep_and_wake(start_worker: StartWorker, http: httpx.AsyncClient) -> None:
    worker = await start_worker()
    info = await _start(http, worker.url, FAKE)
    r = await http.post(f"{worker.url}/instances/fake-model/sleep?level=1")
    assert r.status_code == 200 and r.json()["state"] == "sleeping", r.text
    assert (await http.get(info["url"] + "/is_sleeping")).json() == {"is_sleeping": True}
    status = await _status(http, worker.url, "fake-model")
    assert status["sleep_level_value"] == 1 and status["is_sleeping"] is True
    refused = await http.post(f"{worker.url}/proxy/fake-model/v1/chat/completions", json=CHAT)
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["type"] == "service_unavailable_error"

    r = await http.post(f"{worker.url}/instances/fake-model/sleep", json={"level": 2})
    assert r.status_code == 200 and r.json()["sleep_level"] == 2
    assert (await _status(http, worker.url, "fake-model"))["sleep_level_value"] == 2

    r = await http.post(f"{worker.url}/instances/fake-model/wake")
    assert r.status_code == 200 and r.json()["state"] == "running"
    assert (await http.get(info["url"] + "/is_sleeping")).json() == {"is_sleeping": False}
    assert (await _status(http, worker.url, "fake-model"))["sleep_level_value"] == 0
    ok = await http.post(f"{worker.url}/proxy/fake-model/v1/chat/completions", json=CHAT)
    assert ok.status_code == 200


async def test_sleep_drains_inflight_requests_first(start_worker: StartWorker,
                                                    http: httpx.AsyncClient) -> None:
    worker = await start_worker()
    await _start(http, worker.url, {**FAKE, "fake_delay_ms": 500})
    request = asyncio.create_task(
        http.post(f"{worker.url}/proxy/fake-model/v1/chat/completions", json=CHAT))

    async def busy() -> bool:
        return bool((await _status(http, worker.url, "fake-model"))["inflight_requests"] == 1)
    await wait_until(busy, 20, "request in flight")
    r = await http.post(f"{worker.url}/instances/fake-model/sleep?level=1")
    assert r.status_code == 200
    done = await request
    assert done.status_code == 200 and "FAKE_OK" in done.text  # finished, not aborted


async def test_engine_state_changed_behind_the_workers_back(start_worker: StartWorker,
                                                            http: httpx.AsyncClient) -> None:
    worker = await start_worker()
    info = await _start(http, worker.url, FAKE)
    await http.post(info["url"] + "/sleep", params={"level": "2"})
    status = await _status(http, worker.url, "fake-model")
    assert status["sleep_level_value"] == 2 and status["state"] == "sleeping"
    await http.post(info["url"] + "/wake_up")
    assert (await _status(http, worker.url, "fake-model"))["state"] == "running"


async def test_replicas_and_conflicts(start_worker: StartWorker, http: httpx.AsyncClient) -> None:
    worker = await start_worker()
    await _start(http, worker.url, FAKE)
    conflict = await http.post(f"{worker.url}/instances/start", json=FAKE)
    assert conflict.status_code == 409 and conflict.json()["error"]["param"] == "alias"
    second = await _start(http, worker.url, {**FAKE, "add_replica": True})
    third = await _start(http, worker.url, {**FAKE, "add_replica": True})
    assert (second["alias"], second["replica"]) == ("fake-model-r2", 2)
    assert third["alias"] == "fake-model-r3"
    assert second["served_model_names"] == ["fake-model", "fake-model-r2"]
    explicit = await http.post(f"{worker.url}/instances/start",
                               json={**FAKE, "instance": "fake-model-r2"})
    assert explicit.status_code == 409 and explicit.json()["error"]["param"] == "instance"
    await http.post(f"{worker.url}/instances/fake-model-r2/stop")
    again = await _start(http, worker.url, {**FAKE, "add_replica": True})
    assert again["alias"] == "fake-model-r2"
    r = await http.post(f"{worker.url}/proxy/fake-model-r3/v1/completions",
                        json={"model": "fake-model", "prompt": "x"})
    assert r.status_code == 200 and r.headers["x-llmsched-instance"] == "fake-model-r3"


@pytest.mark.parametrize(("body", "field"), [
    (b"{not json", None),
    (b"[1, 2]", None),
    (b"", None),
    (b'{"model_name": "m"}', "alias"),
    (b'{"alias": "has space"}', "alias"),
    (b'{"alias": "a", "engine": "tgi"}', "engine"),
    (b'{"alias": "a", "fake": true, "fake_capacity": 0}', "fake_capacity"),
    (b'{"alias": "a", "fake": true, "fake_delay_ms": -1}', "fake_delay_ms"),
    (b'{"alias": "a", "max_num_seqs": "many"}', "max_num_seqs"),
    (b'{"alias": "a", "gpu_memory_utilization": 1.5}', "gpu_memory_utilization"),
    (b'{"alias": "a", "engine_backend": "docker"}', "engine_backend"),
    (b'{"alias": "a", "fake": true, "engine_backend": "vllm-process"}', "engine_backend"),
    (b'{"alias": "a", "engine": "sglang", "engine_backend": "vllm-process"}', "engine_backend"),
    (b'{"alias": "a", "max_model_len": 99999999}', "max_model_len"),
    (b'{"alias": "a", "sim_options": {"warp": 9}}', "sim_options"),
    (b'{"alias": "a", "engine_backend": "vllm-process"}', "model_name"),
])
async def test_bad_start_bodies_name_the_field(start_worker: StartWorker,
                                               http: httpx.AsyncClient, body: bytes,
                                               field: str | None) -> None:
    worker = await start_worker()
    r = await http.post(f"{worker.url}/instances/start", content=body,
                        headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == field, r.json()
    assert (await http.get(f"{worker.url}/instances")).json()["instances"] == []


async def test_unknown_alias_and_bad_sleep_requests(start_worker: StartWorker,
                                                    http: httpx.AsyncClient) -> None:
    worker = await start_worker()
    base = worker.url
    for method, path in [("GET", "/instances/nope"), ("GET", "/instances/nope/status"),
                         ("POST", "/instances/nope/stop"), ("POST", "/instances/nope/sleep"),
                         ("POST", "/instances/nope/wake")]:
        r = await http.request(method, base + path)
        assert r.status_code == 404, (path, r.text)
        assert r.json()["error"]["param"] == "alias"
    r = await http.post(f"{base}/proxy/nope/v1/chat/completions", json=CHAT)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    await _start(http, worker.url, FAKE)
    for query, body, field in [("?level=3", None, "level"), ("?level=x", None, "level"),
                               ("", b'{"level": 5}', "level"), ("", b"[]", None),
                               ("", b'{"depth": 1}', "depth")]:
        r = await http.post(f"{base}/instances/fake-model/sleep{query}", content=body)
        assert r.status_code == 400, (query, body, r.text)
        assert r.json()["error"]["param"] == field
    assert (await _status(http, worker.url, "fake-model"))["sleep_level_value"] == 0


async def test_ignored_fields_are_reported(start_worker: StartWorker,
                                           http: httpx.AsyncClient) -> None:
    worker = await start_worker()
    info = await _start(http, worker.url, {**FAKE, "min_replicas": 1, "max_replicas": 3})
    assert info["ignored_fields"] == ["max_replicas", "min_replicas"]


async def test_sim_process_backend_in_vllm_mode(start_worker: StartWorker,
                                                http: httpx.AsyncClient) -> None:
    worker = await start_worker()
    info = await _start(http, worker.url, {**FAKE, "fake_delay_ms": 200,
                                       "engine_backend": "sim-process"}, query="?wait=true")
    assert info["state"] == "running" and info["pid"] > 0 and info["backend"] == "sim-process"
    r = await http.post(f"{worker.url}/proxy/fake-model/v1/chat/completions", json=CHAT)
    assert r.status_code == 200 and "FAKE_OK" in r.text
    status = await _status(http, worker.url, "fake-model")
    assert status["ttft_last"] >= 0.2 and status["engine_reachable"]
    assert (await http.post(f"{worker.url}/instances/fake-model/sleep?level=2")).status_code == 200
    assert (await http.get(info["url"] + "/is_sleeping")).json()["is_sleeping"] is True
    assert (await _status(http, worker.url, "fake-model"))["sleep_level_value"] == 2
    assert (await http.post(f"{worker.url}/instances/fake-model/wake")).status_code == 200
    assert (await _status(http, worker.url, "fake-model"))["sleep_level_value"] == 0
    await http.post(f"{worker.url}/instances/fake-model/stop")
    with pytest.raises(ProcessLookupError):
        os.kill(info["pid"], 0)


async def test_process_that_dies_is_marked_failed(start_worker: StartWorker,
                                                  http: httpx.AsyncClient) -> None:
    worker = await start_worker()
    info = await _start(http, worker.url, {"alias": "m", "model_name": "m",
                                       "engine_backend": "sim-process"}, query="?wait=true")
    os.kill(info["pid"], signal.SIGKILL)

    async def failed() -> bool:
        r = await http.get(f"{worker.url}/instances/m")
        return bool(r.json()["state"] == "failed")
    await wait_until(failed, 20, "instance failed")
    # A failed instance's name can be reused.
    again = await _start(http, worker.url, {"alias": "m", "model_name": "m"})
    assert again["state"] == "running"


async def test_sglang_flavour_sleeps_through_memory_release(start_worker: StartWorker,
                                                            http: httpx.AsyncClient) -> None:
    worker = await start_worker()
    await _start(http, worker.url, {**FAKE, "engine": "sglang"})
    assert (await http.post(f"{worker.url}/instances/fake-model/sleep")).status_code == 200
    status = await _status(http, worker.url, "fake-model")
    assert status["sleep_level_value"] == 1 and status["engine_reachable"]
    assert (await http.post(f"{worker.url}/instances/fake-model/wake")).status_code == 200
    r = await http.post(f"{worker.url}/proxy/fake-model/v1/chat/completions", json=CHAT)
    assert r.status_code == 200


# -- registration, heartbeats, lost workers ------------------------------------------------

async def test_registration_and_heartbeats_reach_the_registry(
        start_manager: StartManager, start_worker: StartWorker, http: httpx.AsyncClient) -> None:
    manager = await start_manager()
    worker = await start_worker(manager_url=manager.url, heartbeat_interval_s=0.2,
                                worker_id="w1")

    async def registered() -> bool:
        return await manager.registry.get("w1") is not None
    await wait_until(registered, 20, "worker registered")
    await _start(http, worker.url, FAKE)

    async def instance_listed() -> bool:
        return [i.alias for i in await manager.registry.routable_instances()] == ["fake-model"]
    await wait_until(instance_listed, 20, "instance in routable_instances")
    routable = (await manager.registry.routable_instances())[0]
    assert routable.worker_id == "w1" and routable.worker_url == worker.url
    assert (await http.get(routable.url + "/health")).status_code == 200

    async def heartbeats() -> bool:
        record = await manager.registry.get("w1")
        return record is not None and record.heartbeats >= 3
    await wait_until(heartbeats, 20, "heartbeats")
    listing = (await http.get(f"{manager.url}/admin/workers")).json()["workers"]
    assert [w["worker_id"] for w in listing] == ["w1"]
    assert listing[0]["state"] == "active" and listing[0]["gpu_info"]["source"] == "simulated"

    await http.post(f"{worker.url}/instances/fake-model/sleep")

    async def sleeping_leaves_routing() -> bool:
        known = await manager.registry.routable_instances(include_sleeping=True)
        return [i.state for i in known] == ["sleeping"]
    await wait_until(sleeping_leaves_routing, 20, "sleeping instance reported")
    assert await manager.registry.routable_instances() == []


async def test_silent_worker_is_lost_and_comes_back(start_manager: StartManager,
                                                    http: httpx.AsyncClient) -> None:
    manager = await start_manager(lost_after_s=0.5)
    instance = {"alias": "m", "model_alias": "m", "url": "http://127.0.0.1:1", "capacity": 2}
    r = await http.post(f"{manager.url}/workers/register",
                        json={"worker_id": "w9", "worker_url": "http://127.0.0.1:2",
                              "gpu_info": {}, "heartbeat_interval_s": 0.1,
                              "instances": [instance]})
    assert r.status_code == 200, r.text
    assert [i.alias for i in await manager.registry.routable_instances()] == ["m"]

    async def lost() -> bool:
        record = await manager.registry.get("w9")
        return record is not None and record.state == "lost"
    await wait_until(lost, 20, "worker marked lost")
    assert await manager.registry.routable_instances() == []
    assert len(await manager.registry.instances(include_lost=True)) == 1
    listing = (await http.get(f"{manager.url}/admin/workers")).json()["workers"]
    assert listing[0]["state"] == "lost" and listing[0]["heartbeat_age_s"] > 0.5

    r = await http.post(f"{manager.url}/workers/w9/heartbeat", json={"instances": [instance]})
    assert r.status_code == 200 and r.json()["state"] == "active"
    assert len(await manager.registry.routable_instances()) == 1


async def test_worker_that_stops_heartbeating_leaves_routing(
        start_manager: StartManager, start_worker: StartWorker, http: httpx.AsyncClient) -> None:
    manager = await start_manager(lost_after_s=0.6)
    worker = await start_worker(manager_url=manager.url, heartbeat_interval_s=0.1,
                                worker_id="w2")
    await _start(http, worker.url, FAKE)

    async def routable() -> bool:
        return len(await manager.registry.routable_instances()) == 1
    await wait_until(routable, 20, "instance routable")
    # The worker's host freezes: heartbeats stop, nothing is unregistered.
    worker._stop.set()

    async def gone() -> bool:
        record = await manager.registry.get("w2")
        return record is not None and record.state == "lost"
    await wait_until(gone, 20, "worker lost")
    assert await manager.registry.routable_instances() == []


async def test_unregister_on_shutdown_stops_instances(
        start_manager: StartManager, http: httpx.AsyncClient, tmp_path: Path) -> None:
    manager = await start_manager()
    worker = await Worker(WorkerOptions(port=0, manager_url=manager.url, worker_id="w3",
                                        heartbeat_interval_s=0.2,
                                        settings=WorkerSettings(log_dir=tmp_path))).start()
    info = await _start(http, worker.url, FAKE)

    async def registered() -> bool:
        return await manager.registry.get("w3") is not None
    await wait_until(registered, 20, "registered")
    await worker.stop()
    assert await manager.registry.get("w3") is None
    assert await manager.registry.workers() == []
    with pytest.raises(httpx.ConnectError):
        await http.get(info["url"] + "/health")


async def test_unreachable_manager_is_retried_until_it_appears(
        start_manager: StartManager, start_worker: StartWorker, http: httpx.AsyncClient) -> None:
    port = free_port()
    worker = await start_worker(manager_url=f"http://127.0.0.1:{port}",
                                heartbeat_interval_s=0.2, worker_id="w4")
    await asyncio.sleep(0.6)
    assert (await http.get(f"{worker.url}/health")).status_code == 200
    manager = await start_manager(port=port)

    async def registered() -> bool:
        return await manager.registry.get("w4") is not None
    await wait_until(registered, 10, "late registration")


async def test_forgotten_worker_registers_again(start_manager: StartManager,
                                                start_worker: StartWorker) -> None:
    manager = await start_manager()
    await start_worker(manager_url=manager.url, heartbeat_interval_s=0.1, worker_id="w5")

    async def registered() -> bool:
        return await manager.registry.get("w5") is not None
    await wait_until(registered, 20, "registered")
    await manager.registry.unregister("w5")  # e.g. the registry's Redis was flushed
    await wait_until(registered, 20, "registered again after a 404 heartbeat")


async def test_registry_survives_an_api_restart(start_manager: StartManager, redis_url: str,
                                                prefix: str, http: httpx.AsyncClient) -> None:
    manager = await start_manager()
    r = await http.post(f"{manager.url}/workers/register",
                        json={"worker_id": "w6", "worker_url": "http://10.0.0.6:8100",
                              "gpu_info": {"available_memory_gb": 70}})
    assert r.status_code == 200
    await manager.close()
    fresh = WorkerRegistry(redis_url, prefix)
    try:
        record = await fresh.get("w6")
        assert record is not None and record.gpu_info == {"available_memory_gb": 70}
        assert [w.worker_id for w in await fresh.workers()] == ["w6"]
    finally:
        await fresh.close()


async def test_registry_routes_validate_and_404(start_manager: StartManager,
                                                http: httpx.AsyncClient) -> None:
    manager = await start_manager()
    base = manager.url
    for body, field in [(b"{", None), (b'{"worker_url": "http://h:1"}', "worker_id"),
                        (b'{"worker_id": "w", "worker_url": "ftp://h"}', "worker_url"),
                        (b'{"worker_id": "a b", "worker_url": "http://h:1"}', "worker_id")]:
        r = await http.post(f"{base}/workers/register", content=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == field, r.text
    r = await http.post(f"{base}/workers/ghost/heartbeat", json={})
    assert r.status_code == 404 and r.json()["error"]["param"] == "worker_id"
    assert (await http.delete(f"{base}/workers/ghost/unregister")).status_code == 404
    r = await http.post(f"{base}/workers/ghost/heartbeat", json={"instances": 3})
    assert r.status_code == 400 and r.json()["error"]["param"] == "instances"


async def test_api_key_protects_worker_and_registry(
        start_manager: StartManager, start_worker: StartWorker, http: httpx.AsyncClient) -> None:
    manager = await start_manager(admin_key="s3cret")
    r = await http.post(f"{manager.url}/workers/register",
                        json={"worker_id": "x", "worker_url": "http://h:1"})
    assert r.status_code == 401
    assert (await http.get(f"{manager.url}/admin/workers",
                           headers={"authorization": "Bearer nope"})).status_code == 401
    worker = await start_worker(manager_url=manager.url, heartbeat_interval_s=0.1,
                                worker_id="w7", api_key="s3cret")

    async def registered() -> bool:
        return await manager.registry.get("w7") is not None
    await wait_until(registered, 20, "registered with the key")
    assert (await http.get(f"{worker.url}/health")).status_code == 200
    assert (await http.get(f"{worker.url}/instances")).status_code == 401
    auth = {"authorization": "Bearer s3cret"}
    assert (await http.get(f"{worker.url}/instances", headers=auth)).status_code == 200
    listing = await http.get(f"{manager.url}/admin/workers", headers=auth)
    assert [w["worker_id"] for w in listing.json()["workers"]] == ["w7"]


async def test_worker_command_registers_and_unregisters_on_sigterm(
        start_manager: StartManager, http: httpx.AsyncClient, tmp_path: Path) -> None:
    manager = await start_manager()
    port = free_port()
    log_file = tmp_path / "worker.log"
    with log_file.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.worker", "--port", str(port), "--manager-url",
            manager.url, "--worker-id", "w8", "--heartbeat-interval", "0.2",
            "--log-dir", str(tmp_path), cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "LLMSCHED_ADMIN_KEY": ""})
    try:
        async def registered() -> bool:
            return await manager.registry.get("w8") is not None
        await wait_until(registered, 20, "the worker process registered")
        info = await _start(http, f"http://127.0.0.1:{port}", FAKE)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0, log_file.read_text()
        assert await manager.registry.get("w8") is None
        with pytest.raises(httpx.ConnectError):
            await http.get(info["url"] + "/health")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# -- opt-in: a real vLLM (see /work/shared/REAL_VLLM.md for the CPU set-up) ------------------
