"""Worker pieces without I/O: engine command lines, spec decoding, GPU and metrics parsing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from services.enginesim.cli import build_parser as sim_parser
from services.enginesim.cli import plan_fleet
from services.worker.control import MetricsParser
from services.worker.gpu import GpuDevice, parse_nvidia_smi, summarise, visible
from services.worker.launch import sglang_command, sim_command, sim_config, vllm_command
from services.worker.main import build_parser, options_from_args
from services.worker.models import ModelSpec, SleepRequest
from shared.decoding import decode_object
from shared.errors import BadRequest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def spec(**fields: Any) -> ModelSpec:
    return msgspec.convert({"alias": "llama", "model_name": "/models/llama", **fields}, ModelSpec)


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_vllm_command_on_gpu_enables_sleep_mode() -> None:
    s = spec(max_model_len=4096, gpu_memory_utilization=0.85, max_num_seqs=64,
             tensor_parallel_size=2, dtype="bfloat16", enforce_eager=True,
             extra_args=["--enable-prefix-caching"], env={"CUDA_VISIBLE_DEVICES": "0,1"})
    cmd = vllm_command(s, ["llama", "llama-r2"], python="/opt/vllm/bin/python",
                       host="0.0.0.0", port=9001, gpu=True)
    argv = cmd.argv
    assert argv[:3] == ["/opt/vllm/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    assert flag(argv, "--model") == "/models/llama"
    i = argv.index("--served-model-name")
    assert argv[i + 1:i + 3] == ["llama", "llama-r2"]
    assert (flag(argv, "--host"), flag(argv, "--port")) == ("0.0.0.0", "9001")
    assert flag(argv, "--max-model-len") == "4096"
    assert flag(argv, "--gpu-memory-utilization") == "0.85"
    assert flag(argv, "--max-num-seqs") == "64"
    assert flag(argv, "--tensor-parallel-size") == "2"
    assert flag(argv, "--dtype") == "bfloat16"
    assert "--enforce-eager" in argv and "--enable-sleep-mode" in argv
    assert argv[-1] == "--enable-prefix-caching"
    assert cmd.env == {"VLLM_SERVER_DEV_MODE": "1", "CUDA_VISIBLE_DEVICES": "0,1"}


def test_vllm_command_on_cpu_sets_only_dev_mode() -> None:
    cmd = vllm_command(spec(load_format="dummy"), ["llama"], python="python", host="127.0.0.1",
                       port=8000, gpu=False)
    assert "--enable-sleep-mode" not in cmd.argv
    assert cmd.env["VLLM_SERVER_DEV_MODE"] == "1"
    assert flag(cmd.argv, "--load-format") == "dummy"
    for absent in ("--max-model-len", "--gpu-memory-utilization", "--max-num-seqs",
                   "--tensor-parallel-size", "--enforce-eager", "--trust-remote-code"):
        assert absent not in cmd.argv


def test_real_engines_need_a_model_name() -> None:
    with pytest.raises(BadRequest) as err:
        vllm_command(spec(model_name=""), ["llama"], python="p", host="h", port=1, gpu=False)
    assert err.value.field == "model_name"


def test_sglang_command() -> None:
    s = spec(engine="sglang", max_model_len=8192, gpu_memory_utilization=0.8, max_num_seqs=32)
    argv = sglang_command(s, ["llama", "llama-r2"], python="py", host="h", port=30000,
                          gpu=True).argv
    assert argv[:3] == ["py", "-m", "sglang.launch_server"]
    assert flag(argv, "--model-path") == "/models/llama"
    assert flag(argv, "--served-model-name") == "llama"
    assert flag(argv, "--context-length") == "8192"
    assert flag(argv, "--mem-fraction-static") == "0.8"
    assert flag(argv, "--max-running-requests") == "32"
    assert "--enable-metrics" in argv and "--enable-memory-saver" in argv


def test_sim_command_is_understood_by_the_simulator() -> None:
    s = spec(fake=True, fake_response="FAKE_OK", fake_capacity=3, speed=2.0,
             sim_options={"profile": "cpu-tiny", "step_base_ms": 1.5, "sleep_ms": 10,
                          "enable_prefix_caching": False})
    argv = sim_command(s, ["llama"], python="py", host="127.0.0.1", port=9100).argv
    assert argv[:3] == ["py", "-m", "services.enginesim"]
    [(config, port)] = plan_fleet(sim_parser().parse_args(argv[3:]))
    assert port == 9100
    assert config.model_names == ("llama",) and config.max_num_seqs == 3
    assert config.fake_response == "FAKE_OK" and config.speed == 2.0
    assert config.timing.step_base_ms == 1.5 and config.sleep_ms == 10
    assert config.enable_prefix_caching is False
    assert config == sim_config(s, ["llama"])  # in-process and child engines are alike


def test_sim_config_honours_the_fake_fields() -> None:
    cfg = sim_config(spec(model_name="__fake__", fake=True, fake_response="OK",
                          fake_capacity=2, max_num_seqs=99), ["fake", "fake-r2"])
    assert cfg.max_num_seqs == 2 and cfg.fake_response == "OK"
    assert cfg.model_names == ("fake", "fake-r2") and cfg.model == "__fake__"
    with pytest.raises(BadRequest) as err:
        sim_config(spec(sim_options={"port": 1}), ["x"])
    assert err.value.field == "sim_options"


@pytest.mark.parametrize(("raw", "field"), [
    (b'{"alias": "a", "engine": "x"}', "engine"),
    (b'{"alias": "a", "fake_capacity": 0}', "fake_capacity"),
    (b'{"alias": "a", "port": 70000}', "port"),
    (b'{"alias": "a", "env": {"A": 1}}', "env"),
    (b'{"model_name": "m"}', "alias"),
    (b'{"alias": "../etc"}', "alias"),
    (b'"text"', None),
    (b"{", None),
])
def test_spec_errors_name_the_field(raw: bytes, field: str | None) -> None:
    with pytest.raises(BadRequest) as err:
        decode_object(raw, ModelSpec)
    assert err.value.status == 400 and err.value.field == field


def test_spec_defaults_and_ignored_fields() -> None:
    value, ignored = decode_object(b'{"alias": "a", "fake": true, "replicas": 2}', ModelSpec)
    assert ignored == ["replicas"] and value.capacity == 256 and value.engine == "vllm"
    sleep, _ = decode_object(b"", SleepRequest, empty_ok=True)
    assert sleep.level is None and sleep.drain_timeout_s == 30.0


def test_nvidia_smi_parsing_and_summary() -> None:
    text = "0, NVIDIA H100 80GB HBM3, 81559, 40960, 37\n1, NVIDIA H100 80GB HBM3, 81559, " \
           "81000, [N/A]\nNo devices were found\n"
    devices = parse_nvidia_smi(text)
    assert devices[0] == GpuDevice(0, "NVIDIA H100 80GB HBM3", 81559 / 1024, 40.0, 0.37)
    assert devices[1].utilization == 0.0 and len(devices) == 2
    info = summarise(visible(devices, "1"))
    assert info is not None and info.available_memory_gb == round(81000 / 1024, 3)
    both = summarise(visible(devices, None))
    assert both is not None and both.utilization == 0.185 and both.source == "nvidia-smi"
    assert summarise([]) is None


def test_metrics_of_a_real_vllm_during_load() -> None:
    text = (FIXTURES / "metrics" / "vllm-0.32.0-during-load.txt").read_text()
    load = MetricsParser("vllm").parse(text)
    assert load.running is not None and load.waiting is not None
    assert load.sleep_level == 0 and load.kv_cache_usage is not None
    assert load.ttft_avg is not None and load.ttft_avg > 0


def test_metrics_after_sleep_report_the_level() -> None:
    text = (FIXTURES / "enginesim" / "metrics_after_sleep.prom").read_text()
    assert MetricsParser("vllm").parse(text).sleep_level == 1


def test_metrics_of_sglang() -> None:
    load = MetricsParser("sglang").parse((FIXTURES / "metrics" / "sglang.txt").read_text())
    assert load.running is not None and load.sleep_level is None


def test_command_line_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_KEY", "k1")
    monkeypatch.setenv("LLMSCHED_GPU", "0")
    args = build_parser().parse_args([
        "--port", "8100", "--host", "0.0.0.0", "--manager-url", "http://api:8080",
        "--api-key-env", "MY_KEY", "--advertise-host", "10.1.2.3", "--engine-backend",
        "vllm-process", "--vllm-python", "/opt/v/bin/python", "--heartbeat-interval", "2"])
    options = options_from_args(args)
    assert options.api_key == "k1" and options.heartbeat_interval_s == 2
    assert options.settings.advertise_host == "10.1.2.3"
    assert options.settings.engine_host == "0.0.0.0"
    assert options.settings.default_backend == "vllm-process"
    assert options.settings.vllm_python == "/opt/v/bin/python"
    assert options.settings.gpu is False
    with pytest.raises(ValueError, match="heartbeat"):
        options_from_args(build_parser().parse_args(["--heartbeat-interval", "0"]))
