"""One access-log line per request that ends non-2xx (2xx at DEBUG), on the real API and worker."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import httpx
import pytest

from services.worker.instances import WorkerSettings
from services.worker.main import Worker, WorkerOptions
from tests.integration.conftest import StackFactory
from tests.integration.system import wait_until

pytestmark = pytest.mark.integration

A = "10.0.0.1:8001"
POOL = {"name": "p1", "partition": "Common", "engine_type": "vllm", "source": "static",
        "members": [A]}
LINE = re.compile(r"^(?P<method>[A-Z]+) (?P<path>\S+) (?P<status>\d{3}) (?P<ms>\d+\.\d)ms "
                  r"(?P<client>127\.0\.0\.1:\d+)$")


def access(caplog: pytest.LogCaptureFixture, name: str) -> list[tuple[int, str, str, int]]:
    """(level, method, path, status) of every access line logged so far by ``name``."""
    out = []
    for record in caplog.records:
        if record.name != name:
            continue
        match = LINE.match(record.getMessage())
        assert match, f"not an access line: {record.getMessage()!r}"
        out.append((record.levelno, match["method"], match["path"], int(match["status"])))
    return out


async def test_api_logs_failed_requests_and_2xx_only_at_debug(
        make_stack: StackFactory, caplog: pytest.LogCaptureFixture) -> None:
    name = "llmsched.api.access"
    caplog.set_level(logging.INFO, logger=name)
    stack = await make_stack([POOL])
    http, base = stack.http, stack.api_url
    caplog.clear()
    assert (await http.post(f"{base}/scheduler/select",
                            json={"pool_name": "p1", "members": [A]})).status_code == 200
    assert (await http.get(f"{base}/livez")).status_code == 200
    assert (await http.post(f"{base}/scheduler/select", content=b"{}")).status_code == 400
    big = b"{" + b" " * (2 << 20)
    assert (await http.post(f"{base}/scheduler/select", content=big)).status_code == 413
    assert (await http.get(f"{base}/pools/nope/Common/status")).status_code == 404
    assert (await http.get(f"{base}/no/such/route")).status_code == 404
    lines = access(caplog, name)
    assert lines == [(logging.INFO, "POST", "/scheduler/select", 400),
                     (logging.INFO, "POST", "/scheduler/select", 413),
                     (logging.INFO, "GET", "/pools/nope/Common/status", 404),
                     (logging.INFO, "GET", "/no/such/route", 404)], caplog.text

    caplog.set_level(logging.DEBUG, logger=name)
    caplog.clear()
    assert (await http.post(f"{base}/scheduler/select",
                            json={"pool_name": "p1", "members": [A]})).status_code == 200
    assert (await http.get(f"{base}/livez")).status_code == 200
    assert access(caplog, name) == [(logging.DEBUG, "POST", "/scheduler/select", 200),
                                    (logging.DEBUG, "GET", "/livez", 200)], caplog.text

    for svc in stack.services[:-1]:  # no scheduler left: 503s are warnings
        await svc.stop()
    caplog.clear()
    assert (await http.post(f"{base}/scheduler/select",
                            json={"pool_name": "p1", "members": [A]})).status_code == 503
    assert (await http.get(f"{base}/pools/status")).status_code == 503
    assert access(caplog, name) == [(logging.WARNING, "POST", "/scheduler/select", 503),
                                    (logging.WARNING, "GET", "/pools/status", 503)], caplog.text


async def test_worker_logs_failed_requests(tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    name = "llmsched.worker.access"
    caplog.set_level(logging.INFO, logger=name)
    worker = await Worker(WorkerOptions(port=0, settings=WorkerSettings(
        log_dir=tmp_path / "logs"))).start()
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            base = worker.url
            r = await http.post(f"{base}/instances/start", json={
                "alias": "m", "model_name": "__fake__", "fake": True, "fake_response": "OK"})
            assert r.status_code == 201, r.text
            assert (await http.get(f"{base}/instances/nope")).status_code == 404
            assert (await http.post(f"{base}/instances/m/sleep")).status_code == 200
            chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            r = await http.post(f"{base}/proxy/m/v1/chat/completions", json=chat)
            assert r.status_code == 503, r.text

            async def logged() -> bool:
                return len(access(caplog, name)) >= 2
            await wait_until(logged, 5, "two access lines")
        assert access(caplog, name) == [
            (logging.INFO, "GET", "/instances/nope", 404),
            (logging.WARNING, "POST", "/proxy/m/v1/chat/completions", 503)], caplog.text
    finally:
        await worker.stop()
