"""The scraper's asleep verdict from simulated engines: metric signal, probe, probe failures."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import msgspec
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from services.collector.scraper import MetricsScraper, open_clients
from services.enginesim.config import EngineConfig
from services.enginesim.launcher import RunningEngine, start_engine
from shared.config import MetricsConfig, PoolConfig
from shared.engines import BUILTIN_ENGINES, AsleepProbe, EngineMetricsSpec
from shared.http_server import start_app
from shared.messages import MemberInfo, MemberMetrics

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

VLLM = BUILTIN_ENGINES["vllm"]
SGLANG = BUILTIN_ENGINES["sglang"]
PROBE = AsleepProbe(path="/is_sleeping", field="is_sleeping")
VLLM_PROBE_ONLY = msgspec.structs.replace(VLLM, asleep=[], asleep_probe=PROBE)
SGLANG_PROBE = msgspec.structs.replace(SGLANG, asleep_probe=PROBE)
TINY = EngineConfig(model="/models/tiny", served_model_name=("tiny",), max_model_len=512,
                    max_num_seqs=8, num_gpu_blocks=1024, speed=20.0, seed=7)


@pytest.fixture
async def scraper() -> AsyncIterator[MetricsScraper]:
    async with open_clients(2) as clients, MetricsScraper(clients) as scraper:
        yield scraper


@pytest.fixture
async def vllm_engine() -> AsyncIterator[RunningEngine]:
    engine = await start_engine(TINY)
    yield engine
    await engine.stop()


async def scrape(scraper: MetricsScraper, port: int, spec: EngineMetricsSpec) -> MemberMetrics:
    member = MemberInfo(key=f"127.0.0.1:{port}", host="127.0.0.1", port=port)
    pool = PoolConfig(name="p", engine_type="x", metrics=MetricsConfig(timeout=2))
    batch = await scraper.scrape_pool(pool, spec, [member])
    return batch.members[0]


async def test_metric_signal_and_probe_follow_sleep_and_wake(
        scraper: MetricsScraper, vllm_engine: RunningEngine) -> None:
    port = vllm_engine.server.port
    awake = [await scrape(scraper, port, spec) for spec in (VLLM, VLLM_PROBE_ONLY)]
    assert all(m.ok and not m.asleep and m.asleep_reason is None for m in awake), awake
    async with httpx.AsyncClient() as http:
        assert (await http.post(f"{vllm_engine.url}/sleep", params={"level": "1"})).is_success
        by_metric = await scrape(scraper, port, VLLM)
        by_probe = await scrape(scraper, port, VLLM_PROBE_ONLY)
        assert (await http.post(f"{vllm_engine.url}/wake_up")).is_success
    assert by_metric.ok and by_metric.asleep, by_metric
    assert by_metric.asleep_reason == "vllm:engine_sleep_state{sleep_state=awake}=0"
    assert by_probe.ok and by_probe.asleep, by_probe
    assert by_probe.asleep_reason == "GET /is_sleeping is_sleeping=true"
    again = await scrape(scraper, port, VLLM_PROBE_ONLY)
    assert again.ok and not again.asleep, again


async def test_a_probe_that_fails_is_not_asleep(scraper: MetricsScraper) -> None:
    # SGLang (simulated) has no /is_sleeping: 404.
    engine = await start_engine(EngineConfig(engine="sglang", served_model_name=("m",)))
    try:
        got = await scrape(scraper, engine.server.port, SGLANG_PROBE)
        async with httpx.AsyncClient() as http:
            released = await http.post(f"{engine.url}/release_memory_occupation", json={})
        assert released.is_success, released.text
        assert engine.instance.model.is_sleeping
        asleep_but_silent = await scrape(scraper, engine.server.port, SGLANG_PROBE)
    finally:
        await engine.stop()
    assert got.ok and not got.asleep, got
    assert asleep_but_silent.ok and not asleep_but_silent.asleep, asleep_but_silent


@pytest.mark.parametrize("answer", ["not json", '{"is_sleeping": "yes"}', "[true]",
                                    '{"sleeping": true}'])
async def test_a_probe_answer_that_is_not_a_json_true_is_not_asleep(
        scraper: MetricsScraper, answer: str) -> None:
    metrics = ('vllm:num_requests_waiting{engine="0"} 1\n'
               'vllm:num_requests_running{engine="0"} 2\n'
               'vllm:kv_cache_usage_perc{engine="0"} 0.5\n')
    app = Starlette(routes=[
        Route("/metrics", lambda _r: PlainTextResponse(metrics)),
        Route("/is_sleeping", lambda _r: PlainTextResponse(answer)),
    ])
    server = await start_app(app)
    try:
        got = await scrape(scraper, server.port, VLLM_PROBE_ONLY)
    finally:
        await server.stop()
    assert got.ok and not got.asleep and got.waiting_queue == 1.0, got
