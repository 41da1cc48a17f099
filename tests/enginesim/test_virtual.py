"""Virtual time: speed, determinism, routing policies, and the same trace over real HTTP.

How close virtual-time TTFT is to the real-time server's is measured by
``bench/enginesim_fidelity.py``, not asserted here: it depends on the machine's load.
"""

from __future__ import annotations

import dataclasses
import time

import pytest

from services.enginesim.config import EngineConfig
from services.enginesim.launcher import start_engine
from services.enginesim.policies import RoundRobin, least_in_flight, least_waiting, poisson_trace
from services.enginesim.replay import prompt_for, replay
from services.enginesim.tokenizer import encode_prompt
from services.enginesim.virtual import RouterView, TraceRequest, percentile, simulate

FLEET = [EngineConfig(seed=i, speed=s) for i, s in enumerate((1.0, 1.0, 0.5, 2.0))]


def test_ten_thousand_requests_run_faster_than_real_time() -> None:
    trace = poisson_trace(10_000, 150.0, seed=1)
    start = time.perf_counter()
    result = simulate(trace, FLEET, least_in_flight)
    elapsed = time.perf_counter() - start
    print(f"virtual time: 10k requests, 4 engines: {elapsed:.2f} s wall, "
          f"{result.sim_seconds:.1f} s simulated, {result.steps} steps")
    assert len(result.requests) == 10_000
    # About 66 s of traffic: a clock that really slept could not finish sooner.
    assert elapsed < result.sim_seconds, (elapsed, result.sim_seconds)
    assert all(r.output_tokens == trace[r.index].output_tokens for r in result.requests)
    assert all(0 < r.ttft <= r.e2e for r in result.requests)


def test_same_seed_same_output_and_seed_matters() -> None:
    trace = poisson_trace(800, 120.0, seed=4)
    first = simulate(trace, FLEET, RoundRobin())
    second = simulate(trace, FLEET, RoundRobin())
    assert first.requests == second.requests and first.series == second.series
    reseeded = [dataclasses.replace(c, seed=c.seed + 100) for c in FLEET]
    assert simulate(trace, reseeded, RoundRobin()).requests != first.requests


def test_policies_see_scraped_metrics_and_in_flight() -> None:
    seen: list[RouterView] = []

    def spy(request: TraceRequest, view: RouterView) -> int:
        seen.append(view)
        return least_waiting(request, view)

    trace = poisson_trace(400, 300.0, seed=2)
    result = simulate(trace, FLEET, spy, scrape_interval=0.25)
    assert len(seen) == 400
    assert all(len(v.engines) == 4 and len(v.in_flight) == 4 for v in seen)
    assert all(v.now - e.scraped_at < 0.25 + 1e-9 for v in seen for e in v.engines)
    assert any(sum(v.in_flight) > 0 for v in seen)
    samples = result.series[0]
    assert samples and samples[1].t - samples[0].t == pytest.approx(0.25)
    assert max(s.running for series in result.series for s in series) > 0
    assert result.series[0][-1].prefix_cache_hits > 0


def test_least_in_flight_beats_round_robin_on_a_mixed_fleet() -> None:
    trace = poisson_trace(3000, 250.0, seed=3)
    rr = simulate(trace, FLEET, RoundRobin(), record_series=False)
    lif = simulate(trace, FLEET, least_in_flight, record_series=False)
    assert lif.percentile("ttft", 99) < rr.percentile("ttft", 99)
    slow = [r.ttft for r in rr.requests if r.engine == 2]
    fast = [r.ttft for r in rr.requests if r.engine == 3]
    assert percentile(slow, 50) > percentile(fast, 50)


def test_replay_prompts_tokenize_to_the_trace_lengths() -> None:
    item = TraceRequest(0.0, 100, 5, prefix_group=3, prefix_tokens=40)
    ids_a = encode_prompt(prompt_for(0, item))
    ids_b = encode_prompt(prompt_for(1, item))
    assert len(ids_a) == len(ids_b) == 100
    assert ids_a[:40] == ids_b[:40] and ids_a[40:] != ids_b[40:]


TWIN = EngineConfig(served_model_name=("tiny",), max_model_len=2048, max_num_seqs=8,
                    num_gpu_blocks=512, seed=5)


async def test_virtual_and_real_time_run_the_same_trace_to_the_same_completions() -> None:
    trace = poisson_trace(60, 50.0, input_mean=200, output_mean=20, groups=4, prefix_tokens=64,
                          seed=11)
    fleet = [TWIN, dataclasses.replace(TWIN, seed=6)]
    virtual = simulate(trace, fleet, RoundRobin(), group_prefix_tokens=64)
    engines = [await start_engine(cfg) for cfg in fleet]
    try:
        real = await replay(trace, [e.url for e in engines], model="tiny", default_prefix=64)
    finally:
        for engine in engines:
            await engine.stop()
    want = [(i, i % 2, t.output_tokens) for i, t in enumerate(trace)]
    assert [(r.index, r.engine, r.output_tokens) for r in virtual.requests] == want
    assert [(r.index, r.engine, r.output_tokens) for r in real] == want
    assert all(0 < r.ttft <= r.e2e for r in virtual.requests)
    assert all(0 < r.ttft <= r.e2e for r in real), real
