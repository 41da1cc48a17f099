"""``llmsched engine-sim``: run one simulated vLLM/SGLang engine, or a fleet, in one process."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import signal
import sys
from pathlib import Path
from typing import Any

from services.enginesim.config import EngineConfig, SimConfigError, config_from_dict
from services.enginesim.kv_events import kv_event_options
from services.enginesim.launcher import start_fleet
from services.enginesim.profiles import PRESETS
from services.enginesim.timing import Timing
from shared.config import LOG_LEVELS
from shared.logs import setup_logging

_TIMING_FLAGS = tuple(f.name for f in dataclasses.fields(Timing))
_LIMIT_FLAGS = ("max_num_seqs", "max_model_len", "block_size", "max_num_batched_tokens")


def build_parser() -> argparse.ArgumentParser:
    """Options named as vLLM names them, plus the simulator's speed model."""
    p = argparse.ArgumentParser(
        prog="llmsched engine-sim",
        description="Simulated vLLM/SGLang engine(s) on real HTTP ports. "
                    "`llmsched engine-sim calibrate --help`: fit a profile to a real engine.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", default="8000",
                   help="port, or comma-separated ports for several engines (0 = any free port)")
    p.add_argument("--fleet", type=Path,
                   help="JSON fleet file: a list of engine objects (port + any option below)")
    p.add_argument("--engine", choices=("vllm", "sglang"), default="vllm")
    p.add_argument("--model", default=EngineConfig.model)
    p.add_argument("--served-model-name", nargs="+")
    # Limits left unset come from the profile (the engine it was fitted on), else the defaults.
    p.add_argument("--max-num-seqs", type=int, default=None,
                   help=f"default: the profile's, else {EngineConfig.max_num_seqs}")
    p.add_argument("--max-model-len", type=int, default=None,
                   help=f"default: the profile's, else {EngineConfig.max_model_len}")
    p.add_argument("--block-size", type=int, default=None,
                   help=f"default: the profile's, else {EngineConfig.block_size}")
    p.add_argument("--num-gpu-blocks-override", type=int, default=None,
                   help=f"default: the profile's, else {EngineConfig.num_gpu_blocks}")
    p.add_argument("--max-num-batched-tokens", type=int, default=None,
                   help=f"default: the profile's, else {EngineConfig.max_num_batched_tokens}")
    p.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--speed", default="1.0",
                   help="speed factor, or comma-separated factors, one per --port")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--role", choices=("prefill", "decode", "both"), default="both")
    p.add_argument("--kv-lease-s", type=float, default=EngineConfig.kv_lease_s,
                   help="a prefill keeps a request's KV this long unless its decode pulls it")
    p.add_argument("--kv-events-config", type=json.loads, default=None, metavar="JSON",
                   help="publish KV-cache events as vLLM does: {\"enable_kv_cache_events\": true, "
                        "\"endpoint\": \"tcp://*:5557\", \"replay_endpoint\": ...}; {port+N} is "
                        "filled in per --port")
    p.add_argument("--profile", default="h100-llama3.1-8b", metavar="NAME|FILE",
                   help=f"timing preset ({', '.join(sorted(PRESETS))}) or a profile file "
                        "(JSON/YAML, as `calibrate` writes)")
    for flag in _TIMING_FLAGS:
        p.add_argument("--" + flag.replace("_", "-"), type=float, default=None,
                       help="override the preset's " + flag)
    p.add_argument("--default-output-tokens", type=int, default=EngineConfig.default_output_tokens,
                   help="mean output length when a request sets no max_tokens")
    p.add_argument("--fake-response", default=None, help="answer with this text")
    p.add_argument("--sleep-ms", type=float, default=0.0, help="time a /sleep takes")
    p.add_argument("--wake-ms", type=float, default=0.0, help="time a /wake_up takes")
    p.add_argument("--engine-version", default=EngineConfig.version,
                   help="version reported by /version")
    p.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS, default="INFO",
                   help="log level (default INFO; logs go to stderr)")
    return p


def _base_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {
        "engine": args.engine, "model": args.model,
        "served_model_name": tuple(args.served_model_name or ()),
        "enable_prefix_caching": args.enable_prefix_caching, "seed": args.seed,
        "role": args.role, "kv_lease_s": args.kv_lease_s, "profile": args.profile,
        "default_output_tokens": args.default_output_tokens, "fake_response": args.fake_response,
        "sleep_ms": args.sleep_ms, "wake_ms": args.wake_ms, "version": args.engine_version,
    }
    for flag in (*_LIMIT_FLAGS, *_TIMING_FLAGS):
        value = getattr(args, flag)
        if value is not None:
            options[flag] = value
    if args.num_gpu_blocks_override is not None:
        options["num_gpu_blocks"] = args.num_gpu_blocks_override
    return options


def _split(text: str, convert: type, what: str) -> list[Any]:
    try:
        return [convert(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SimConfigError(f"--{what}: cannot parse {text!r}") from None


def plan_fleet(args: argparse.Namespace) -> list[tuple[EngineConfig, int]]:
    """The (config, port) of every engine to start."""
    options = _base_options(args)
    if args.fleet is not None:
        try:
            entries = json.loads(args.fleet.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise SimConfigError(f"--fleet {args.fleet}: {err}") from None
        if isinstance(entries, dict):
            entries = entries.get("engines", [])
        if not isinstance(entries, list) or not entries:
            raise SimConfigError("--fleet: expected a non-empty list of engine objects")
        plan = []
        for index, entry in enumerate(entries):
            if not isinstance(entry, dict) or "port" not in entry:
                raise SimConfigError(f"--fleet: engine {index} must be an object with a port")
            merged = {**options, "seed": args.seed + index,
                      **kv_event_options(args.kv_events_config, int(entry["port"])), **entry}
            plan.append((config_from_dict(merged), int(entry["port"])))
        return plan
    ports = _split(args.port, int, "port")
    speeds = _split(args.speed, float, "speed")
    if not ports:
        raise SimConfigError("--port: no port given")
    if len(speeds) not in (1, len(ports)):
        raise SimConfigError(f"--speed: give 1 value or {len(ports)} (one per port)")
    plan = []
    for index, port in enumerate(ports):
        speed = speeds[index] if len(speeds) > 1 else speeds[0]
        entry = {**options, "seed": args.seed + index, "speed": speed,
                 **kv_event_options(args.kv_events_config, port)}
        plan.append((config_from_dict(entry), port))
    return plan


async def serve(plan: list[tuple[EngineConfig, int]], host: str) -> int:
    """Run the engines until SIGINT/SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    engines = await start_fleet(plan, host)
    for engine in engines:
        cfg = engine.instance.config
        print(f"enginesim: {cfg.engine} {cfg.model_names[0]} role={cfg.role} speed={cfg.speed} "
              f"on {engine.url}", flush=True)
    # An engine crashed on purpose ("close") stays down; the others keep serving.
    await stop.wait()
    for engine in engines:
        await engine.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["calibrate"]:
        from services.enginesim.calibrate.cli import main as calibrate_main

        return calibrate_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        plan = plan_fleet(args)
    except SimConfigError as err:
        print(f"engine-sim: {err}", file=sys.stderr)
        return 2
    setup_logging("engine-sim", args.log_level)
    try:
        return asyncio.run(serve(plan, args.host))
    except OSError as err:
        print(f"engine-sim: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
