"""Levels mode of bench/enginesim_fidelity.py: real engine vs real-time simulator vs virtual
time, one open-loop Poisson level after another (see that file's docstring)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fidelity_plots

from services.enginesim.calibrate.client import EngineClient, open_loop, session
from services.enginesim.calibrate.measure import LevelMetrics, from_run, from_sim, trace_of
from services.enginesim.calibrate.workload import Workload, poisson_arrivals
from services.enginesim.config import EngineConfig, config_from_dict
from services.enginesim.virtual import simulate

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_LEVELS = "2,5,8,10,13,16,20"
QUICK_LEVELS = "2,8,16"
KNEE_FACTOR = 5.0
"""The knee: the first rate whose p90 TTFT exceeds this multiple of the lightest level's."""
SCRAPE_S = 0.5


@dataclasses.dataclass
class Target:
    """An engine over HTTP and the processes whose CPU time it uses."""

    name: str
    url: str
    pids: list[int]


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of ``pids`` and all their descendants (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    wanted = set(pids)
    changed = True
    while changed:
        changed = False
        for pid, parent in parents.items():
            if parent in wanted and pid not in wanted:
                wanted.add(pid)
                changed = True
    return sum(times.get(pid, 0.0) for pid in wanted)


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages (what `uptime` prints)."""
    return [round(x, 2) for x in os.getloadavg()]


def wait_healthy(url: str, proc: subprocess.Popen[bytes] | None, timeout_s: float) -> None:
    """Poll /health until 200; fails early when ``proc`` exits."""
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"engine exited with {proc.returncode} before it was healthy")
        with contextlib.suppress(OSError), urllib.request.urlopen(url + "/health",
                                                                 timeout=2) as reply:
            if reply.status == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"{url} not healthy within {timeout_s:g} s")


def free_port() -> int:
    """A free loopback port."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def sim_engine(profile: str, args: argparse.Namespace, seed: int) -> Iterator[Target]:
    """The real-time simulator as its own process (fresh per level: its slow noise starts
    with the level, as virtual time's does)."""
    port = free_port()
    argv = [sys.executable, "-m", "services.enginesim", "--port", str(port), "--profile", profile,
            "--served-model-name", args.model, "--seed", str(seed), "--log-level", "WARNING"]
    if args.num_gpu_blocks:
        argv += ["--num-gpu-blocks-override", str(args.num_gpu_blocks)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, 60)
        yield Target("sim", url, [proc.pid])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def started_vllm(args: argparse.Namespace) -> Iterator[Target]:
    """A real vLLM (CPU), as REAL_VLLM.md starts one, for the duration of the run."""
    port = free_port()
    tmp = Path(tempfile.mkdtemp(prefix="vllm-", dir="/tmp"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_SERVER_DEV_MODE": "1", "TMPDIR": str(tmp),
           **{k: str(tmp / k.lower()) for k in ("VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR",
                                                "HF_HOME", "XDG_CACHE_HOME")}}
    argv = [args.start_vllm, "-m", "vllm.entrypoints.openai.api_server",
            "--model", args.vllm_model, "--served-model-name", args.model,
            "--load-format", "dummy", "--max-model-len", "512", "--dtype", "float32",
            "--max-num-seqs", "8", "--block-size", "128", "--max-num-batched-tokens", "2048",
            "--enforce-eager", "--host", "127.0.0.1", "--port", str(port)]
    if args.num_gpu_blocks:
        argv += ["--num-gpu-blocks-override", str(args.num_gpu_blocks)]
    log = open(tmp / "vllm.log", "wb")  # noqa: SIM115 (closed in finally)
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        print(f"starting vLLM on {url} (log {tmp / 'vllm.log'}) ...", file=sys.stderr)
        wait_healthy(url, proc, 900)
        yield Target("real", url, [proc.pid])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def real_pids(url: str, given: str | None) -> list[int]:
    """The PIDs of a real engine given by URL: --real-pid, else whoever listens on its port."""
    if given:
        return [int(p) for p in given.split(",") if p.strip()]
    port = url.rsplit(":", 1)[-1].strip("/")
    try:
        out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True,
                             text=True, check=False, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return sorted({int(part.split("=")[1]) for part in out.replace(",", " ").split()
                   if part.startswith("pid=")})


async def measure(target: Target, model: str, rate: float, arrivals: list[Any],
                  duration: float, drain: float
                  ) -> tuple[LevelMetrics, list[float], list[tuple[float, float]], float]:
    """One level against one engine: figures, TTFTs, waiting over time, CPU seconds."""
    cpu0 = cpu_seconds(target.pids)
    async with session() as http:
        client = EngineClient(target.url, http, model)
        run = await open_loop(client, arrivals, duration, SCRAPE_S, drain_s=drain)
    cpu = cpu_seconds(target.pids) - cpu0
    # Requests cancelled unanswered count with their wait (a lower bound), as in the figures.
    ttfts = [r.ttft if r.ttft is not None else (r.done or r.sent) - r.sent
             for r in run.results
             if (r.error is None and r.ttft is not None)
             or (r.error or "").startswith("cancelled")]
    series = [(s.t - run.start, s.waiting) for s in run.samples]
    return from_run(rate, run), ttfts, series, cpu


def virtual(config: EngineConfig, rate: float, arrivals: list[Any], duration: float,
            drain: float) -> tuple[LevelMetrics, list[float], list[tuple[float, float]]]:
    """The same level in virtual time (cut where the HTTP runs cancel stragglers)."""
    result = simulate(trace_of(arrivals), [config], lambda r, v: 0, scrape_interval=SCRAPE_S)
    cutoff = duration + drain
    series = [(s.t, float(s.waiting)) for s in result.series[0] if s.t <= cutoff]
    ttfts = [min(r.ttft, cutoff - r.arrival_s) for r in result.requests]
    return from_sim(rate, result, duration, drain_s=drain), ttfts, series


def knee(rows: list[dict[str, Any]], name: str) -> float | None:
    """First rate whose p90 TTFT exceeds KNEE_FACTOR x the lightest level's p90."""
    if not rows or name not in rows[0]:
        return None
    light = rows[0][name]["ttft_p90"]
    for row in rows:
        if row[name]["ttft_p90"] > KNEE_FACTOR * light:
            return float(row["rate"])
    return None


def _r(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b and math.isfinite(a) and math.isfinite(b) and b > 0 else "-"


def tables(rows: list[dict[str, Any]], names: list[str]) -> str:
    """Markdown: figures per engine and level, then the ratios."""
    out = ["| rate/s | engine | TTFT p50 ms | p90 ms | p99 ms | mean waiting | max waiting "
           "| tok/s | KV mean | KV max | preemptions | cut | CPU s |",
           "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        for name in names:
            m = row[name]
            out.append(f"| {row['rate']:g} | {name} | {m['ttft_p50'] * 1000:.1f} "
                       f"| {m['ttft_p90'] * 1000:.1f} | {m['ttft_p99'] * 1000:.1f} "
                       f"| {m['mean_waiting']:.2f} | {m['max_waiting']:.0f} "
                       f"| {m['throughput']:.0f} | {m['kv_mean']:.3f} | {m['kv_max']:.3f} "
                       f"| {m['preemptions']:.0f} | {m['censored']} "
                       f"| {m.get('cpu_s', float('nan')):.1f} |")
    out.append("")
    pairs = [(a, b) for a, b in (("sim", "real"), ("virtual", "real"), ("virtual", "sim"))
             if a in names and b in names]
    head = "| rate/s | load 1m | " + " | ".join(
        f"{a}÷{b} p50 | p90 | p99 | waiting | tok/s" for a, b in pairs) + " |"
    out += [head, "|---:|---:|" + "---:|" * (5 * len(pairs))]
    for row in rows:
        cells = [f"{row['rate']:g}", f"{row['load'][0]:.1f}"]
        for a, b in pairs:
            x, y = row[a], row[b]
            cells += [_r(x["ttft_p50"], y["ttft_p50"]), _r(x["ttft_p90"], y["ttft_p90"]),
                      _r(x["ttft_p99"], y["ttft_p99"]),
                      f"{x['mean_waiting']:.2f}/{y['mean_waiting']:.2f}",
                      _r(x["throughput"], y["throughput"])]
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    out.append("knee (first rate with p90 TTFT > 5x the lightest level's): " + ", ".join(
        f"{name} {knee(rows, name) if knee(rows, name) is not None else 'none'}"
        for name in names))
    return "\n".join(out)


async def run(args: argparse.Namespace) -> int:
    levels = [float(x) for x in args.levels.split(",") if x.strip()]
    workload = Workload.parse(args.prompt_tokens, args.output_tokens)
    options: dict[str, Any] = {"profile": args.profile, "served_model_name": args.model,
                               "seed": args.seed}
    if args.num_gpu_blocks:
        options["num_gpu_blocks"] = args.num_gpu_blocks
    config = config_from_dict(options)
    tag = args.tag or time.strftime("%Y%m%d-%H%M%S")
    RESULTS.mkdir(parents=True, exist_ok=True)
    plots = fidelity_plots.available() and not args.no_plots
    if not plots and not args.no_plots:
        print("matplotlib is not installed: plots skipped (python -m pip install matplotlib)",
              file=sys.stderr)
    rows: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        real: Target | None = None
        if args.start_vllm:
            real = stack.enter_context(started_vllm(args))
        elif args.real:
            real = Target("real", args.real.rstrip("/"), real_pids(args.real, args.real_pid))
        for index, rate in enumerate(levels):
            arrivals = poisson_arrivals(rate, args.duration, workload, args.seed + index)
            row: dict[str, Any] = {"rate": rate, "requests": len(arrivals),
                                   "load": load_average()}
            ttfts: dict[str, list[float]] = {}
            series: dict[str, list[tuple[float, float]]] = {}
            print(f"level {index + 1}/{len(levels)}: {rate:g} req/s, {len(arrivals)} requests "
                  f"over {args.duration:g} s; load {row['load']}", file=sys.stderr, flush=True)
            if real is not None:
                m, ttfts["real"], series["real"], cpu = await measure(
                    real, args.model, rate, arrivals, args.duration, args.drain)
                row["real"] = {**dataclasses.asdict(m), "rate": rate, "cpu_s": cpu}
            if not args.no_sim:
                seed = args.seed + 1000 * index
                with sim_engine(args.profile, args, seed) as sim:
                    m, ttfts["sim"], series["sim"], cpu = await measure(
                        sim, args.model, rate, arrivals, args.duration, args.drain)
                row["sim"] = {**dataclasses.asdict(m), "rate": rate, "cpu_s": cpu}
                level_config = dataclasses.replace(config, seed=seed)
            else:
                level_config = dataclasses.replace(config, seed=args.seed + 1000 * index)
            m, ttfts["virtual"], series["virtual"] = virtual(level_config, rate, arrivals,
                                                             args.duration, args.drain)
            row["virtual"] = dataclasses.asdict(m)
            row["load_after"] = load_average()
            rows.append(row)
            if plots:
                path = RESULTS / f"enginesim-fidelity-{tag}-{rate:g}rps.png"
                fidelity_plots.level_plot(path, rate, ttfts, series, args.duration)
                row["plot"] = str(path.relative_to(RESULTS.parent.parent))
    names = [n for n in ("real", "sim", "virtual") if n in rows[0]]
    report = tables(rows, names)
    print(f"\nengine fidelity, profile {args.profile}, {args.duration:g} s per level, "
          f"prompts {args.prompt_tokens}, outputs {args.output_tokens} tokens")
    print(report)
    data = {"profile": args.profile, "duration": args.duration, "levels": rows,
            "knee": {n: knee(rows, n) for n in names}, "workload": dataclasses.asdict(workload)}
    (RESULTS / f"enginesim-fidelity-{tag}.json").write_text(json.dumps(data, indent=1) + "\n")
    (RESULTS / f"enginesim-fidelity-{tag}.md").write_text(report + "\n")
    if plots:
        summary = RESULTS / f"enginesim-fidelity-{tag}-summary.png"
        fidelity_plots.summary_plot(summary, rows)
        print(f"plots: {RESULTS}/enginesim-fidelity-{tag}-*.png")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the levels mode."""
    p = argparse.ArgumentParser(prog="enginesim_fidelity.py --mode levels")
    p.add_argument("--real", help="base URL of a running real engine")
    p.add_argument("--real-pid", help="PIDs of the real engine for CPU accounting "
                   "(default: the process listening on its port, and its children)")
    p.add_argument("--start-vllm", metavar="PYTHON", help="start a vLLM with this Python")
    p.add_argument("--vllm-model", help="model directory for --start-vllm "
                   "(tests/real_vllm/tiny_model.py builds one)")
    p.add_argument("--profile", default="cpu-tiny", help="simulator profile: NAME or FILE")
    p.add_argument("--model", default="tiny", help="served model name")
    p.add_argument("--levels", default=None, help=f"req/s (default {DEFAULT_LEVELS})")
    p.add_argument("--duration", type=float, default=None, help="seconds per level (40)")
    p.add_argument("--quick", action="store_true",
                   help=f"levels {QUICK_LEVELS}, 15 s each")
    p.add_argument("--drain", type=float, default=20.0,
                   help="seconds to wait for stragglers after a level's last arrival; the rest "
                        "are cancelled and count with their wait as TTFT (a lower bound)")
    p.add_argument("--prompt-tokens", default="20-360")
    p.add_argument("--output-tokens", default="16-128")
    p.add_argument("--num-gpu-blocks", type=int, default=None,
                   help="KV blocks of the simulator (and of --start-vllm): KV pressure runs")
    p.add_argument("--no-sim", action="store_true", help="skip the real-time simulator")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--tag", help="name of the result files (default: a timestamp)")
    args = p.parse_args(argv)
    args.levels = args.levels or (QUICK_LEVELS if args.quick else DEFAULT_LEVELS)
    args.duration = args.duration or (15.0 if args.quick else 40.0)
    if args.start_vllm and not args.vllm_model:
        p.error("--start-vllm needs --vllm-model DIR")
    return asyncio.run(run(args))
