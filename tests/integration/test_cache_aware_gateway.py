"""Cache-aware routing through the real gateway with two scheduler replicas: a tenant's
requests find the engine that holds its system prompt, whichever replica routes them —
approximately (the replicas share their routes) and precisely (the engines' KV events)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from services.enginesim.config import EngineConfig
from services.enginesim.launcher import RunningEngine, start_engine
from shared.http_server import free_port
from shared.promparse import parse_selected
from tests.integration.fleet import MakeFleet
from tests.integration.system import wait_until

pytestmark = pytest.mark.integration

HITS, QUERIES = "vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total"
TENANTS = ["harbor", "meadow", "copper", "falcon"]


def port_with_events() -> int:
    """A free port whose +1000 is free too (the engine's KV event socket)."""
    while True:
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1000))
            except OSError:
                continue
        return port


@pytest.fixture
async def engines() -> AsyncIterator[list[RunningEngine]]:
    running = []
    for seed in range(3):
        port = port_with_events()
        running.append(await start_engine(EngineConfig(
            served_model_name=("ca",), max_model_len=8192, max_num_seqs=4,
            num_gpu_blocks=8192, seed=seed, kv_events_endpoint=f"tcp://*:{port + 1000}"),
            port=port))
    yield running
    for engine in running:
        await engine.stop()


def system(tenant: str) -> str:
    return f"You are the assistant of {tenant}. " + f"{tenant} river stone light " * 150


async def counters(http: httpx.AsyncClient, engines: list[RunningEngine]
                   ) -> list[tuple[float, float]]:
    out = []
    for e in engines:
        series = parse_selected((await http.get(e.url + "/metrics")).text,
                                frozenset({HITS, QUERIES}))
        out.append((sum(v for _l, v in series.get(HITS, [])),
                    sum(v for _l, v in series.get(QUERIES, []))))
    return out


@pytest.mark.parametrize("source", ["approximate", "precise"])
async def test_each_tenant_finds_its_warm_engine_across_two_replicas(
        make_fleet: MakeFleet, engines: list[RunningEngine], source: str) -> None:
    pool: dict[str, Any] = {"name": "ca-pool", "engine_type": "vllm", "source": "static",
                            "model": "ca", "mode": "ca",
                            "members": [e.url.split("//", 1)[1] for e in engines]}
    if source == "precise":
        pool["tokenizer"] = "enginesim"
        pool["kv_events"] = {"endpoint": "tcp://{host}:{port+1000}", "block_size": 16}
    fleet = await make_fleet(pools=[pool], worker=False, autoscalers=0, schedulers=2,
                             modes=[{"name": "ca", "type": "cache_aware",
                                     "cache_aware": {"source": source}}])

    async def known() -> bool:
        r = await fleet.http.get(f"{fleet.api}/pools/ca-pool/Common/status")
        return r.status_code == 200 and r.json()["member_count"] == 3
    await wait_until(known, 20, "the cache-aware pool's members known")
    async with httpx.AsyncClient(timeout=60) as http:
        before = await counters(http, engines)
        for turn in range(4):  # one request at a time: every engine idle at each decision
            for tenant in TENANTS:
                r = await http.post(f"{fleet.api}/v1/chat/completions", json={
                    "model": "ca", "max_tokens": 2, "messages": [
                        {"role": "system", "content": system(tenant)},
                        {"role": "user", "content": f"question {turn} of {tenant}"}]})
                assert r.status_code == 200, r.text
        after = await counters(http, engines)
    hits = sum(a[0] - b[0] for a, b in zip(after, before, strict=True))
    queries = sum(a[1] - b[1] for a, b in zip(after, before, strict=True))
    # 16 requests, 4 tenants: the first of each is cold, the other 12 find their prefix
    # (the system prompt is most of the prompt) — unless a replica routed blind.
    assert hits / queries > 0.6, (source, hits, queries, after)
