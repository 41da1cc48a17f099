"""The worker's proxy treats a client that leaves mid-upload as a normal event (no traceback)."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from services.worker.instances import WorkerSettings
from services.worker.main import Worker, WorkerOptions
from tests.integration.system import wait_until


async def test_client_leaving_mid_body_is_not_an_error(tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    worker = await Worker(WorkerOptions(port=0, settings=WorkerSettings(log_dir=tmp_path))).start()
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            r = await http.post(f"{worker.url}/instances/start?wait=1",
                                json={"alias": "tiny", "model_name": "tiny"})
            assert r.status_code == 201, r.text
            body = json.dumps({"model": "tiny", "prompt": "hi", "max_tokens": 2}).encode()
            parts = urlsplit(worker.url)
            _reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
            writer.write(b"POST /proxy/tiny/v1/completions HTTP/1.1\r\nHost: w\r\n"
                         b"Content-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n" % (len(body) + 100) + body)
            await writer.drain()
            await asyncio.sleep(0.2)
            writer.close()

            async def instance_idle() -> bool:
                status = (await http.get(f"{worker.url}/instances/tiny/status")).json()
                return bool(status["inflight_requests"] == 0)

            await wait_until(instance_idle, 15, "the cut request to be released")
            r = await http.post(f"{worker.url}/proxy/tiny/v1/completions",
                                json={"model": "tiny", "prompt": "hi", "max_tokens": 2})
            assert r.status_code == 200, r.text
    finally:
        await worker.stop()
    bad = [f"{r.levelname} {r.name}: {r.getMessage()}" for r in caplog.records
           if r.levelno >= logging.ERROR or r.exc_info]
    assert bad == [], bad
