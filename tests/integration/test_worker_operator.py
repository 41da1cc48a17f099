"""What an operator meets on the worker: the SDK's models.list() through the proxy, and the
latency figures the manager's /admin/workers shows."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from services.worker.instances import WorkerSettings
from services.worker.main import Worker, WorkerOptions
from tests.integration.conftest import StackFactory
from tests.integration.system import wait_until

pytestmark = pytest.mark.integration

FAKE = {"alias": "fake-model", "model_name": "__fake__", "fake": True,
        "fake_response": "FAKE_OK", "fake_delay_ms": 50, "fake_capacity": 4}
CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture
async def workers(tmp_path: Path) -> AsyncIterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for worker in started:
        await worker.stop()


async def start(workers: list[Worker], tmp_path: Path, **options: Any) -> Worker:
    worker = await Worker(WorkerOptions(port=0, settings=WorkerSettings(
        log_dir=tmp_path / f"logs-{len(workers)}"), **options)).start()
    workers.append(worker)
    return worker


async def test_openai_sdk_lists_models_through_the_proxy(workers: list[Worker],
                                                         tmp_path: Path) -> None:
    worker = await start(workers, tmp_path)
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.post(f"{worker.url}/instances/start", json=FAKE)
        assert r.status_code == 201, r.text
        r = await http.post(f"{worker.url}/instances/start", json={**FAKE, "add_replica": True})
        assert r.status_code == 201, r.text
    client = openai.AsyncOpenAI(base_url=f"{worker.url}/proxy/fake-model-r2/v1", api_key="x")
    try:
        models = await client.models.list()
        ids = [m.id for m in models.data]
        assert ids[0] == "fake-model" and "fake-model-r2" in ids, ids
        missing = openai.AsyncOpenAI(base_url=f"{worker.url}/proxy/nope/v1", api_key="x")
        with pytest.raises(openai.NotFoundError) as err:
            await missing.models.list()
        assert err.value.code == "model_not_found", err.value.body
        await missing.close()
    finally:
        await client.close()


async def test_admin_workers_shows_engine_latency_of_direct_traffic(
        make_stack: StackFactory, workers: list[Worker], tmp_path: Path) -> None:
    stack = await make_stack([{"name": "p1", "partition": "Common", "engine_type": "vllm",
                               "source": "static", "members": ["10.0.0.1:8001"]}])
    worker = await start(workers, tmp_path, manager_url=stack.api_url,
                         heartbeat_interval_s=0.2, worker_id="w-latency")
    http = stack.http
    r = await http.post(f"{worker.url}/instances/start", json=FAKE)
    assert r.status_code == 201, r.text
    engine_url = r.json()["url"]
    # The gateway sends requests straight to the engine, not through the worker's proxy.
    for _ in range(3):
        r = await http.post(f"{engine_url}/v1/chat/completions", json=CHAT)
        assert r.status_code == 200, r.text
    status = (await http.get(f"{worker.url}/instances/fake-model/status")).json()
    assert status["ttft_avg"] is not None and status["ttft_avg"] > 0, status

    seen: dict[str, Any] = {}

    async def reported() -> bool:
        listing = (await http.get(f"{stack.api_url}/admin/workers")).json()["workers"]
        mine = [i for w in listing if w["worker_id"] == "w-latency" for i in w["instances"]]
        if mine:
            seen.update(mine[0])
        return bool(mine and mine[0]["ttft_avg"] is not None)
    try:
        await wait_until(reported, 10, "ttft_avg in /admin/workers")
    except AssertionError as err:
        raise AssertionError(f"{err}; last seen {seen}; worker status {status}") from None
    assert seen["ttft_avg"] == pytest.approx(status["ttft_avg"], rel=0.01), (seen, status)
    assert seen["e2e_avg"] is not None and seen["e2e_avg"] >= seen["ttft_avg"], seen
