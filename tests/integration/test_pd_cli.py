"""``llmsched pd --config scheduler_config.json``: the seed's file and interface, end to end."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from services.enginesim.launcher import RunningEngine, start_engine
from shared.http_server import free_port
from shared.pd_client import InstanceRole, PDClient, PDClientError, PDInstance
from tests.integration.pd_stack import SIM
from tests.integration.system import REPO, wait_until

pytestmark = pytest.mark.integration


@dataclasses.dataclass
class Router:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@pytest.fixture
async def engines() -> AsyncIterator[dict[str, RunningEngine]]:
    running = {
        "prefill-0": await start_engine(dataclasses.replace(SIM, role="prefill", seed=1)),
        "prefill-1": await start_engine(dataclasses.replace(SIM, role="prefill", seed=2)),
        "decode-0": await start_engine(dataclasses.replace(SIM, role="decode", seed=3)),
        "decode-1": await start_engine(dataclasses.replace(SIM, role="decode", seed=4)),
    }
    yield running
    await asyncio.gather(*(e.stop(grace=1.0) for e in running.values()),
                         return_exceptions=True)


def _seed(engines: dict[str, RunningEngine], ids: list[str], **keys: Any) -> dict[str, Any]:
    def listed(role: str) -> list[dict[str, Any]]:
        return [{"id": i, "host": "127.0.0.1", "port": engines[i].server.port}
                for i in ids if i.startswith(role)]
    return {"strategy": "round_robin", "health_check_interval": 0.3,
            "health_check_timeout": 1.0, "max_retries": 3, "drain_timeout": 10.0,
            "prefill_instances": listed("prefill"), "decode_instances": listed("decode"),
            **keys}


def _start(tmp_path: Path, seed: dict[str, Any], *extra: str) -> Router:
    path = tmp_path / "scheduler_config.json"
    path.write_text(json.dumps(seed))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "REDIS_URL")}
    log = tmp_path / "pd.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services", "pd", "--config", str(path), "--port", str(port),
             "--run-dir", str(tmp_path / "run"), "--log-level", "INFO", *extra],
            stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    return Router(proc, f"http://127.0.0.1:{port}", log)


def _stop(router: Router) -> int:
    if router.proc.poll() is None:
        router.proc.send_signal(signal.SIGTERM)
        try:
            return router.proc.wait(20)
        except subprocess.TimeoutExpired:
            router.proc.kill()
            router.proc.wait(5)
            raise AssertionError(f"llmsched pd ignored SIGTERM:\n{router.tail()}") from None
    return router.proc.returncode


async def _ready(router: Router, http: httpx.AsyncClient) -> None:
    async def up() -> bool:
        assert router.proc.poll() is None, f"llmsched pd exited:\n{router.tail()}"
        return (await http.get(router.url + "/health")).status_code == 200
    await wait_until(up, 60, "llmsched pd healthy")


async def test_the_seeds_file_and_interface_drive_a_pd_pool(
        tmp_path: Path, engines: dict[str, RunningEngine]) -> None:
    router = await asyncio.to_thread(_start, tmp_path, _seed(engines, ["prefill-0",
                                                                       "decode-0"]))
    client = PDClient(router.url, pool="pd")
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            await _ready(router, http)

            async def listed(role: str, want: set[str]) -> bool:
                got = await asyncio.to_thread(client.get_instances, role)
                return {i.instance_id for i in got if i.routable} == want
            await wait_until(lambda: listed("prefill", {"prefill-0"}), 30, "prefill-0 routable")
            await wait_until(lambda: listed("decode", {"decode-0"}), 30, "decode-0 routable")

            result = await asyncio.to_thread(client.route_request,
                                             {"prompt": "你好", "max_tokens": 20})
            assert result.success, result
            assert result.instance is not None and result.instance.instance_id == "decode-0"
            assert result.prefill is not None and result.prefill.instance_id == "prefill-0"
            assert result.response and result.response["usage"]["completion_tokens"] == 20

            for name in ("prefill-1", "decode-1"):
                role = InstanceRole.PREFILL if name.startswith("prefill") else InstanceRole.DECODE
                created = await asyncio.to_thread(client.register_instance, PDInstance(
                    name, role, "127.0.0.1", engines[name].server.port))
                assert created
            await wait_until(lambda: listed("decode", {"decode-0", "decode-1"}), 30,
                             "decode-1 routable after register_instance")
            await wait_until(lambda: listed("prefill", {"prefill-0", "prefill-1"}), 30,
                             "prefill-1 routable after register_instance")
            checks = await asyncio.to_thread(client.run_health_checks)
            assert checks == {"prefill-0": True, "prefill-1": True, "decode-0": True,
                              "decode-1": True}, checks

            drained = await asyncio.to_thread(client.drain_instance, "decode-0", wait=True)
            assert drained.state == "drained", drained
            for _ in range(4):
                result = await asyncio.to_thread(client.route_request,
                                                 {"prompt": "after the drain", "max_tokens": 2})
                assert result.success and result.instance is not None, result
                assert result.instance.instance_id == "decode-1", result

            await asyncio.to_thread(client.unregister_instance, "prefill-1")
            await wait_until(lambda: listed("prefill", {"prefill-0"}), 30,
                             "prefill-1 gone after unregister_instance")
            with pytest.raises(PDClientError) as info:
                await asyncio.to_thread(client.unregister_instance, "nope")
            assert info.value.status == 404 and info.value.code == "instance_not_found"

            sdk = openai.AsyncOpenAI(base_url=router.url + "/v1", api_key="unused",
                                     max_retries=0)
            try:
                model = (await sdk.models.list()).data[0].id
                assert model == "tiny", model  # discovered from the instances' /v1/models
                stream = await sdk.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=6,
                    stream=True)
                text = "".join([c.choices[0].delta.content or "" async for c in stream
                                if c.choices])
                assert text, "empty stream"
            finally:
                await sdk.close()
    finally:
        client.close()
        code = await asyncio.to_thread(_stop, router)
    assert code == 0, router.tail()
    assert "PD router for model 'tiny'" in router.tail(), router.tail()


async def test_a_bad_seed_file_exits_2_naming_the_key(tmp_path: Path) -> None:
    bad = {"strategy": "least_load", "prefill_instances": [{"id": "p", "host": "h",
                                                            "port": "eighty"}]}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    started = time.monotonic()
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "services", "pd", "--config", str(path)],
        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "prefill_instances[0].port" in done.stderr, done.stderr
    assert time.monotonic() - started < 60
