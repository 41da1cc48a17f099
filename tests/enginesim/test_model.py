"""The pure queueing model and KV block pool, driven by hand (no clock, no I/O)."""

from __future__ import annotations

import dataclasses

import pytest

from services.enginesim.config import EngineConfig, SimConfigError, Timing, config_from_dict
from services.enginesim.kvcache import BlockPool
from services.enginesim.model import EngineModel, SimRequest
from services.enginesim.profiles import load_profile

NO_JITTER = Timing(jitter=0.0)
SMALL = EngineConfig(max_num_seqs=4, num_gpu_blocks=64, max_model_len=512, block_size=16,
                     max_num_batched_tokens=2048, timing=NO_JITTER)


def _req(rid: str, prompt: int, out: int, group: int | None = None) -> SimRequest:
    key = rid if group is None else group
    hashes = [hash((key, b)) for b in range(prompt // 16)]
    return SimRequest(rid, prompt, hashes, max_tokens=out)


def _run(model: EngineModel, now: float = 0.0, max_steps: int = 100_000) -> float:
    for _ in range(max_steps):
        duration = model.begin_step(now)
        if duration is None:
            return now
        now += duration
        model.finish_step(now)
    raise AssertionError("model did not drain")


def test_batch_is_capped_by_max_num_seqs() -> None:
    model = EngineModel(SMALL)
    for i in range(6):
        model.add(_req(str(i), 32, 4), 0.0)
    model.finish_step(model.begin_step(0.0) or 0.0)
    assert model.num_running == 4 and model.num_waiting == 2


def test_requests_wait_when_kv_is_full() -> None:
    model = EngineModel(dataclasses.replace(SMALL, num_gpu_blocks=40, max_num_seqs=8))
    for i in range(4):
        model.add(_req(str(i), 256, 4), 0.0)
    model.begin_step(0.0)
    assert model.num_running == 2 and model.num_waiting == 2
    assert model.kv_usage == pytest.approx(32 / 40)


def test_growing_requests_are_preempted_and_recomputed() -> None:
    model = EngineModel(dataclasses.replace(SMALL, num_gpu_blocks=34))
    reqs = [_req(str(i), 128, 150) for i in range(3)]
    for req in reqs:
        model.add(req, 0.0)
    _run(model)
    assert model.stats.preemptions > 0
    assert all(r.finish_reason == "length" and r.num_output == 150 for r in reqs)
    assert max(r.num_preemptions for r in reqs) >= 1
    assert model.pool.num_free == 34


def test_chunked_prefill_respects_the_token_budget() -> None:
    model = EngineModel(dataclasses.replace(SMALL, max_num_batched_tokens=100))
    req = _req("long", 400, 2)
    model.add(req, 0.0)
    steps = 0
    now = 0.0
    while req.first_token is None:
        now += model.begin_step(now) or 0.0
        model.finish_step(now)
        steps += 1
        assert req.num_computed <= 100 * steps
    assert steps == 4
    assert model.stats.iteration_tokens.sum == 400


def test_prefill_time_follows_uncached_tokens() -> None:
    model = EngineModel(SMALL)
    first = _req("a", 320, 1, group=1)
    model.add(first, 0.0)
    end = _run(model)
    second = _req("b", 320, 1, group=1)
    model.add(second, end)
    _run(model, end)
    assert second.cached_tokens == 304
    assert (second.first_token or 0) - second.arrival < (first.first_token or 0) - first.arrival
    assert model.stats.prefix_hits == 304 and model.stats.prefix_queries == 640


def test_decode_step_time_grows_with_batch_size() -> None:
    def decode_step(batch: int) -> float:
        model = EngineModel(dataclasses.replace(SMALL, max_num_seqs=64, num_gpu_blocks=512))
        for i in range(batch):
            model.add(_req(str(i), 16, 5), 0.0)
        now = model.begin_step(0.0) or 0.0
        model.finish_step(now)
        return model.begin_step(now) or 0.0

    assert decode_step(1) < decode_step(8) < decode_step(32)


def test_speed_factor_scales_step_time() -> None:
    def makespan(speed: float) -> float:
        model = EngineModel(dataclasses.replace(SMALL, speed=speed))
        model.add(_req("x", 64, 20), 0.0)
        return _run(model)

    assert makespan(2.0) == pytest.approx(makespan(1.0) / 2)


def test_seeded_jitter_is_deterministic() -> None:
    def durations(seed: int) -> list[float]:
        model = EngineModel(dataclasses.replace(SMALL, seed=seed, timing=Timing(jitter=0.1)))
        model.add(_req("x", 64, 10), 0.0)
        out, now = [], 0.0
        while (d := model.begin_step(now)) is not None:
            out.append(d)
            now += d
            model.finish_step(now)
        return out

    assert durations(1) == durations(1)
    assert durations(1) != durations(2)


def test_sleep_keep_requeues_and_abort_ends_everything_held() -> None:
    model = EngineModel(SMALL)
    kept, lost = _req("k", 32, 5, group=3), _req("l", 32, 5)
    model.add(kept, 0.0)
    model.begin_step(0.0)
    assert model.sleep(1, "keep", 0.01) == []
    # Level 1 drops the KV cache: the kept request is recomputed after the wake-up.
    assert model.begin_step(0.02) is None and model.num_waiting == 1
    assert (model.reported_running, model.reported_waiting) == (1, 0)
    model.add(lost, 0.03)
    assert model.num_waiting == 2 and model.reported_waiting == 0
    aborted = model.sleep(2, "abort", 0.04)
    assert {r.rid for r in aborted} == {"k", "l"}
    assert all(r.finish_reason == "abort" for r in aborted)
    assert model.pool.num_cached == 0 and model.sleep_level == 2
    assert model.wake(["weights"]) is False and model.is_sleeping
    assert model.wake() is True
    assert not model.is_sleeping and model.sleep_level is None


def test_sleep_wait_admits_nothing_new_until_woken() -> None:
    model = EngineModel(SMALL)
    first, second = _req("a", 32, 3), _req("b", 32, 3)
    model.add(first, 0.0)
    now = model.begin_step(0.0) or 0.0
    model.finish_step(now)
    assert model.sleep(1, "wait", now) == [] and model.is_sleeping
    model.add(second, now)
    now = _run(model, now)
    assert first.finish_reason == "length" and second.first_scheduled is None
    model.finish_sleep(1)
    assert (model.reported_running, model.reported_waiting) == (0, 1)
    model.wake()
    _run(model, now)
    assert second.finish_reason == "length"


def test_block_pool_lru_eviction_and_refcounts() -> None:
    pool = BlockPool(4)
    a = pool.allocate(2)
    pool.register(a[0], 100)
    pool.register(a[1], 101)
    pool.release(a)
    assert pool.num_free == 4 and pool.usage == 0.0
    hits = pool.match_prefix([100, 101, 102], 3)
    assert hits == a
    assert pool.free_after_taking(hits) == 2
    pool.take(hits[:1])
    assert pool.usage == 0.25
    pool.allocate(3)
    # The second cached block was evicted to make room; the referenced one survives.
    assert pool.match_prefix([100, 101], 2) == a[:1]
    with pytest.raises(ValueError):
        pool.allocate(1)


def test_config_fails_fast_naming_the_key() -> None:
    with pytest.raises(SimConfigError, match="max_num_seqs"):
        EngineConfig(max_num_seqs=0).validate()
    with pytest.raises(SimConfigError, match="max_model_len"):
        EngineConfig(num_gpu_blocks=10).validate()
    with pytest.raises(SimConfigError, match="bogus"):
        config_from_dict({"bogus": 1})
    cfg = config_from_dict({"profile": "cpu-tiny", "jitter": 0, "num-gpu-blocks-override": 99999})
    assert cfg.timing.step_base_ms == load_profile("cpu-tiny").timing.step_base_ms
    assert cfg.timing.jitter == 0 and cfg.num_gpu_blocks == 99999
