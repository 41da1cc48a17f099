"""``llmsched engine-sim calibrate``: probe a real engine, fit a timing profile, write it."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib.util
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from services.enginesim.calibrate.client import EngineClient, EngineInfo, open_loop, session
from services.enginesim.calibrate.measure import LevelMetrics, from_run
from services.enginesim.calibrate.probes import ProbePlan, Saturation, run_probes
from services.enginesim.calibrate.report import fit_rows, fit_table
from services.enginesim.calibrate.stalls import STALL_WINDOW_S
from services.enginesim.calibrate.workload import Workload, poisson_arrivals
from services.enginesim.config import EngineConfig, SimConfigError
from services.enginesim.profiles import LIMIT_KEYS, Profile, write_profile
from services.enginesim.timing import Timing
from shared.config import LOG_LEVELS
from shared.logs import setup_logging

EXTRA_MISSING = ("engine-sim calibrate needs numpy and scipy, which the 'calibrate' extra "
                 "installs: pip install 'llmsched[calibrate]'")
DEFAULT_FRACTIONS = (0.2, 0.5, 0.8, 1.0, 1.25)
"""Default levels, as fractions of the saturated request rate the probes measure."""


def build_parser() -> argparse.ArgumentParser:
    """Options of the calibrate subcommand."""
    p = argparse.ArgumentParser(
        prog="llmsched engine-sim calibrate",
        description="Measure a real vLLM or SGLang engine (OpenAI API + /metrics) with "
                    "closed-loop probes and open-loop Poisson levels, fit the simulator's "
                    "timing model, write a profile for `engine-sim --profile FILE`, and print "
                    "the fit's error per level.")
    p.add_argument("--target", required=True, help="engine base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--model", help="served model name (default: the first of /v1/models)")
    p.add_argument("--out", type=Path, help="profile file to write (.json, or .yaml/.yml); "
                   "default calibrated-MODEL.json")
    p.add_argument("--name", help="profile name (default: from the model and engine)")
    p.add_argument("--levels", help="open-loop arrival rates, req/s, comma-separated (default: "
                   "0.2,0.5,0.8,1,1.25 x the saturated request rate measured)")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds per level (default 40; 15 with --quick)")
    p.add_argument("--drain", type=float, default=30.0,
                   help="seconds a level waits for stragglers after its last arrival; then "
                        "they are cancelled and count with their wait as TTFT (default 30)")
    p.add_argument("--prompt-tokens", default="20-360", help="prompt lengths MIN-MAX")
    p.add_argument("--output-tokens", default="16-128", help="output lengths MIN-MAX")
    for key in ("max_num_seqs", "max_num_batched_tokens", "block_size", "num_gpu_blocks"):
        p.add_argument("--" + key.replace("_", "-"), type=int, default=None,
                       help="the engine's value, when /metrics does not tell it")
    p.add_argument("--saturation-seconds", type=float, default=None,
                   help="length of the closed-loop saturation probe (default 30; 10 --quick)")
    p.add_argument("--probe-concurrency", type=int, default=None,
                   help="concurrency of the saturation probe (default 2 x max_num_seqs, or 32 "
                        "when the engine does not tell its max_num_seqs)")
    p.add_argument("--ttft-reps", type=int, default=None,
                   help="repeats per prompt length (default 5; 3 with --quick)")
    p.add_argument("--itl-rounds", type=int, default=None,
                   help="rounds per batch size (default 3; 2 with --quick)")
    p.add_argument("--itl-output", type=int, default=64, help="output tokens of step probes")
    p.add_argument("--replicates", type=int, default=3,
                   help="simulator seeds per level in the open-loop fit (default 3)")
    p.add_argument("--max-evaluations", type=int, default=60,
                   help="budget of the open-loop fit, in simulations of all levels")
    p.add_argument("--no-refine", action="store_true",
                   help="skip the open-loop fit: closed-loop probes only")
    p.add_argument("--quick", action="store_true",
                   help="shorter defaults for probes and levels (see each option)")
    p.add_argument("--fit-stalls", action="store_true",
                   help="fit a stall process (spells with nothing admitted or streamed) to the "
                        "saturation probe's near-empty windows, and its rate in the open-loop "
                        "fit; off: no stalls, as before (docs/enginesim.md)")
    p.add_argument("--max-probe-error", type=float, default=0.25,
                   help="stop after the closed-loop probes when the step-cost fit misses the "
                        "measured TTFTs or step times by more than this median relative error "
                        "(default 0.25; a fit that bad would only mislead the open-loop stage)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--report", type=Path, help="also write every measured figure as JSON")
    p.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS, default="WARNING")
    return p


def _missing_numerics() -> bool:
    return any(importlib.util.find_spec(m) is None for m in ("numpy", "scipy"))


def _rates(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        rates = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SimConfigError(f"--levels: not numbers: {text!r}") from None
    if not rates or any(r <= 0 for r in rates):
        raise SimConfigError(f"--levels: need rates > 0, got {text!r}")
    return rates


def _pick(given: Any, normal: Any, quick: Any, is_quick: bool) -> Any:
    if given is not None:
        return given
    return quick if is_quick else normal


def _plan(args: argparse.Namespace, limits: dict[str, int]) -> ProbePlan:
    max_len = limits.get("max_model_len", 4096)
    budget = limits.get("max_num_batched_tokens", 2048)
    seqs = limits.get("max_num_seqs")
    longest = max(16, min(max_len - 16, budget, 2048))
    lengths = tuple(sorted({max(8, int(longest * f)) for f in (0.03, 0.1, 0.25, 0.5, 0.75, 1)}))
    top = seqs or 8
    batches = sorted({b for b in (1, 2, 4, 8, 16, 32, 64, 128, 256) if b < top} | {top})
    itl_output = max(8, min(args.itl_output, max_len // 4))
    long_prompt = max(32, min(256, (max_len - itl_output) // 2, budget // max(1, top)))
    quick = args.quick
    concurrency = args.probe_concurrency or (2 * seqs if seqs else 32)
    return ProbePlan(
        prompt_lengths=lengths, ttft_reps=_pick(args.ttft_reps, 5, 3, quick),
        batch_sizes=tuple(batches), itl_prompts=(16, long_prompt), itl_output=itl_output,
        itl_rounds=_pick(args.itl_rounds, 3, 2, quick), saturation_concurrency=concurrency,
        saturation_seconds=_pick(args.saturation_seconds, 30.0, 10.0, quick),
        window_s=STALL_WINDOW_S if args.fit_stalls else ProbePlan.window_s)


def probe_fit_problem(ttft_error: float, step_error: float, limit: float) -> str | None:
    """Why the closed-loop fit is too poor to go on with, or None when it is good enough."""
    worst = {name: err for name, err in (("TTFT", ttft_error), ("step time", step_error))
             if not err <= limit}  # (a NaN error is too poor as well)
    if not worst:
        return None
    misses = ", ".join(f"{name} by {err:.0%}" for name, err in worst.items())
    return (f"the step-cost fit misses the probes' {misses} (median relative error; limit "
            f"{limit:.0%}, --max-probe-error); nothing written. Usual causes: the engine "
            "shares its CPUs with this client or other work, or probe requests failed "
            "(see the warnings above); run again on a quieter machine")


def _config(info: EngineInfo, limits: dict[str, int], timing: Timing) -> EngineConfig:
    cfg = EngineConfig(engine="sglang" if info.engine == "sglang" else "vllm",
                       served_model_name=(info.model,), timing=timing)
    options: dict[str, Any] = {k: v for k, v in limits.items() if k in LIMIT_KEYS}
    return dataclasses.replace(cfg, **options).validate()


async def calibrate(args: argparse.Namespace, say: Callable[[str], None]) -> int:
    """The whole run; returns the exit status."""
    from services.enginesim.calibrate import fit

    workload = Workload.parse(args.prompt_tokens, args.output_tokens)
    rates = _rates(args.levels)
    if not args.max_probe_error > 0:
        raise ValueError(f"--max-probe-error must be > 0, got {args.max_probe_error}")
    duration = float(_pick(args.duration, 40.0, 15.0, args.quick))
    async with session() as http:
        client = EngineClient(args.target, http, args.model)
        info = await client.info()
        limits = dict(info.limits)
        for key in ("max_num_seqs", "max_num_batched_tokens", "block_size", "num_gpu_blocks"):
            if getattr(args, key) is not None:
                limits[key] = getattr(args, key)
        say(f"engine: {info.engine} at {args.target}, model {info.model}, limits {limits}")
        def adjust(sat: Saturation) -> ProbePlan:
            if "max_num_seqs" not in limits and sat.max_running >= 1:
                limits["max_num_seqs"] = round(sat.max_running)
                say(f"  max_num_seqs {limits['max_num_seqs']} (largest batch seen)")
                if sat.max_running >= sat.concurrency:
                    say("  (the whole probe ran at once: the engine may take more; "
                        "give --max-num-seqs)")
            return _plan(args, limits)

        data = await run_probes(client, _plan(args, limits), workload, args.seed, say, adjust)
        step = fit.fit_step_costs(data.ttft, data.itl)
        noise = fit.fit_noise(data.saturation, data.jitter_gaps, stalls=args.fit_stalls)
        say(f"stage 1: frontend {step.frontend_ms:.2f} ms, step {step.step_base_ms:.3f} ms "
            f"+ {step.prefill_ms_per_token:.4f} ms/prompt token "
            f"(+{step.prefill_ms_per_token_kctx:.5f}/ktoken of context) "
            f"+ {step.decode_ms_per_seq:.4f} ms/sequence + {step.attn_ms_per_ctx_token:.6f} "
            f"ms/context token; median error TTFT {step.ttft_error:.1%}, step "
            f"{step.itl_error:.1%}; jitter {noise.jitter:.3f}, drift sd {noise.drift_sd:.3f} "
            f"tau {noise.drift_tau_s:.1f} s"
            + (f"; stalls {noise.stall_rate_per_s:.3f}/s, mean {noise.stall_mean_s:.2f} s"
               if args.fit_stalls else ""))
        bad = probe_fit_problem(step.ttft_error, step.itl_error, args.max_probe_error)
        if bad is not None:
            say(f"engine-sim calibrate: {bad}")
            return 3
        config = _config(info, limits, fit.timing_from(step, noise))
        capacity = data.saturation.request_rate
        if rates is None:
            rates = [round(capacity * f, 2) for f in DEFAULT_FRACTIONS if capacity * f > 0]
        levels: list[fit.Level] = []
        for index, rate in enumerate(rates):
            arrivals = poisson_arrivals(rate, duration, workload, args.seed + index)
            say(f"level {index + 1}/{len(rates)}: {rate:g} req/s for {duration:g} s "
                f"({len(arrivals)} requests)")
            run = await open_loop(client, arrivals, duration, drain_s=args.drain)
            measured = from_run(rate, run)
            if run.censored:
                say(f"  {run.censored} request(s) still unanswered {args.drain:g} s after the "
                    "last arrival: cancelled")
            if measured.errors:
                first = next((r.error for r in run.results
                              if r.error and not r.error.startswith("cancelled")), "no tokens")
                say(f"  {measured.errors} request(s) failed, first: {first}")
            levels.append(fit.Level(rate, tuple(arrivals), duration, measured, args.drain))
    if args.no_refine or not levels:
        simulated = [fit.simulate_level(config, lv, args.replicates) for lv in levels]
        timing = config.timing
        stage2: dict[str, Any] = {}
    else:
        sat = data.saturation
        warm = min(2.0, sat.seconds / 5)
        closed = fit.Capacity(workload, sat.concurrency, sat.throughput,
                              seconds=max(60.0, sat.seconds - warm))
        refined = fit.refine(config, levels, closed, replicates=args.replicates,
                             max_evaluations=args.max_evaluations, say=say)
        timing, simulated = refined.timing, refined.simulated
        stage2 = {"step_scale": round(refined.step_scale, 4),
                  "frontend_scale": round(refined.frontend_scale, 4),
                  "stall_scale": round(refined.stall_scale, 4),
                  "simulations": refined.evaluations}
    measured_levels = [lv.measured for lv in levels]
    print("fit error per level (measured / simulated in virtual time):")
    print(fit_table(measured_levels, simulated))
    profile = Profile(
        name=args.name or f"{info.engine}-{info.model}".replace("/", "-"),
        timing=timing,
        limits={k: v for k, v in limits.items() if k in LIMIT_KEYS},
        description=f"fitted by `llmsched engine-sim calibrate` against {info.engine} "
                    f"{args.target} (model {info.model}) on "
                    f"{time.strftime('%Y-%m-%d %H:%M', time.localtime())}",
        extra={"fit": {
            "stage1": {"ttft_median_error": round(step.ttft_error, 4),
                       "transport_ms": (None if data.transport is None
                                        else round(data.transport * 1000, 3)),
                       "step_median_error": round(step.itl_error, 4),
                       "saturated_throughput": round(data.saturation.throughput, 1),
                       "saturated_request_rate": round(capacity, 3)},
            "stage2": stage2, "workload": dataclasses.asdict(workload),
            "level_seconds": duration, "levels": fit_rows(measured_levels, simulated)}})
    out = args.out or Path(f"calibrated-{info.model.replace('/', '-')}.json")
    write_profile(profile, out)
    print(f"profile written to {out} (use: llmsched engine-sim --profile {out})")
    if args.report is not None:
        _write_report(args.report, data, measured_levels, simulated)
    return 0


def _write_report(path: Path, data: Any, measured: list[LevelMetrics],
                  simulated: list[LevelMetrics]) -> None:
    report = {
        "ttft": [dataclasses.asdict(o) for o in data.ttft],
        "itl": [dataclasses.asdict(o) for o in data.itl],
        "saturation": {"throughput": data.saturation.throughput,
                       "request_rate": data.saturation.request_rate,
                       "windows": data.saturation.windows,
                       "window_s": data.saturation.window_s},
        "levels": [{"measured": m.as_dict(), "simulated": s.as_dict()}
                   for m, s in zip(measured, simulated, strict=True)]}
    path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    if _missing_numerics():
        print(f"engine-sim calibrate: {EXTRA_MISSING}", file=sys.stderr)
        return 2
    setup_logging("engine-sim-calibrate", args.log_level)
    logging.getLogger("llmsched.enginesim.calibrate").setLevel(args.log_level)

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    try:
        return asyncio.run(calibrate(args, say))
    except (SimConfigError, ValueError) as err:
        print(f"engine-sim calibrate: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"engine-sim calibrate: cannot reach {args.target}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
