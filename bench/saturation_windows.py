"""How steadily an engine streams at saturation: output tokens per short window.

A closed loop of streamed requests (the calibration's saturation probe, same request
shape) for a while, then the output rate in each window as the client received it. An
engine that computes steadily shows windows near its mean; one whose tokens arrive in
bursts after silences (a front end starved of CPU, a stalled process) shows zeros followed
by windows far above the mean. The calibration's slow-noise fit sees such a run as large
swings; this prints them so that an operator can look before trusting a fit::

    .venv/bin/python bench/saturation_windows.py http://127.0.0.1:18431 --seconds 60

It prints one JSON object: the mean rate, the windows, and the stalls (runs of windows
under a quarter of the median, with their start and length in seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.enginesim.calibrate.client import EngineClient, session
from services.enginesim.calibrate.probes import ProbePlan, probe_saturation
from services.enginesim.calibrate.stalls import find_stalls, fit_stalls
from services.enginesim.calibrate.workload import Workload


def stalls(windows: list[float], window_s: float) -> list[dict[str, float]]:
    """Runs of stalled windows: where each starts and how long it lasts, in seconds."""
    return [{"at_s": round(s.first * window_s, 3), "length_s": round(s.windows * window_s, 3)}
            for s in find_stalls(windows)]


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    workload = Workload.parse(args.prompt_tokens, args.output_tokens)
    plan = ProbePlan(prompt_lengths=(workload.prompt_min,),
                     saturation_concurrency=args.concurrency,
                     saturation_seconds=args.seconds, window_s=args.window)
    async with session() as http:
        client = EngineClient(args.url, http, args.model)
        await client.info()
        sat = await probe_saturation(client, plan, workload, args.seed)
    return {"url": args.url, "concurrency": args.concurrency, "seconds": args.seconds,
            "window_s": args.window, "output_tok_s": round(sat.throughput, 1),
            "windows_tok_s": [round(w) for w in sat.windows],
            "stalls": stalls(sat.windows, args.window),
            "stall_fit": dataclasses.asdict(fit_stalls(sat.windows, args.window))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="the engine's base URL (OpenAI API)")
    parser.add_argument("--model", help="served model name (default: the engine's first)")
    parser.add_argument("--seconds", type=float, default=60.0, help="closed loop length")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--window", type=float, default=0.25, help="window width, seconds")
    parser.add_argument("--prompt-tokens", default="20-360")
    parser.add_argument("--output-tokens", default="16-128")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if args.seconds <= 3 or args.window <= 0 or args.concurrency < 1:
        parser.error("--seconds must be above 3, --window above 0, --concurrency at least 1")
    print(json.dumps(asyncio.run(measure(args))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
