"""The routing benchmark in real time: the same traces through real services and peers.

    .venv/bin/python -m bench.routing.run_real [--quick] [--runs 3] [--loads 0.7,0.9]
        [--duration 60] [--burst 1.5] [--routers a,b,...] [--out bench/results]

The heterogeneous fleet of ``fleet.py`` (speeds 0.5/1/1/2, max_num_seqs 4) runs as real
HTTP engines (``llmsched engine-sim``, one process). Its capacity is the virtual-time
closed-loop figure of the identical config, checked in real time the same closed-loop way.
For each run and load, one bursty trace (a fraction of that capacity) is replayed open
loop, streamed chat requests at the trace's arrival times, through every router in turn
(the order rotates per run); each llmsched or vllm-router router gets fresh processes.
TTFT is the time to the first content chunk, e2e to ``[DONE]``, both from sending (select
time included); a refused (429/503) or failed request is a miss and an infinite TTFT.
The SLO is run_virtual's: 5x the virtual unloaded TTFT of a 1x engine. ``--runs N`` gives
medians of N runs (a different trace seed each). Results: a markdown table and JSON in
``--out`` (``routing-real-<time>.{md,json}``) and PNG plots (``routing-real-load*``).

Routers (``--routers``, default all): round-robin, random, least-in-flight, power-of-two
(client side, straight to the engines); s1-select, greybox-select (F5 select path, the
latter reporting outcomes at the response headers as the iRule can), greybox-select-ft
(outcomes at the first token), greybox-gw (the OpenAI gateway); greybox-gw-2x2 and
greybox-select-2x2 (2 API processes, 2 scheduler replicas); greybox-gw-100ms (metrics
every 100 ms instead of 200); vr-<policy> (vllm-router, e.g. vr-round_robin).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp

from bench.routing.fleet import HETERO_SPEEDS, capacity, fleet, unloaded_ttft
from bench.routing.realreport import (
    RouterRuns,
    harness_table,
    plot,
    ratio_table,
    ratios,
    run_figures,
    table,
)
from bench.routing.realrouters import ClientSide, OneUrl, RealRouter, SelectPath
from bench.routing.realrun import RealRun, closed_loop_capacity, replay, virtual_closed_loop
from bench.routing.realrun import unloaded_ttft as real_unloaded_ttft
from bench.routing.realstack import (
    GREYBOX_ALIAS,
    GREYBOX_POOL,
    MODEL,
    S1_POOL,
    Fleet,
    Llmsched,
    LlmschedSpec,
    StackError,
    ensure_vllm_router,
    pool_status,
    raise_priority,
    restore_group_priority,
    running_fleet,
    running_llmsched,
    running_vllm_router,
    vllm_router_version,
    wait_fleet,
    wait_llmsched,
    wait_router,
)
from bench.routing.routers import LeastInFlight, PowerOfTwo, RandomRouter, RoundRobin
from bench.routing.trace import TraceSpec, generate
from services.enginesim.config import EngineConfig
from services.enginesim.virtual import TraceRequest

CLIENT = ("round-robin", "random", "least-in-flight", "power-of-two")
LLMSCHED = ("s1-select", "greybox-gw", "greybox-select", "greybox-select-ft",
            "greybox-gw-2x2", "greybox-select-2x2", "greybox-gw-100ms", "cache-aware-gw")
"""cache-aware-gw: the gateway with the ``cache_aware`` mode (approximate source, default
settings) instead of greybox: the same workload must not get worse with it on."""
LOCAL = ("greybox-gw-local", "greybox-gw-2x2-local")
"""The gateway with ``gateway.decide: local`` (the decision in each API process); not run
unless named."""
VLLM_POLICIES = ("round_robin", "power_of_two", "cache_aware")
"""vllm-router's policies run by default. Of the others its --help lists, random is the
client-side random router, consistent_hash and kv_aware need session keys or KV events
this workload has none of, and sticky_least_loaded (tried: ``--routers
vr-sticky_least_loaded``) pins every request without a session to one engine."""
DEFAULT_ROUTERS = (*CLIENT, *LLMSCHED, *(f"vr-{p}" for p in VLLM_POLICIES))
STATUS_EVERY_S = 2.0
RESULTS = Path(__file__).resolve().parents[1] / "results"

Cpu = Callable[[], dict[str, float]]
Info = Callable[[], Awaitable[dict[str, Any]]]


@dataclass
class Bench:
    """What every run shares."""

    fleet: Fleet
    engines: list[EngineConfig]
    session: aiohttp.ClientSession
    slo_s: float
    metrics_ms: float
    timeout_s: float
    workdir: Path
    log_level: str = "INFO"
    seed: int = 0
    router_exe: Path | None = None


def _compact_status(doc: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Per member: in flight, guard, limit, prediction, circuit, engine gauges."""
    if not doc:
        return []
    out = []
    for m in doc.get("members", []):
        grey = m.get("greybox") or {}
        metrics = m.get("metrics") or {}
        model = grey.get("model") or {}
        out.append({"member": m.get("key"), "inflight": m.get("inflight"),
                    "waiting": metrics.get("waiting_queue"),
                    "running": metrics.get("running_req"), "score": m.get("score"),
                    "selections": m.get("selections"),
                    "predicted_ttft_s": grey.get("predicted_ttft_s"),
                    "trusted": grey.get("trusted"), "limit": grey.get("limit"),
                    "guard": grey.get("guard"), "circuit": grey.get("circuit"),
                    "samples": model.get("samples"),
                    "rms_log_error": model.get("rms_log_error")})
    return out


