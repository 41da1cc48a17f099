"""The engine-sim command line: options, fleets, and a real process on loopback."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from services.enginesim.cli import build_parser, main, plan_fleet
from services.enginesim.profiles import load_profile


def test_vllm_named_options_build_the_config() -> None:
    args = build_parser().parse_args([
        "--port", "9001,9002", "--speed", "1,2.5", "--served-model-name", "tiny", "alias",
        "--max-num-seqs", "8", "--max-model-len", "512", "--num-gpu-blocks-override", "64",
        "--block-size", "16", "--max-num-batched-tokens", "1024", "--role", "prefill",
        "--engine", "sglang", "--seed", "3", "--step-base-ms", "1.5", "--profile", "cpu-tiny"])
    plan = plan_fleet(args)
    assert [port for _, port in plan] == [9001, 9002]
    first, second = plan[0][0], plan[1][0]
    assert (first.speed, second.speed) == (1.0, 2.5)
    assert (first.seed, second.seed) == (3, 4)
    assert first.model_names == ("tiny", "alias") and first.engine == "sglang"
    assert first.num_gpu_blocks == 64 and first.max_num_batched_tokens == 1024
    assert first.role == "prefill" and first.max_num_seqs == 8
    preset = load_profile("cpu-tiny").timing
    assert first.timing.step_base_ms == 1.5
    assert first.timing.prefill_ms_per_token == preset.prefill_ms_per_token


def test_fleet_file(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.json"
    fleet.write_text(json.dumps({"engines": [
        {"port": 9101, "speed": 0.5}, {"port": 9102, "speed": 2, "role": "decode"}]}))
    plan = plan_fleet(build_parser().parse_args(["--fleet", str(fleet)]))
    assert [(c.speed, c.role, p) for c, p in plan] == [(0.5, "both", 9101), (2, "decode", 9102)]


@pytest.mark.parametrize("argv", [
    ["--port", "1,2", "--speed", "1,2,3"],
    ["--port", "x"],
    ["--max-num-seqs", "0"],
    ["--max-model-len", "999999"],
])
def test_bad_options_exit_2_naming_the_problem(argv: list[str],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "engine-sim:" in capsys.readouterr().err


def test_python_m_serves_two_engines_and_stops_on_sigint() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.enginesim", "--port", "0,0", "--speed", "1,4",
         "--served-model-name", "tiny", "--max-model-len", "1024"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        urls = [proc.stdout.readline().rsplit(" ", 1)[-1].strip() for _ in range(2)]
        assert all(u.startswith("http://127.0.0.1:") for u in urls), urls
        for url in urls:
            assert httpx.get(url + "/health", timeout=5).status_code == 200
            reply = httpx.post(url + "/v1/completions", timeout=5,
                               json={"model": "tiny", "prompt": "hi", "max_tokens": 2})
            assert reply.json()["usage"]["completion_tokens"] == 2
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
