"""Worker instances in selection: register → routable → selected; silent worker → out."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from services.api.main import serve as serve_api
from services.collector.main import serve as serve_collector
from services.scheduler.main import serve as serve_scheduler
from services.worker.instances import WorkerSettings
from services.worker.main import Worker, WorkerOptions
from tests.integration.system import InProcess, load, wait_until, write_config

pytestmark = pytest.mark.integration


async def test_worker_instances_enter_and_leave_selection(
        tmp_path: Path, nats_url: str, redis_url: str, prefix: str) -> None:
    path = write_config(tmp_path / "config.yaml", prefix, [{
        "name": "chat-pool", "engine_type": "vllm", "source": "workers", "model": "chat",
        "metrics": {"timeout": 1}}], metrics_ms=200,
        extra={})
    text = path.read_text().replace("prefix:", "worker_lost_after_s: 0.6\n  prefix:")
    path.write_text(text)
    loaded = load(path)
    port = loaded.config.global_.api_port
    kw = {"nats_url": nats_url, "redis_url": redis_url}
    services = [InProcess(serve_scheduler, loaded, **kw), InProcess(serve_collector, loaded, **kw),
                InProcess(serve_api, loaded, port=port, **kw)]
    api = f"http://127.0.0.1:{port}"
    worker = await Worker(WorkerOptions(
        port=0, manager_url=api, heartbeat_interval_s=0.1, worker_id="w-test",
        settings=WorkerSettings(log_dir=tmp_path / "worker-logs"))).start()
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            for extra in ({}, {"add_replica": True}):
                r = await http.post(f"{worker.url}/instances/start",
                                    json={"alias": "chat", "model_name": "sim-8b",
                                          "engine": "vllm", **extra})
                assert r.status_code in (200, 201), r.text
            r = await http.get(f"{worker.url}/instances")
            body = r.json()
            listing = body["instances"] if isinstance(body, dict) else body
            urls = [i["url"] for i in listing]
            keys = [u.split("//", 1)[1].rstrip("/") for u in urls]
            assert len(keys) == 2
            select = {"pool_name": "chat-pool", "partition": "Common", "members": keys}

            async def selected() -> bool:
                r = await http.post(f"{api}/scheduler/select", json=select)
                return r.text in keys

            await wait_until(selected, 15, "a worker instance selected")
            r = await http.get(f"{api}/admin/workers")
            assert "w-test" in r.text
            # The worker freezes: heartbeats stop, nothing is unregistered.
            worker._stop.set()

            async def left() -> bool:
                r = await http.post(f"{api}/scheduler/select", json=select)
                return r.text == "none"

            await wait_until(left, 10, "lost worker's instances to leave selection")
            # Selection drops a lost worker's instances as soon as the registry says so; the
            # pool's membership follows with the collector's next snapshot.
            status: dict[str, object] = {}

            async def emptied() -> bool:
                status.update((await http.get(f"{api}/pools/chat-pool/Common/status")).json())
                return status.get("member_count") == 0

            await wait_until(emptied, 10, "the pool's status to show no member",
                             seen=lambda: status)
    finally:
        await worker.stop()
        for svc in reversed(services):
            await svc.stop()
