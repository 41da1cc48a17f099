"""Stalls: spells in which a simulated engine admits and streams nothing (seeded, the same in
real and virtual time), and the calibration's reading of them from throughput windows."""

from __future__ import annotations

import dataclasses
import itertools
import statistics

import pytest

from services.enginesim.calibrate.fit import fit_noise
from services.enginesim.calibrate.probes import Saturation
from services.enginesim.calibrate.stalls import Stall, find_stalls, fit_stalls, steady_windows
from services.enginesim.config import EngineConfig, SimConfigError, Timing
from services.enginesim.model import EngineModel, SimRequest
from services.enginesim.noise import Stalls, StepNoise
from services.enginesim.virtual import TraceRequest, simulate

QUIET = Timing(frontend_ms=0.0, step_base_ms=2.0, prefill_ms_per_token=0.01,
               prefill_ms_per_token_kctx=0.0, decode_ms_per_seq=0.1, attn_ms_per_ctx_token=0.0,
               jitter=0.0, drift_sd=0.0)
ENGINE = EngineConfig(max_num_seqs=4, num_gpu_blocks=256, max_model_len=2048, block_size=16,
                      max_num_batched_tokens=4096, timing=QUIET)


def test_stall_episodes_have_the_given_rate_and_mean_length() -> None:
    stalls = Stalls(rate_per_s=0.2, mean_s=0.5, seed=7)
    step = 0.01
    stalled = [stalls.remaining(i * step) > 0 for i in range(400_000)]  # 4,000 s
    starts = sum(1 for a, b in zip([False, *stalled], stalled, strict=False) if b and not a)
    share = sum(stalled) / len(stalled)
    # Rate per unstalled second 0.2, mean 0.5 s: 0.2 x 0.5 / (1 + 0.2 x 0.5) of the time.
    assert share == pytest.approx(0.1 / 1.1, rel=0.15), share
    assert starts / (len(stalled) * step * (1 - share)) == pytest.approx(0.2, rel=0.15), starts
    assert sum(stalled) * step / starts == pytest.approx(0.5, rel=0.15)


def test_a_stall_delays_the_step_that_starts_in_it_and_is_seeded() -> None:
    noise = StepNoise(0.0, 0.0, 5.0, seed=3, stall_rate_per_s=1.0, stall_mean_s=0.4)
    waits = [noise.stall(i * 0.05) for i in range(400)]
    assert any(w > 0 for w in waits) and any(w == 0 for w in waits), waits
    # Inside one stall the wait shrinks as time goes on and ends where the stall ends.
    for a, b in itertools.pairwise(waits):
        if a > 0.05 and b > 0:
            assert b == pytest.approx(a - 0.05), (a, b)
    again = StepNoise(0.0, 0.0, 5.0, seed=3, stall_rate_per_s=1.0, stall_mean_s=0.4)
    assert [again.stall(i * 0.05) for i in range(400)] == waits
    off = StepNoise(0.0, 0.0, 5.0, seed=3)
    assert all(off.stall(i * 0.05) == 0 for i in range(400))


def test_requests_that_arrive_in_a_stall_wait_for_its_end() -> None:
    stalled = dataclasses.replace(ENGINE, timing=dataclasses.replace(
        QUIET, stall_rate_per_s=0.5, stall_mean_s=1.0))
    trace = [TraceRequest(i * 0.05, 64, 4) for i in range(400)]  # 20 s
    calm = simulate(trace, [ENGINE], lambda r, v: 0).requests
    rough = simulate(trace, [stalled], lambda r, v: 0).requests
    calm_ttft = sorted(r.ttft for r in calm if r.ttft is not None)
    rough_ttft = sorted(r.ttft for r in rough if r.ttft is not None)
    assert len(rough_ttft) == len(calm_ttft) == 400
    assert max(calm_ttft) < 0.01, "no queue without stalls at this load"
    assert rough_ttft[-1] > 0.3 and statistics.median(rough_ttft) < 0.01, (
        rough_ttft[-5:], statistics.median(rough_ttft))


def test_a_stall_needs_a_length() -> None:
    with pytest.raises(SimConfigError, match="stall_mean_s"):
        dataclasses.replace(ENGINE, timing=dataclasses.replace(
            QUIET, stall_rate_per_s=0.5)).validate()


def test_a_model_without_stalls_is_unchanged() -> None:
    model = EngineModel(ENGINE)
    model.add(SimRequest("a", 100, [1, 2, 3, 4, 5, 6], max_tokens=2), 0.0)
    assert model.begin_step(0.0) == pytest.approx((2.0 + 0.01 * 100) / 1000)


@pytest.mark.parametrize(("windows", "runs"), [
    ([100.0] * 8, []),
    ([100, 0, 0, 400, 100, 100], [Stall(1, 2)]),
    ([100, 100, 100, 10, 100, 0], [Stall(3, 1), Stall(5, 1)]),
    ([0, 0, 100, 100, 100], [Stall(0, 2)]),
    ([], []),
])
def test_stalls_are_runs_of_windows_under_a_quarter_of_the_median(
        windows: list[float], runs: list[Stall]) -> None:
    assert find_stalls(windows) == runs


def test_the_fit_counts_stalls_per_unstalled_second_and_their_mean_length() -> None:
    windows = [100.0] * 36 + [0.0, 0.0, 300.0] + [100.0] * 20 + [0.0, 300.0]  # 61 x 0.25 s
    fit = fit_stalls(windows, 0.25)
    assert fit.count == 2 and fit.mean_s == pytest.approx(0.375)
    assert fit.rate_per_s == pytest.approx(2 / (61 * 0.25 - 0.75))
    assert fit_stalls([100.0] * 40, 0.25).rate_per_s == 0.0
    # The slow-noise fit sees neither the stalls nor the bursts that follow them.
    assert steady_windows(windows) == [100.0] * 56


def test_the_noise_fit_reads_stalls_from_the_saturation_windows() -> None:
    windows = ([1000.0, 1100.0, 900.0, 1050.0] * 10 + [0.0, 0.0, 3000.0]) * 2
    sat = Saturation(concurrency=32, seconds=30.0, throughput=1000.0, request_rate=10.0,
                     windows=windows, window_s=0.25, max_running=8.0)
    noise = fit_noise(sat, [], stalls=True)
    assert noise.stall_mean_s == pytest.approx(0.5) and noise.stall_rate_per_s > 0, noise
    assert noise.drift_sd < 0.2, "stalls and bursts must not pass for slow noise"
    unasked = fit_noise(sat, [])
    assert unasked.stall_rate_per_s == 0.0 and unasked.stall_mean_s == 0.0, unasked
