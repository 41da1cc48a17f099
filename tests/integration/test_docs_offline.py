"""/docs renders without internet: every asset it loads is served by the service itself."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from services.worker.instances import WorkerSettings
from services.worker.main import Worker, WorkerOptions
from tests.integration.conftest import StackFactory

pytestmark = pytest.mark.integration

POOL = {"name": "p1", "partition": "Common", "engine_type": "vllm", "source": "static",
        "members": ["10.0.0.1:8001"]}
ASSET = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url:\s*['"]([^'"]+)['"]""")


async def check_docs(http: httpx.AsyncClient, base: str) -> None:
    """GET /docs references only same-origin URLs, and each answers 200."""
    page = await http.get(f"{base}/docs")
    assert page.status_code == 200, page.text[:500]
    assert page.headers["content-type"].startswith("text/html")
    refs = [a or b for a, b in ASSET.findall(page.text)]
    assert any(r.endswith(".js") for r in refs), (refs, page.text[:1500])
    assert any(r.endswith(".css") for r in refs), refs
    assert "/openapi.json" in refs, refs
    foreign = [r for r in refs if "://" in r or r.startswith("//")]
    assert not foreign, f"/docs loads from elsewhere: {foreign}"
    for ref in refs:
        r = await http.get(base + ref)
        assert r.status_code == 200, (ref, r.status_code, r.text[:200])
        assert r.content, ref
    assert (await http.get(f"{base}/redoc")).status_code == 404  # it would load from a CDN


async def test_api_docs_use_only_local_assets(make_stack: StackFactory) -> None:
    stack = await make_stack([POOL])
    await check_docs(stack.http, stack.api_url)


async def test_worker_docs_use_only_local_assets(tmp_path: Path) -> None:
    worker = await Worker(WorkerOptions(port=0, api_key="k3y", settings=WorkerSettings(
        log_dir=tmp_path / "logs"))).start()
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            await check_docs(http, worker.url)  # the docs need no key
    finally:
        await worker.stop()
