"""The collector's scraper and engine mapping read the simulator's /metrics in both modes."""

from __future__ import annotations

import asyncio

import openai
import pytest

from services.collector.scraper import MetricsScraper, open_clients
from services.enginesim.config import EngineConfig
from services.enginesim.launcher import start_engine
from shared.config import parse_config
from shared.engines import BUILTIN_ENGINES
from shared.messages import MemberInfo

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
async def test_scraper_reads_simulator_under_load(engine: str) -> None:
    running = await start_engine(EngineConfig(
        engine=engine, served_model_name=("m",), max_num_seqs=4, max_model_len=2048,  # type: ignore[arg-type]
        speed=2.0, seed=3))
    try:
        member = MemberInfo(key=f"127.0.0.1:{running.server.port}", host="127.0.0.1",
                            port=running.server.port)
        pool = parse_config(f"pools:\n - name: s\n   engine_type: {engine}\n"
                            f"   members: ['{member.key}']\n").pools[0]
        spec = BUILTIN_ENGINES[engine]
        async with open_clients(1) as clients, MetricsScraper(clients) as scraper:
            idle = (await scraper.scrape_pool(pool, spec, [member])).members[0]
            assert idle.ok and idle.waiting_queue == 0 and idle.running_req == 0, idle
            client = openai.AsyncOpenAI(base_url=f"{running.url}/v1", api_key="x")
            load = asyncio.gather(*(client.chat.completions.create(
                model="m", max_tokens=300, messages=[{"role": "user", "content": "hi"}])
                for _ in range(10)))
            seen = (0.0, 0.0, 0.0)
            while not load.done():
                await asyncio.sleep(0.05)
                m = (await scraper.scrape_pool(pool, spec, [member])).members[0]
                assert m.ok, m
                seen = (max(seen[0], m.running_req or 0), max(seen[1], m.waiting_queue or 0),
                        max(seen[2], m.cache_usage or 0))
            await load
            await client.close()
        assert seen[0] == 4 and seen[1] > 0 and 0 < seen[2] <= 1, seen
    finally:
        await running.stop()
