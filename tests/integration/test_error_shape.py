"""Every error of the API service and the worker comes in one shape (OpenAI's), real servers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.api.validation import MAX_BODY_BYTES
from services.worker.instances import WorkerSettings
from services.worker.main import Worker, WorkerOptions
from tests.integration.conftest import StackFactory

pytestmark = pytest.mark.integration

A = "10.0.0.1:8001"
POOL = {"name": "p1", "partition": "Common", "engine_type": "vllm", "source": "static",
        "members": [A]}
FAKE = {"alias": "fake-model", "model_name": "__fake__", "fake": True,
        "fake_response": "FAKE_OK", "fake_capacity": 2}


def error_of(r: httpx.Response, status: int, type_: str, code: str | None = None,
             param: str | None = None) -> dict[str, Any]:
    """Assert ``r`` is ``status`` with the one error shape; returns the error object."""
    assert r.status_code == status, (r.request.method, r.request.url, r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, body
    assert isinstance(error["message"], str) and error["message"], body
    assert error["type"] == type_, body
    if code is not None:
        assert error["code"] == code, body
    assert error["param"] == param, body
    return dict(error)


async def test_api_errors_share_one_shape(make_stack: StackFactory) -> None:
    stack = await make_stack([POOL])
    http, base = stack.http, stack.api_url
    json_ct = {"content-type": "application/json"}
    # The select fast path: 400 naming the field, 413, and 400 for garbage.
    r = await http.post(f"{base}/scheduler/select", content=b'{"pool_name": "p1"}',
                        headers=json_ct)
    error_of(r, 400, "invalid_request_error", "invalid_body", "members")
    r = await http.post(f"{base}/scheduler/select", content=b"{" + b" " * MAX_BODY_BYTES,
                        headers=json_ct)
    error_of(r, 413, "invalid_request_error", "body_too_large")
    r = await http.post(f"{base}/scheduler/select", content=b"nope", headers=json_ct)
    error_of(r, 400, "invalid_request_error", "invalid_body")
    # FastAPI's own 404 and 405, and the routes' errors.
    r = await http.get(f"{base}/no/such/route")
    error_of(r, 404, "not_found_error", "not_found")
    r = await http.get(f"{base}/scheduler/select")
    error = error_of(r, 405, "invalid_request_error", "method_not_allowed")
    assert "GET" in error["message"] and "POST" in r.headers["allow"], r.headers
    r = await http.delete(f"{base}/health")
    error_of(r, 405, "invalid_request_error", "method_not_allowed")
    r = await http.get(f"{base}/pools/missing/Common/status")
    error_of(r, 404, "not_found_error", "pool_not_found", "pool_name")
    r = await http.post(f"{base}/pools/p1/Common/simulate?iterations=0",
                        json={"pool_name": "p1", "members": [A]})
    error_of(r, 400, "invalid_request_error", "invalid_parameter", "iterations")
    r = await http.post(f"{base}/pools/p1/Common/analyze",
                        json={"pool_name": "p2", "members": [A]})
    error_of(r, 400, "invalid_request_error", "path_mismatch", "pool_name")
    r = await http.post(f"{base}/workers/register", content=b"[]", headers=json_ct)
    error_of(r, 400, "invalid_request_error", "invalid_body")
    r = await http.post(f"{base}/workers/ghost/heartbeat", json={})
    error_of(r, 404, "not_found_error", "worker_not_found", "worker_id")
    # No scheduler replica left: the fast path answers 503 with Retry-After.
    for svc in stack.services[:-1]:
        await svc.stop()
    r = await http.post(f"{base}/scheduler/select",
                        json={"pool_name": "p1", "members": [A]})
    error_of(r, 503, "service_unavailable_error", "scheduler_unavailable")
    assert r.headers["retry-after"] == "1"
    r = await http.get(f"{base}/pools/status")
    error_of(r, 503, "service_unavailable_error", "scheduler_unavailable")


@pytest.fixture
async def worker(tmp_path: Path) -> AsyncIterator[Worker]:
    running = await Worker(WorkerOptions(port=0, api_key="k3y", settings=WorkerSettings(
        log_dir=tmp_path / "logs"))).start()
    try:
        yield running
    finally:
        await running.stop()


async def test_worker_errors_share_one_shape(worker: Worker) -> None:
    base = worker.url
    async with httpx.AsyncClient(timeout=30) as anon, httpx.AsyncClient(
            timeout=30, headers={"authorization": "Bearer k3y"}) as http:
        error_of(await anon.get(f"{base}/instances"), 401, "authentication_error",
                 "unauthorized")
        error_of(await http.get(f"{base}/nothing/here"), 404, "not_found_error", "not_found")
        error_of(await http.delete(f"{base}/instances"), 405, "invalid_request_error",
                 "method_not_allowed")
        error_of(await http.get(f"{base}/instances/nope"), 404, "not_found_error",
                 "instance_not_found", "alias")
        error_of(await http.post(f"{base}/instances/start", content=b"{"), 400,
                 "invalid_request_error", "invalid_body")
        error_of(await http.post(f"{base}/instances/start", json={"alias": "a b"}), 400,
                 "invalid_request_error", "invalid_body", "alias")
        r = await http.post(f"{base}/instances/start", json=FAKE)
        assert r.status_code == 201, r.text
        error_of(await http.post(f"{base}/instances/start", json=FAKE), 409, "conflict_error",
                 "instance_exists", "alias")
        error_of(await http.post(f"{base}/instances/fake-model/sleep?level=7"), 400,
                 "invalid_request_error", param="level")
        chat = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
        error_of(await http.post(f"{base}/proxy/nope/v1/chat/completions", json=chat), 404,
                 "not_found_error", "model_not_found", "alias")
        assert (await http.post(f"{base}/instances/fake-model/sleep")).status_code == 200
        r = await http.post(f"{base}/proxy/fake-model/v1/chat/completions", json=chat)
        error_of(r, 503, "service_unavailable_error", "instance_unavailable")
        assert r.headers["retry-after"] == "1"
