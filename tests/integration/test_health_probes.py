"""HEAD on the health routes, and the liveness/readiness split, on the real API and worker."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Response

from services.worker.instances import WorkerSettings
from services.worker.main import Worker, WorkerOptions
from shared.http_server import serve_app
from tests.integration.conftest import StackFactory
from tests.integration.system import wait_until

pytestmark = pytest.mark.integration

POOL = {"name": "p1", "partition": "Common", "engine_type": "vllm", "source": "static",
        "members": ["10.0.0.1:8001"]}
PROBES = ("/health", "/livez", "/readyz")


async def probe(http: httpx.AsyncClient, url: str) -> tuple[int, int, int, bytes]:
    """(GET status, HEAD status, HEAD content-length, HEAD body) of one probe URL."""
    got = await http.get(url)
    head = await http.head(url)
    return got.status_code, head.status_code, int(head.headers["content-length"]), head.content


async def test_api_probes_answer_head_and_split_live_from_ready(
        make_stack: StackFactory) -> None:
    stack = await make_stack([POOL])
    for path in PROBES:
        get_status, head_status, length, body = await probe(stack.http, stack.api_url + path)
        assert (get_status, head_status, body) == (200, 200, b""), (path, get_status,
                                                                      head_status, body)
        assert length > 0, path  # the GET's length: a HEAD answer describes it
    ready = (await stack.http.get(f"{stack.api_url}/readyz")).json()
    assert ready["status"] == "ready" and ready["checks"]["scheduler_replicas"] == 1, ready
    assert (await stack.http.get(f"{stack.api_url}/livez")).json() == {"status": "alive"}

    for svc in stack.services[:-1]:  # every scheduler replica goes away
        await svc.stop()
    r = await stack.http.get(f"{stack.api_url}/readyz")
    assert r.status_code == 503, r.text
    assert r.json()["status"] == "not_ready"
    assert r.json()["message"] == "no scheduler replica answered", r.json()
    assert (await stack.http.head(f"{stack.api_url}/readyz")).status_code == 503
    assert (await stack.http.get(f"{stack.api_url}/health")).status_code == 503
    get_status, head_status, _, body = await probe(stack.http, f"{stack.api_url}/livez")
    assert (get_status, head_status, body) == (200, 200, b"")


def slow_manager(release: asyncio.Event) -> FastAPI:
    """A manager whose unregister waits for ``release``: the worker is then stopping."""
    app = FastAPI()

    @app.post("/workers/register")
    async def register() -> Response:
        return Response(b'{"state": "active"}', media_type="application/json")

    @app.post("/workers/{worker_id}/heartbeat")
    async def heartbeat(worker_id: str) -> Response:
        return Response(b'{"state": "active"}', media_type="application/json")

    @app.delete("/workers/{worker_id}/unregister")
    async def unregister(worker_id: str) -> Response:
        await asyncio.wait_for(release.wait(), 20)
        return Response(b'{"unregistered": true}', media_type="application/json")

    return app


async def test_worker_probes_answer_head_and_readiness_ends_at_shutdown(
        tmp_path: Path) -> None:
    release = asyncio.Event()
    async with serve_app(slow_manager(release)) as manager, httpx.AsyncClient(
            timeout=30) as http:
        worker = await Worker(WorkerOptions(
            port=0, manager_url=manager.url, heartbeat_interval_s=0.2, api_key="k3y",
            settings=WorkerSettings(log_dir=tmp_path / "logs"))).start()
        stopping: asyncio.Task[None] | None = None
        try:
            for path in PROBES:  # no key needed for probes
                get_status, head_status, length, body = await probe(http, worker.url + path)
                assert (get_status, head_status, body) == (200, 200, b""), (path, get_status,
                                                                              head_status)
                assert length > 0, path
            assert (await http.get(f"{worker.url}/readyz")).json()["status"] == "ready"

            async def registered() -> bool:
                return worker.registrar is not None and worker.registrar.registered
            await wait_until(registered, 10, "worker registered")
            stopping = asyncio.create_task(worker.stop())

            async def not_ready() -> bool:
                r = await http.get(f"{worker.url}/readyz")
                return r.status_code == 503
            await wait_until(not_ready, 10, "worker /readyz 503 while shutting down")
            r = await http.get(f"{worker.url}/readyz")
            assert r.json() == {"status": "not_ready", "message": "shutting down"}, r.text
            assert (await http.head(f"{worker.url}/readyz")).status_code == 503
            live = await http.get(f"{worker.url}/livez")
            assert live.status_code == 200, live.text
        finally:
            release.set()
            if stopping is None:
                await worker.stop()
            else:
                await stopping