async def _watch_status(stack: Llmsched, session: aiohttp.ClientSession, pool: str,
                        into: list[dict[str, Any]]) -> None:
    started = time.perf_counter()
    while True:
        await asyncio.sleep(STATUS_EVERY_S)
        members = _compact_status(await pool_status(stack, session, pool))
        if members:
            into.append({"t": round(time.perf_counter() - started, 1), "members": members})


def _log_lines(stack: Llmsched, chars: int = 200_000) -> dict[str, list[str]]:
    """Warnings and errors each llmsched process logged (at most 8 per process)."""
    out = {}
    for name, text in stack.logs(chars).items():
        lines = [line for line in text.splitlines()
                 if " WARNING " in line or " ERROR " in line or "Traceback" in line]
        if lines:
            out[name] = [f"({len(lines)} lines)", *lines[-8:]]
    return out


@contextlib.asynccontextmanager
async def setup(name: str, bench: Bench) -> AsyncIterator[tuple[RealRouter, Cpu, Info]]:
    """Start what router ``name`` needs; yield it, a CPU reader and an info reader."""
    fl = bench.fleet
    n = len(fl.urls)

    async def no_info() -> dict[str, Any]:
        return {}

    if name in CLIENT:
        make = {"round-robin": lambda: RoundRobin(n),
                "random": lambda: RandomRouter(n, bench.seed),
                "least-in-flight": lambda: LeastInFlight(n, bench.seed),
                "power-of-two": lambda: PowerOfTwo(n, bench.seed)}[name]
        yield ClientSide(make(), fl.urls, MODEL), fl.procs.cpu, no_info
        return
    if name.startswith("vr-"):
        assert bench.router_exe is not None
        policy = name[3:]
        with running_vllm_router(bench.workdir / f"{name}-{time.time():.0f}", bench.router_exe,
                                 fl.urls, policy) as (procs, url):
            await wait_router(procs, url, bench.session)

            def cpu() -> dict[str, float]:
                return {**fl.procs.cpu(), **procs.cpu()}

            yield OneUrl(name, [url], MODEL), cpu, no_info
            procs.check()
        return
    if name not in LLMSCHED + LOCAL:
        known = ", ".join((*DEFAULT_ROUTERS, *LOCAL))
        raise SystemExit(f"unknown router {name!r}; known: {known}, vr-<vllm-router policy>")
    wide = "-2x2" in name
    spec = LlmschedSpec(decide="local" if name in LOCAL else "scheduler",
                        slo_s=bench.slo_s, metrics_ms=100.0 if name.endswith("-100ms")
                        else bench.metrics_ms, apis=2 if wide else 1, schedulers=2 if wide else 1,
                        log_level=bench.log_level,
                        cache_aware={} if name == "cache-aware-gw" else None)
    workdir = bench.workdir / f"{name}-{time.time():.0f}"
    with running_llmsched(workdir, spec, fl.keys) as stack:
        await wait_llmsched(stack, fl.keys, bench.session)
        router: RealRouter
        pool = S1_POOL if name == "s1-select" else GREYBOX_POOL
        if name.startswith(("greybox-gw", "cache-aware-gw")):
            router = OneUrl(name, stack.api_urls, GREYBOX_ALIAS)
        else:
            report = None
            if name.startswith("greybox-select") and stack.has_outcome:
                report = "first-token" if name.endswith("-ft") else "headers"
            router = SelectPath(name, stack.api_urls, pool, fl.keys, fl.urls, MODEL,
                                report=report)
        statuses: list[dict[str, Any]] = []
        watcher = asyncio.create_task(_watch_status(stack, bench.session, pool, statuses))

        def cpu() -> dict[str, float]:
            return {**fl.procs.cpu(), **stack.procs.cpu()}

        async def info() -> dict[str, Any]:
            watcher.cancel()
            await asyncio.wait({watcher})  # (not awaited directly: a cancel of ours propagates)
            final = _compact_status(await pool_status(stack, bench.session, pool))
            peak = max(statuses, key=lambda s: sum(m["inflight"] or 0 for m in s["members"]),
                       default=None)
            extra: dict[str, Any] = {
                "pool": pool, "outcome_endpoint": stack.has_outcome,
                "status_at_peak_inflight": peak, "status_final": final,
                "log_warnings": _log_lines(stack)}
            if isinstance(router, SelectPath):
                extra.update(select_answers=dict(router.answers),
                             outcome_reports=router.report, outcome_errors=router.outcome_errors)
            return extra

        try:
            yield router, cpu, info
        finally:
            watcher.cancel()
        stack.procs.check()


