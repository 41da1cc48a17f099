"""The timing model: front-end floor, prefill context cost, queue overhead, correlated noise,
and profiles (shipped presets and files, JSON or YAML)."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import statistics
from pathlib import Path

import pytest
import yaml

from services.enginesim.cli import build_parser, main, plan_fleet
from services.enginesim.config import EngineConfig, SimConfigError, Timing, config_from_dict
from services.enginesim.model import EngineModel, SimRequest
from services.enginesim.noise import StepNoise
from services.enginesim.profiles import PRESETS, ProfileError, load_profile, read_profile
from services.enginesim.virtual import TraceRequest, simulate

QUIET = Timing(frontend_ms=0.0, step_base_ms=2.0, prefill_ms_per_token=0.01,
               prefill_ms_per_token_kctx=0.0, decode_ms_per_seq=0.1, attn_ms_per_ctx_token=0.0,
               jitter=0.0, drift_sd=0.0)
ENGINE = EngineConfig(max_num_seqs=4, num_gpu_blocks=256, max_model_len=2048, block_size=16,
                      max_num_batched_tokens=4096, timing=QUIET)


def _req(rid: str, prompt: int, out: int) -> SimRequest:
    return SimRequest(rid, prompt, [hash((rid, b)) for b in range(prompt // 16)], max_tokens=out)


def _model(**timing: float) -> EngineModel:
    return EngineModel(dataclasses.replace(ENGINE, timing=dataclasses.replace(QUIET, **timing)))


def test_front_end_floor_delays_scheduling_and_is_not_counted_as_waiting() -> None:
    model = _model(frontend_ms=12.0)
    model.add(_req("a", 100, 2), 0.0)
    assert model.begin_step(0.0) is None, "the scheduler must not see it before the floor"
    assert model.num_waiting == 0 and len(model.arriving) == 1
    assert model.next_wakeup() == pytest.approx(0.012)
    duration = model.begin_step(0.012)
    assert duration == pytest.approx((2.0 + 0.01 * 100) / 1000)
    model.finish_step(0.012 + duration)
    result = simulate([TraceRequest(0.0, 100, 1)], [dataclasses.replace(
        ENGINE, timing=dataclasses.replace(QUIET, frontend_ms=12.0))], lambda r, v: 0)
    assert result.requests[0].ttft == pytest.approx(0.012 + 0.003), result.requests[0]


def test_prefill_cost_grows_with_the_context_before_each_token() -> None:
    costs = []
    for length in (256, 1024):
        model = _model(prefill_ms_per_token_kctx=0.05)
        model.add(_req("p", length, 1), 0.0)
        costs.append(model.begin_step(0.0) or 0.0)
    # base + per-token + 0.05 ms per token per 1,000 tokens before it: L(L-1)/2 positions.
    for length, cost in zip((256, 1024), costs, strict=True):
        expected = 2.0 + 0.01 * length + 0.05 * length * (length - 1) / 2 / 1000
        assert cost * 1000 == pytest.approx(expected), (length, cost)


def test_a_long_queue_slows_every_step() -> None:
    steps = []
    for per_waiting in (0.0, 0.05):
        model = _model(queue_ms_per_waiting=per_waiting)
        for i in range(24):
            model.add(_req(str(i), 32, 8), 0.0)
        steps.append(model.begin_step(0.0) or 0.0)
    # 4 admitted, 20 left waiting: 20 x 0.05 ms more.
    assert (steps[1] - steps[0]) * 1000 == pytest.approx(20 * 0.05), steps
    capped = _model(queue_ms_per_waiting=0.05, queue_waiting_cap=8)
    for i in range(24):
        capped.add(_req(str(i), 32, 8), 0.0)
    # Past the cap the drop levels off: 8, not 20, waiting requests count.
    assert ((capped.begin_step(0.0) or 0.0) - steps[0]) * 1000 == pytest.approx(8 * 0.05)


def test_drift_is_correlated_over_its_time_constant_and_has_mean_one() -> None:
    noise = StepNoise(jitter=0.0, drift_sd=0.3, drift_tau_s=2.0, seed=3)
    values = [math.log(noise.drift(t * 0.01)) for t in range(200_000)]  # 2,000 s
    mean_factor = statistics.fmean(math.exp(v) for v in values)
    assert mean_factor == pytest.approx(1.0, abs=0.05), mean_factor
    sd = statistics.pstdev(values)
    assert sd == pytest.approx(0.3, rel=0.15), sd

    def autocorr(lag_s: float) -> float:
        k = int(lag_s / 0.01)
        x = values[:-k]
        y = values[k:]
        mx, my = statistics.fmean(x), statistics.fmean(y)
        cov = statistics.fmean((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
        return cov / (statistics.pstdev(x) * statistics.pstdev(y))

    near, one_tau, far = autocorr(0.1), autocorr(2.0), autocorr(12.0)
    assert near > 0.9 and 0.2 < one_tau < 0.55 and abs(far) < 0.15, (near, one_tau, far)


def test_jitter_alone_is_independent_from_step_to_step() -> None:
    noise = StepNoise(jitter=0.1, drift_sd=0.0, drift_tau_s=5.0, seed=1)
    values = [noise.factor(t * 0.005) for t in range(20_000)]
    pairs = list(itertools.pairwise(values))
    m = statistics.fmean(values)
    lag1 = statistics.fmean((a - m) * (b - m) for a, b in pairs) / statistics.pvariance(values)
    assert abs(lag1) < 0.05 and statistics.pstdev(values) == pytest.approx(0.1, rel=0.1), lag1
    again = StepNoise(jitter=0.1, drift_sd=0.0, drift_tau_s=5.0, seed=1)
    assert [again.factor(t * 0.005) for t in range(100)] == values[:100], "seeded"


def test_shipped_presets_load_and_the_h100_one_is_the_documented_default() -> None:
    assert set(PRESETS) == {"h100-llama3.1-8b", "cpu-tiny"}
    h100 = load_profile("h100-llama3.1-8b")
    assert h100.timing == Timing(), "the H100 preset file is the default timing"
    assert h100.limits["max_num_seqs"] == 256 and h100.limits["num_gpu_blocks"] == 27000
    cpu = load_profile("cpu-tiny")
    assert cpu.limits == {"max_num_seqs": 8, "max_model_len": 512, "block_size": 128,
                          "num_gpu_blocks": 8192, "max_num_batched_tokens": 2048}, cpu.limits
    assert cpu.timing.frontend_ms > 0 and cpu.timing.drift_sd > 0, cpu.timing


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_profile_file_sets_timing_and_limits_unless_given(tmp_path: Path, suffix: str) -> None:
    data = {"name": "mine", "timing": {"frontend_ms": 9.5, "step_base_ms": 3.25,
                                       "drift_sd": 0.2, "drift_tau_s": 4.0},
            "engine": {"max_num_seqs": 6, "block_size": 32, "num_gpu_blocks": 100,
                       "max_model_len": 1024}, "fit": {"kept": "as is"}}
    path = tmp_path / f"mine{suffix}"
    path.write_text(json.dumps(data) if suffix == ".json" else yaml.safe_dump(data))
    profile = read_profile(path)
    assert profile.extra == {"fit": {"kept": "as is"}}
    [(config, _)] = plan_fleet(build_parser().parse_args(["--profile", str(path)]))
    assert config.timing.frontend_ms == 9.5 and config.timing.step_base_ms == 3.25
    assert config.timing.prefill_ms_per_token == Timing().prefill_ms_per_token
    assert (config.max_num_seqs, config.block_size, config.num_gpu_blocks,
            config.max_model_len) == (6, 32, 100, 1024)
    [(explicit, _)] = plan_fleet(build_parser().parse_args(
        ["--profile", str(path), "--max-num-seqs", "3", "--frontend-ms", "1"]))
    assert explicit.max_num_seqs == 3 and explicit.timing.frontend_ms == 1.0
    assert config_from_dict({"profile": str(path), "block_size": 16}).block_size == 16


def test_bad_profiles_fail_naming_the_problem(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    bad_key = tmp_path / "bad.json"
    bad_key.write_text(json.dumps({"timing": {"step_base": 1}}))
    with pytest.raises(ProfileError, match="step_base"):
        read_profile(bad_key)
    negative = tmp_path / "neg.yaml"
    negative.write_text("timing:\n  jitter: -1\n")
    with pytest.raises(ProfileError, match="jitter"):
        read_profile(negative)
    with pytest.raises(SimConfigError, match="no-such"):
        config_from_dict({"profile": "no-such-preset"})
    assert main(["--profile", str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    assert main(["--profile", str(broken)]) == 2
    assert "not valid json" in capsys.readouterr().err.lower()


def test_slow_drift_is_a_function_of_time_since_the_first_step() -> None:
    # A real-time engine (loop clock at ~5,000 s, steps at its own times) and a virtual-time
    # run (clock from 0, other step times) with one seed see the same slow spells.
    real = StepNoise(jitter=0.0, drift_sd=0.3, drift_tau_s=2.0, seed=9)
    virtual = StepNoise(jitter=0.0, drift_sd=0.3, drift_tau_s=2.0, seed=9)
    # The first step fixes the origin; samples sit mid-way between the path's grid points.
    real.drift(5000.0)
    virtual.drift(0.0)
    elapsed = [k * 0.1 + 0.05 for k in range(400)]
    real_seen = []
    for t in elapsed:
        real_seen.append(real.drift(5000.0 + t))
        real.drift(5000.0 + t + 0.011)  # steps of its own in between
    virt_seen = [virtual.drift(t) for t in elapsed]
    assert real_seen == pytest.approx(virt_seen), "one seed, one path"
    assert len(set(virt_seen)) > 300, "the path moves"
    other = StepNoise(jitter=0.0, drift_sd=0.3, drift_tau_s=2.0, seed=10)
    other.drift(0.0)
    assert [other.drift(t) for t in elapsed] != pytest.approx(virt_seen)
