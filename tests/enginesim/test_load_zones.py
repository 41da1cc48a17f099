"""SPEC §3's two zones, over HTTP: TTFT flat while concurrency fits max_num_seqs, steep after."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from dataclasses import dataclass, field

import httpx

from services.enginesim.config import EngineConfig
from tests.enginesim.conftest import StartEngine
from tests.enginesim.test_metrics import samples

MAX_SEQS = 4
CONFIG = EngineConfig(served_model_name=("tiny",), max_num_seqs=MAX_SEQS, num_gpu_blocks=96,
                      max_model_len=1024, speed=2.0, seed=3)
SHARED = "system prompt shared by every caller " * 24
UNIQUE = "caller {0} turn {1} asks a question of its own " * 5
BASE = '{engine="0",model_name="tiny"}'


@dataclass
class Level:
    """Measurements at one concurrency."""

    ttfts: list[float] = field(default_factory=list)
    waiting: list[float] = field(default_factory=list)
    kv: list[float] = field(default_factory=list)


async def _one(http: httpx.AsyncClient, worker: int, turn: int) -> float:
    body = {"model": "tiny", "prompt": SHARED + UNIQUE.format(worker, turn), "max_tokens": 24,
            "stream": True}
    start = time.perf_counter()
    ttft = None
    async with http.stream("POST", "/v1/completions", json=body) as reply:
        async for line in reply.aiter_lines():
            if ttft is None and line.startswith("data: {"):
                ttft = time.perf_counter() - start
    assert ttft is not None
    return ttft


async def _level(url: str, concurrency: int, turns: int) -> Level:
    level = Level()
    limits = httpx.Limits(max_connections=concurrency + 2)
    async with httpx.AsyncClient(base_url=url, timeout=20, limits=limits) as http:
        async def worker(index: int) -> None:
            for turn in range(turns):
                level.ttfts.append(await _one(http, index, turn))

        async def scrape() -> None:
            while True:
                values = samples((await http.get("/metrics")).text)
                level.waiting.append(values[f"vllm:num_requests_waiting{BASE}"])
                level.kv.append(values[f"vllm:kv_cache_usage_perc{BASE}"])
                await asyncio.sleep(0.01)

        scraper = asyncio.ensure_future(scrape())
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        scraper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await scraper
    return level


async def test_two_zones_queue_kv_and_prefix_hits(start: StartEngine) -> None:
    engine = await start(CONFIG)
    levels = {c: await _level(engine.url, c, 5) for c in (1, 2, 4, 8, 16)}
    p50 = {c: statistics.median(lv.ttfts) for c, lv in levels.items()}
    mean_waiting = {c: statistics.mean(lv.waiting) for c, lv in levels.items()}
    mean_kv = {c: statistics.mean(lv.kv) for c, lv in levels.items()}
    report = {c: (round(p50[c] * 1000, 1), round(mean_waiting[c], 2), round(mean_kv[c], 3))
              for c in levels}
    print("concurrency -> (p50 TTFT ms, mean waiting, mean KV usage):", report)
    # Zone 1: up to max_num_seqs every request is admitted at once; TTFT stays near flat.
    assert p50[4] < 2.0 * p50[1] + 0.010, report
    assert max(mean_waiting[c] for c in (1, 2, 4)) < 0.6, report
    # Zone 2: past max_num_seqs requests queue in the engine and TTFT climbs steeply.
    assert mean_waiting[8] > 1.5 and mean_waiting[16] > 5, report
    assert p50[8] > 3 * p50[4] and p50[16] > 2 * p50[8], report
    # KV usage grows with the batch, then stops growing once the batch is full.
    assert mean_kv[1] < mean_kv[2] < mean_kv[4], report
    assert mean_kv[16] > 0.8 * mean_kv[4], report
    async with httpx.AsyncClient(base_url=engine.url, timeout=10) as http:
        values = samples((await http.get("/metrics")).text)
    hits = values[f"vllm:prefix_cache_hits_total{BASE}"]
    queries = values[f"vllm:prefix_cache_queries_total{BASE}"]
    assert hits / queries > 0.5, (hits, queries)
