"""Opt-in: a real vLLM with KV-cache events on; the collector's bridge receives them and the
scheduler's index agrees with the engine's own prefix-cache hit counter.

    LLMSCHED_VLLM_PYTHON=/work/vllm-venv/bin/python \\
        .venv/bin/python -m pytest -m real_vllm tests/real_vllm/test_real_vllm_kv_events.py -s
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import msgspec
import nats
import pytest

from services.collector.kv_events import KvEventsBridge
from services.worker.instances import WorkerSettings
from services.worker.main import Worker, WorkerOptions
from shared.config import PoolConfig
from shared.http_server import free_port
from shared.messages import MemberInfo
from shared.prefix import token_block_keys
from shared.prefix_config import KvEventsConfig
from shared.prefix_events import KvUpdate, kv_subject, kv_subject_all
from shared.promparse import parse_selected
from shared.scheduling.prefix_index import PrefixIndex
from shared.tokenize import HFTokenizer

pytestmark = [pytest.mark.real_vllm, pytest.mark.timeout(900)]

BLOCK = 128  # vLLM's block size on the CPU
HITS = "vllm:prefix_cache_hits_total"
A = "the quick brown fox jumps over the lazy dog " * 30
B = "a completely different prompt about the weather and the sea " * 25


@pytest.fixture
async def worker(tmp_path: Path, vllm_python: str) -> AsyncIterator[Worker]:
    w = await Worker(WorkerOptions(port=0, settings=WorkerSettings(
        log_dir=tmp_path / "worker-logs", vllm_python=vllm_python))).start()
    yield w
    await w.stop()


async def hits(http: httpx.AsyncClient, url: str) -> float:
    series = parse_selected((await http.get(url + "/metrics")).text, frozenset({HITS}))
    return float(sum(v for _labels, v in series.get(HITS, [])))


async def complete(http: httpx.AsyncClient, url: str, prompt: str) -> None:
    r = await http.post(url + "/v1/completions", json={
        "model": "tiny", "prompt": prompt, "max_tokens": 2, "ignore_eos": True})
    assert r.status_code == 200, r.text


async def test_index_matches_the_engines_prefix_cache(worker: Worker, model_dir: str,
                                                      vllm_env: dict[str, str],
                                                      nats_url: str, prefix: str) -> None:
    pub, replay = free_port(), free_port()
    events = {"enable_kv_cache_events": True, "publisher": "zmq", "topic": "",
              "endpoint": f"tcp://*:{pub}", "replay_endpoint": f"tcp://*:{replay}"}
    spec = {"alias": "tiny", "model_name": model_dir, "engine_backend": "vllm-process",
            "load_format": "dummy", "dtype": "float32", "max_model_len": 512,
            "max_num_seqs": 8, "enforce_eager": True, "start_timeout_s": 600,
            "extra_args": ["--served-model-name", "tiny",
                           "--kv-events-config", json.dumps(events)], "env": vllm_env}
    tokenizer = HFTokenizer(model_dir)
    nc = await nats.connect(nats_url)
    index = PrefixIndex()
    decode = msgspec.json.Decoder(KvUpdate).decode

    async def on_update(msg: nats.aio.msg.Msg) -> None:
        index.apply(decode(msg.data))

    sub = await nc.subscribe(kv_subject_all(prefix), cb=on_update)
    bridge = KvEventsBridge(nc.publish, lambda part, pool: kv_subject(prefix, part, pool))
    async with httpx.AsyncClient(timeout=700) as http:
        try:
            started = await http.post(f"{worker.url}/instances/start?wait=true", json=spec)
            assert started.status_code == 201, started.text
            url = started.json()["url"].rstrip("/")
            host, port = url.split("//", 1)[1].rsplit(":", 1)
            pool = PoolConfig(name="real", engine_type="vllm", source="static",
                              members=[f"{host}:{port}"], kv_events=KvEventsConfig(
                                  endpoint=f"tcp://{{host}}:{pub}",
                                  replay=f"tcp://{{host}}:{replay}", block_size=BLOCK))
            bridge.sync(pool, [MemberInfo(key="m", host=host, port=int(port))])
            await asyncio.sleep(1.0)  # the SUB socket connects
            keys_a = token_block_keys(tokenizer.completion(A), BLOCK)
            keys_b = token_block_keys(tokenizer.completion(B), BLOCK)
            assert len(keys_a) == 2 and len(keys_b) == 1, (len(keys_a), len(keys_b))
            await complete(http, url, A)
            await complete(http, url, B)
            deadline = time.monotonic() + 30
            while index.match(keys_a) != {"m": 2} or index.match(keys_b) != {"m": 1}:
                assert time.monotonic() < deadline, (index.match(keys_a),
                                                     index.match(keys_b), index.held("m"))
                await asyncio.sleep(0.1)
            # The index says 2 blocks (256 tokens) of A are cached: the engine agrees.
            before = await hits(http, url)
            await complete(http, url, A)
            gained = await hits(http, url) - before
            predicted = index.match(keys_a)["m"] * BLOCK
            print(f"\nindex: {predicted} cached tokens of A; engine counted {gained} hits")
            assert gained == predicted
            before = await hits(http, url)
            await complete(http, url, B + " and a different ending")
            assert await hits(http, url) - before == index.match(keys_b)["m"] * BLOCK
        finally:
            await bridge.close()
            await sub.unsubscribe()
            await nc.close()
