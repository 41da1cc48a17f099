"""How each backend starts an engine: simulator configs and real engine command lines (pure)."""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from services.enginesim.config import EngineConfig, SimConfigError, config_from_dict
from services.worker.models import ModelSpec
from shared.errors import BadRequest

VLLM_MODULE = "vllm.entrypoints.openai.api_server"
SGLANG_MODULE = "sglang.launch_server"
SIM_MODULE = "services.enginesim"


@dataclass(frozen=True)
class Command:
    """A child process to run: argv and the environment variables to add."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


def sim_config(spec: ModelSpec, served_names: list[str]) -> EngineConfig:
    """The simulator config honouring the spec's engine args and fake fields."""
    options: dict[str, object] = {
        "engine": spec.engine,
        "model": spec.model_name or "__fake__",
        "served_model_name": list(served_names),
        "speed": spec.speed,
        "fake_response": spec.fake_response,
    }
    if spec.role is not None:
        options["role"] = spec.role
    if spec.fake and spec.fake_capacity is not None:
        options["max_num_seqs"] = spec.fake_capacity
    elif spec.max_num_seqs is not None:
        options["max_num_seqs"] = spec.max_num_seqs
    for key in ("max_model_len", "gpu_memory_utilization", "num_gpu_blocks_override"):
        value = getattr(spec, key)
        if value is not None:
            options[key] = value
    for key in spec.sim_options:
        if key.replace("-", "_") in ("port", "host", "served_model_name"):
            raise BadRequest("sim_options", f"sim_options may not set {key!r}")
    options.update(spec.sim_options)
    try:
        return config_from_dict(options)
    except SimConfigError as err:
        raise BadRequest(_sim_field(str(err), spec), f"simulated engine: {err}") from None


def _sim_field(message: str, spec: ModelSpec) -> str:
    first = message.split(" ", 1)[0].strip("'\"")
    names = {f.name for f in msgspec.structs.fields(ModelSpec)}
    if first in names:
        return first
    return "sim_options" if spec.sim_options else "engine"


def sim_command(spec: ModelSpec, served_names: list[str], *, python: str, host: str,
                port: int) -> Command:
    """``python -m services.enginesim ...`` for the sim-process backend."""
    cfg = sim_config(spec, served_names)
    argv = [python, "-m", SIM_MODULE, "--host", host, "--port", str(port),
            "--engine", cfg.engine, "--model", cfg.model,
            "--served-model-name", *cfg.model_names,
            "--max-num-seqs", str(cfg.max_num_seqs), "--max-model-len", str(cfg.max_model_len),
            "--num-gpu-blocks-override", str(cfg.num_gpu_blocks),
            "--speed", str(cfg.speed), "--seed", str(cfg.seed), "--role", cfg.role]
    if cfg.fake_response is not None:
        argv += ["--fake-response", cfg.fake_response]
    for key, value in spec.sim_options.items():
        flag = "--" + key.replace("_", "-")
        if flag in argv or key in ("num_gpu_blocks", "num_gpu_blocks_override", "seed"):
            continue
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        else:
            argv += [flag, str(value)]
    return Command(argv, dict(spec.env))


def vllm_command(spec: ModelSpec, served_names: list[str], *, python: str, host: str,
                 port: int, gpu: bool) -> Command:
    """The ``vllm serve`` equivalent for a real vLLM process.

    Sleep mode needs ``--enable-sleep-mode`` plus ``VLLM_SERVER_DEV_MODE=1``; on CPU vLLM
    refuses the flag but the dev-mode endpoints still pause and resume the engine.
    """
    if not spec.model_name:
        raise BadRequest("model_name", "model_name is required for a real vLLM instance")
    argv = [python, "-m", VLLM_MODULE, "--model", spec.model_name,
            "--served-model-name", *served_names, "--host", host, "--port", str(port)]
    flags: list[tuple[str, object]] = [
        ("--max-model-len", spec.max_model_len),
        ("--gpu-memory-utilization", spec.gpu_memory_utilization),
        ("--max-num-seqs", spec.max_num_seqs),
        ("--tensor-parallel-size", spec.tensor_parallel_size),
        ("--dtype", spec.dtype),
        ("--load-format", spec.load_format),
        ("--quantization", spec.quantization),
        ("--num-gpu-blocks-override", spec.num_gpu_blocks_override),
    ]
    argv += [part for flag, value in flags if value is not None for part in (flag, str(value))]
    if spec.enforce_eager:
        argv.append("--enforce-eager")
    if spec.trust_remote_code:
        argv.append("--trust-remote-code")
    if gpu:
        argv.append("--enable-sleep-mode")
    argv += spec.extra_args
    return Command(argv, {"VLLM_SERVER_DEV_MODE": "1", **spec.env})


def sglang_command(spec: ModelSpec, served_names: list[str], *, python: str, host: str,
                   port: int, gpu: bool) -> Command:
    """``python -m sglang.launch_server ...`` for a real SGLang process."""
    if not spec.model_name:
        raise BadRequest("model_name", "model_name is required for a real SGLang instance")
    # SGLang serves one name; the model alias is the one clients use.
    argv = [python, "-m", SGLANG_MODULE, "--model-path", spec.model_name,
            "--served-model-name", served_names[0], "--host", host, "--port", str(port),
            "--enable-metrics"]
    flags: list[tuple[str, object]] = [
        ("--context-length", spec.max_model_len),
        ("--mem-fraction-static", spec.gpu_memory_utilization),
        ("--max-running-requests", spec.max_num_seqs),
        ("--tp-size", spec.tensor_parallel_size),
        ("--dtype", spec.dtype),
        ("--load-format", spec.load_format),
        ("--quantization", spec.quantization),
    ]
    argv += [part for flag, value in flags if value is not None for part in (flag, str(value))]
    if spec.enforce_eager:
        argv.append("--disable-cuda-graph")
    if spec.trust_remote_code:
        argv.append("--trust-remote-code")
    if gpu:
        argv.append("--enable-memory-saver")
    argv += spec.extra_args
    return Command(argv, dict(spec.env))