def _line(run: RealRun, slo_s: float) -> str:
    f = run_figures(run, slo_s)
    h = run.harness()
    return (f"  {f.router:<22} p50 {f.ttft_p50:7.3f}  p90 {f.ttft_p90:7.3f}  p99 {f.ttft_p99:7.3f}"
            f"  e2e99 {f.e2e_p99:7.2f}  good {f.goodput:.3f}  refused {run.refusals:3d}"
            f"  err {run.errors:3d}  share {'/'.join(f'{s:.2f}' for s in run.share)}"
            f"  lag99 {h['lag_p99_ms']:.0f}ms late-max {h['late_max_ms']:.0f}ms"
            f"  pace {'/'.join(f'{p:.2f}' for p in run.pace)}"
            f"  load {run.load[1]:.1f}")


def _run_doc(run: RealRun, slo_s: float) -> dict[str, Any]:
    heads = sorted(r.sent.headers_s for r in run.routed if math.isfinite(r.sent.headers_s))
    selects = sorted(r.select_s for r in run.routed if r.select_s > 0)
    return {"figures": dataclasses.asdict(run_figures(run, slo_s)),
            "refusals": run.refusals, "errors": run.errors,
            "error_samples": run.error_samples(), "share": run.share,
            "harness": run.harness(), "lag_spikes": run.spikes[:50],
            "engine_pace": run.pace, "cpu_s": run.cpu_s,
            "load_1min": list(run.load),
            "wall_s": round(run.result.wall_seconds, 2),
            "headers_p50_ms": round(heads[len(heads) // 2] * 1000, 2) if heads else None,
            "select_p50_ms": round(selects[len(selects) // 2] * 1000, 2) if selects else None,
            "select_p99_ms": round(selects[int(len(selects) * 0.99)] * 1000, 2)
            if selects else None,
            "queues": [[round(q.t, 2), q.waiting, q.running, q.held]
                       for q in run.result.samples],
            **run.extra}


def _env() -> dict[str, Any]:
    uptime = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout
    return {"uptime": uptime.strip(), "cpus": os.cpu_count(), "python": sys.version.split()[0],
            "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                  text=True, check=False).stdout.strip()}


async def bench_all(args: argparse.Namespace, fl: Fleet, engines: list[EngineConfig],
                    base: TraceSpec, cap: float, slo: float, report: dict[str, Any],
                    workdir: Path, write: Callable[[], None]
                    ) -> dict[float, dict[str, RouterRuns]]:
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None)
    async with aiohttp.ClientSession(connector=connector) as session:
        await wait_fleet(fl, session)
        bench = Bench(fl, engines, session, slo, args.metrics_ms, args.timeout, workdir,
                      args.log_level)
        routers = [r.strip() for r in args.routers.split(",") if r.strip()]
        if any(r.startswith("vr-") for r in routers):
            bench.router_exe = ensure_vllm_router()
            report["vllm_router_version"] = vllm_router_version()
        one_x = fl.urls[list(HETERO_SPEEDS).index(1.0)]
        real_ttft = await real_unloaded_ttft(one_x, session, base, args.unloaded_requests)
        report["unloaded_ttft_real_s"] = real_ttft
        print(f"unloaded TTFT of a 1x engine, real time: {real_ttft * 1000:.1f} ms "
              f"(virtual {report['unloaded_ttft_virtual_s'] * 1000:.1f} ms)", flush=True)
        if args.capacity_s > 0:
            real = await closed_loop_capacity(fl, session, base,
                                              in_flight=2 * engines[0].max_num_seqs,
                                              seconds=args.capacity_s)
            same = virtual_closed_loop(engines, base, in_flight=2 * engines[0].max_num_seqs,
                                       seconds=args.capacity_s)
            real["virtual_same_window_per_engine_rps"] = [round(r, 3) for r in same]
            real["virtual_same_window_rps"] = round(sum(same), 3)
            report["capacity_real"] = real
            print(f"capacity, real time closed loop: {real['total_rps']:.2f} req/s "
                  f"{real['per_engine_rps']}; the same requests and window in virtual time: "
                  f"{sum(same):.2f} {real['virtual_same_window_per_engine_rps']}; virtual "
                  f"capacity {cap:.2f}; errors {real['errors']}; engine pace "
                  f"{real['engine_pace']}", flush=True)
            if args.capacity_from == "real":
                cap = real["total_rps"]
        report["capacity_used_rps"] = cap
        results: dict[float, dict[str, RouterRuns]] = {}
        loads = [float(x) for x in args.loads.split(",")]
        for run in range(args.runs):
            for load in loads:
                trace = generate(dataclasses.replace(base, rate=cap * load, seed=run))
                print(f"\nrun {run + 1}/{args.runs}, load {load:.0%}: {len(trace)} requests "
                      f"over {base.duration_s:.0f} s ({os.getloadavg()[0]:.1f} load)",
                      flush=True)
                order = routers[run % len(routers):] + routers[:run % len(routers)]
                bench.seed = run
                for name in order:
                    outcome = await _attempts(name, bench, trace, args, report, run, load,
                                              write)
                    if outcome is None:
                        continue
                    print(_line(outcome, slo), flush=True)
                    slot = results.setdefault(load, {}).setdefault(
                        name, RouterRuns(name, [], []))
                    slot.figs.append(run_figures(outcome, slo))
                    slot.runs.append(outcome)
                    report["loads"].setdefault(str(load), {}).setdefault(name, []).append(
                        {"run": run, "seed": run, "requests": len(trace),
                         **_run_doc(outcome, slo)})
                    write()
        return results


async def _attempt(name: str, bench: Bench, trace: list[TraceRequest], timeout_s: float
                   ) -> RealRun:
    await bench.fleet.wait_idle(bench.session)
    async with setup(name, bench) as (router, cpu, info):
        outcome = await replay(trace, router, bench.fleet, bench.session, cpu,
                               timeout_s=timeout_s)
        outcome.extra = await info()
    return outcome


async def _attempts(name: str, bench: Bench, trace: list[TraceRequest],
                    args: argparse.Namespace, report: dict[str, Any], run: int, load: float,
                    write: Callable[[], None]) -> RealRun | None:
    """One router's run; run again (up to ``--retries`` times) when the engines lost pace."""
    best: RealRun | None = None
    for attempt in range(1 + args.retries):
        try:
            outcome = await _attempt(name, bench, trace, args.timeout)
        except StackError as err:
            print(f"  {name}: could not run: {err}", flush=True)
            report["failures"].append({"router": name, "run": run, "load": load,
                                       "error": str(err)[-3000:]})
            write()
            continue
        slowest = min((p for p in outcome.pace if p == p), default=1.0)
        outcome.extra["attempt"] = attempt + 1
        if best is None or slowest > min((p for p in best.pace if p == p), default=1.0):
            best = outcome
        if slowest >= args.min_pace:
            break
        print(f"  {name}: engines lost pace ({slowest:.2f} < {args.min_pace}; load "
              f"{outcome.load[1]:.1f}): " + ("again" if attempt < args.retries else "kept"),
              flush=True)
        report["slow_attempts"].append({"router": name, "run": run, "load": load,
                                        "pace": outcome.pace, "load_1min": outcome.load})
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="run_real", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one run of 30 s per load")
    parser.add_argument("--runs", type=int, default=None, help="runs per load (medians)")
    parser.add_argument("--loads", default="0.7,0.9")
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds of trace per run (default 60, --quick 30)")
    parser.add_argument("--burst", type=float, default=1.5)
    parser.add_argument("--routers", default=",".join(DEFAULT_ROUTERS))
    parser.add_argument("--metrics-ms", type=float, default=200.0,
                        help="llmsched's metrics_fetch_interval")
    parser.add_argument("--log-level", default="INFO", help="llmsched's log level")
    parser.add_argument("--capacity-s", type=float, default=None,
                        help="seconds of the real-time capacity check (0: skip)")
    parser.add_argument("--capacity-from", choices=("virtual", "real"), default="virtual")
    parser.add_argument("--unloaded-requests", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=180.0, help="per request, seconds")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--keep-logs", action="store_true")
    parser.add_argument("--min-pace", type=float, default=0.8,
                        help="a run whose slowest engine kept less of its modelled pace is "
                             "run again (the box was too busy to simulate the fleet)")
    parser.add_argument("--retries", type=int, default=1)
    parser.add_argument("--engine-procs", choices=("one", "split"), default="split",
                        help="the simulated engines in one process, or one process each "
                             "(default: scrapes of one engine do not delay the others)")
    parser.add_argument("--nice", type=int, default=-10,
                        help="CPU priority of the simulated engines and of the harness (the "
                             "parts that stand for GPUs and clients; 0: leave as is)")
    args = parser.parse_args(argv)
    args.runs = args.runs or (1 if args.quick else 3)
    args.duration = args.duration or (30.0 if args.quick else 60.0)
    if args.capacity_s is None:
        args.capacity_s = 10.0 if args.quick else 30.0
    started = time.perf_counter()
    engines = fleet()
    base = TraceSpec(kind="bursty" if args.burst > 1 else "steady", duration_s=args.duration,
                     burst_factor=max(1.0, args.burst))
    cap = capacity(engines, base)
    virtual_ttft = unloaded_ttft(engines[HETERO_SPEEDS.index(1.0)], base)
    slo = 5 * virtual_ttft
    print(f"fleet speeds {HETERO_SPEEDS}, max_num_seqs {engines[0].max_num_seqs}; virtual "
          f"capacity {cap:.2f} req/s; SLO {slo * 1000:.0f} ms", flush=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / f"routing-real-{stamp}.json"
    report: dict[str, Any] = {
        "command": " ".join(["python -m bench.routing.run_real", *(argv or sys.argv[1:])]),
        "env_start": _env(), "fleet": {"speeds": list(HETERO_SPEEDS),
                                       "max_num_seqs": engines[0].max_num_seqs},
        "trace": dataclasses.asdict(base), "runs": args.runs, "nice": args.nice,
        "engine_procs": args.engine_procs,
        "metrics_ms": args.metrics_ms,
        "capacity_virtual_rps": cap, "unloaded_ttft_virtual_s": virtual_ttft, "slo_s": slo,
        "loads": {}, "failures": [], "slow_attempts": []}

    def write() -> None:
        json_path.write_text(json.dumps(report, indent=1, default=str))

    workdir = Path(tempfile.mkdtemp(prefix="llmsched-routing-"))
    group_nice = raise_priority(os.getpid(), args.nice) if args.nice else None
    try:
        with running_fleet(workdir, engines, split=args.engine_procs == "split",
                           nice=args.nice) as fl:
            results = _run(bench_all(args, fl, engines, base, cap, slo, report, workdir, write))
    finally:
        if group_nice is not None:
            restore_group_priority(os.getpid(), group_nice)
        if args.keep_logs:
            print(f"logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    report["env_end"] = _env()
    sections = [f"fleet speeds {list(HETERO_SPEEDS)}, max_num_seqs {engines[0].max_num_seqs}; "
                f"capacity {report['capacity_used_rps']:.2f} req/s (virtual {cap:.2f}"
                + (f", real closed loop {report['capacity_real']['total_rps']:.2f}"
                   if "capacity_real" in report else "")
                + f"); SLO {slo * 1000:.0f} ms; unloaded TTFT 1x engine real "
                f"{report['unloaded_ttft_real_s'] * 1000:.1f} ms / virtual "
                f"{virtual_ttft * 1000:.1f} ms; {args.runs} run(s) of {args.duration:.0f} s "
                f"per load (median [min-max])"]
    report["ratios"] = {}
    for load, by_name in results.items():
        rows = list(by_name.values())
        title = f"load {load:.0%} of capacity"
        sections += [table(rows, title), ratio_table(ratios(rows), f"{title}: the bar"),
                     harness_table(rows, f"{title}: harness, machine, CPU")]
        report["ratios"][str(load)] = ratios(rows)
        try:
            paths = plot(rows, slo, args.out / f"routing-real-load{int(load * 100)}", title)
        except ImportError:
            sections.append("plots: none (pip install matplotlib for PNG plots)")
        else:
            sections.append("plots: " + ", ".join(str(p) for p in paths))
    text = "\n\n".join(sections)
    print("\n" + text)
    (args.out / f"routing-real-{stamp}.md").write_text(text + "\n")
    write()
    print(f"\n({time.perf_counter() - started:.0f} s of wall time; JSON {json_path})",
          file=sys.stderr)
    return 0


def _run(coro: Awaitable[dict[float, dict[str, RouterRuns]]]
         ) -> dict[float, dict[str, RouterRuns]]:
    """The event loop: uvloop when installed (the harness must not be the bottleneck).

    SIGTERM is a KeyboardInterrupt, so that every stack stops what it started.
    """
    async def wrap() -> dict[float, dict[str, RouterRuns]]:
        return await coro

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(wrap())
    return uvloop.run(wrap())


if __name__ == "__main__":
    raise SystemExit(main())
