"""Schemathesis against the real API and worker: no 5xx, and every answer as documented.

The CLI runs as a child process against servers in this test's event loop, so Hypothesis
and pytest-asyncio never share a loop.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest

from services.worker.instances import WorkerSettings
from services.worker.main import Worker, WorkerOptions
from tests.integration.conftest import StackFactory
from tests.integration.system import REPO

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_schema_conformance")
POOL = {"name": "p1", "partition": "Common", "engine_type": "vllm", "source": "static",
        "members": ["10.0.0.1:8001", "10.0.0.2:8001"]}


async def schemathesis(base_url: str, tmp_path: Path, *extra: str,
                       examples: int = 6) -> None:
    """Run ``st run`` on ``base_url``'s /openapi.json; fail with its report otherwise."""
    args: Sequence[str] = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{base_url}/openapi.json",
        "--checks", CHECKS, "--max-examples", str(examples), "--seed", "7",
        "--phases", "examples,coverage,fuzzing", "--workers", "1",
        "--generation-database", "none", "--request-timeout", "30", "--no-color",
        "--suppress-health-check", "all", "--report-dir", str(tmp_path / "report"), *extra]
    proc = await asyncio.create_subprocess_exec(
        *args, cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 150)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError("schemathesis did not finish within 150 s") from None
    text = out.decode(errors="replace")
    assert proc.returncode == 0, f"schemathesis exit {proc.returncode}:\n{text[-6000:]}"
    print(text[-2500:])
    assert "No issues found" in text or "passed" in text, text[-3000:]


async def test_api_answers_as_its_openapi_document_says(make_stack: StackFactory,
                                                         tmp_path: Path) -> None:
    stack = await make_stack([POOL])
    await schemathesis(stack.api_url, tmp_path)


async def test_worker_answers_as_its_openapi_document_says(tmp_path: Path) -> None:
    worker = await Worker(WorkerOptions(port=0, settings=WorkerSettings(
        log_dir=tmp_path / "logs"))).start()
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            r = await http.post(f"{worker.url}/instances/start", json={
                "alias": "fake-model", "model_name": "__fake__", "fake": True,
                "fake_response": "FAKE_OK", "fake_capacity": 4})
            assert r.status_code == 201, r.text
        # Starting engines from generated specs would spawn arbitrary processes.
        await schemathesis(worker.url, tmp_path, "--exclude-path", "/instances/start")
    finally:
        await worker.stop()
