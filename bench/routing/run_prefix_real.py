"""The shared-prefix routing benchmark in real time, through the real services and peers.

    .venv/bin/python -m bench.routing.run_prefix_real [--load 0.8] [--duration 60]
        [--speed-scale 0.25] [--routers a,b,...] [--out bench/results]

The fleet of ``run_prefix_virtual`` (speeds 0.5/1/1/2 × ``--speed-scale``, max_num_seqs 4,
prefix caching, KV caches too small for every tenant) runs as real HTTP engines
(``engine-sim``, one process each, publishing KV-cache events as vLLM does). One trace of
the shared-prefix workload at ``--load`` × the fleet's capacity (the virtual closed-loop
figure of the identical config) is replayed open loop, streamed chat requests at the
trace's arrival times, through each router in turn, each on a fresh fleet (empty caches)
and fresh router processes. TTFT is the time to the first content chunk from sending; a
refused or failed request is a miss and an infinite TTFT. The hit rate is the engines'
``vllm:prefix_cache_hits_total / vllm:prefix_cache_queries_total`` over the run.

Routers: round-robin and least-in-flight (client side); greybox, cache-aware,
cache-aware-precise, cache-aware-2-replicas (llmsched's gateway; the last with two
scheduler replicas); vr-cache_aware and vr-power_of_two (vllm-router);
sglang-cache_aware (sglang-router).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from bench.routing.fleet import HETERO_SPEEDS
from bench.routing.prefix_real import (
    ALIAS,
    CacheCounters,
    PrefixStackSpec,
    cache_counters,
    prefix_fleet_procs,
    running_prefix_llmsched,
    running_sglang_router,
    wait_chat,
)
from bench.routing.prefix_workload import PrefixRequest, PrefixSpec, generate
from bench.routing.realclient import Sent, stream_chat
from bench.routing.realstack import (
    MODEL,
    Fleet,
    Processes,
    StackError,
    ensure_vllm_router,
    running_vllm_router,
    wait_fleet,
)
from bench.routing.report import fmt_s, pct
from bench.routing.run_prefix_virtual import (
    NUM_GPU_BLOCKS,
    capacity,
    override,
    prefix_fleet,
    unloaded_ttft,
)

ROUTERS = ("round-robin", "least-in-flight", "greybox", "cache-aware", "cache-aware-precise",
           "cache-aware-2-replicas", "vr-cache_aware", "vr-power_of_two", "sglang-cache_aware")


def modes(slo_s: float, overrides: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The llmsched modes; ``overrides`` go into both cache_aware sections."""
    g = {"ttft_slo_ms": round(slo_s * 1000, 1), "max_queue_wait_s": round(6 * slo_s, 3)}
    cache = {"member_cache_tokens": NUM_GPU_BLOCKS * 16, **(overrides or {})}
    return {
        "greybox": {"name": "greybox", "type": "greybox", "greybox": g},
        "cache-aware": {"name": "ca", "type": "cache_aware", "greybox": g, "cache_aware": cache},
        "cache-aware-precise": {"name": "cap", "type": "cache_aware", "greybox": g,
                                "cache_aware": {"source": "precise", **(overrides or {})}},
    }


@contextlib.contextmanager
def router_stack(name: str, fleet: Fleet, workdir: Path, slo_s: float,
                 overrides: dict[str, Any] | None = None
                 ) -> Iterator[tuple[Processes | None, str, str]]:
    """(processes, base URL, model) of router ``name`` over ``fleet`` (None, "", MODEL:
    client side)."""
    m = modes(slo_s, overrides)
    if name in ("round-robin", "least-in-flight"):
        yield None, "", MODEL
    elif name in ("greybox", "cache-aware", "cache-aware-precise", "cache-aware-2-replicas"):
        spec = PrefixStackSpec(mode=m["cache-aware" if name.endswith("replicas") else name],
                               schedulers=2 if name.endswith("replicas") else 1,
                               precise=name == "cache-aware-precise")
        with running_prefix_llmsched(workdir, spec, fleet.keys) as (procs, url):
            yield procs, url, ALIAS
    elif name.startswith("vr-"):
        exe = ensure_vllm_router()
        with running_vllm_router(workdir, exe, fleet.urls, name[3:]) as (procs, url):
            yield procs, url, MODEL
    elif name.startswith("sglang-"):
        with running_sglang_router(workdir, fleet.urls, name[7:]) as (procs, url):
            yield procs, url, MODEL
    else:
        raise SystemExit(f"unknown router {name!r}")


def body(item: PrefixRequest, model: str) -> bytes:
    return json.dumps({"model": model, "stream": True, "max_tokens": item.output_tokens,
                       "messages": item.messages}, separators=(",", ":")).encode()


async def replay(trace: list[PrefixRequest], pick: Callable[[int], str],
                 done: Callable[[int], None], model: str, session: aiohttp.ClientSession,
                 timeout_s: float) -> list[Sent]:
    """Every request at its arrival time (open loop); returns how each went."""
    results: list[Sent] = [Sent() for _ in trace]
    start = time.perf_counter() + 0.5

    async def one(i: int, item: PrefixRequest) -> None:
        url = pick(i)
        try:
            results[i] = await stream_chat(session, url + "/v1/chat/completions",
                                           body(item, model), timeout_s=timeout_s)
        finally:
            done(i)

    tasks = []
    for i, item in enumerate(trace):
        delay = start + item.arrival_s - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, item)))
    await asyncio.gather(*tasks)
    return results


def picker(name: str, fleet: Fleet, url: str) -> tuple[Callable[[int], str],
                                                        Callable[[int], None]]:
    urls = fleet.urls
    if name == "round-robin":
        return (lambda i: urls[i % len(urls)]), (lambda i: None)
    if name == "least-in-flight":
        inflight = [0] * len(urls)
        where: dict[int, int] = {}

        def pick(i: int) -> str:
            engine = min(range(len(urls)), key=lambda e: (inflight[e], e))
            inflight[engine] += 1
            where[i] = engine
            return urls[engine]

        def done(i: int) -> None:
            inflight[where.pop(i)] -= 1

        return pick, done
    return (lambda i: url), (lambda i: None)


def figures(name: str, sent: list[Sent], before: list[CacheCounters],
            after: list[CacheCounters], speeds: list[float], slo_s: float) -> dict[str, Any]:
    ttfts = [s.ttft if s.ok else math.inf for s in sent]
    hits = sum(a.hits - b.hits for a, b in zip(after, before, strict=True))
    queries = sum(a.queries - b.queries for a, b in zip(after, before, strict=True))
    done = [a.success - b.success for a, b in zip(after, before, strict=True)]
    share = [d / sum(done) if sum(done) else 0.0 for d in done]
    fair = [s / sum(speeds) for s in speeds]
    return {"router": name, "requests": len(sent), "ttft_p50": pct(ttfts, 50),
            "ttft_p90": pct(ttfts, 90), "ttft_p99": pct(ttfts, 99),
            "goodput": sum(1 for t in ttfts if t <= slo_s) / len(ttfts),
            "failed": sum(1 for s in sent if not s.ok),
            "refused": sum(1 for s in sent if s.refused),
            "hit_rate": hits / queries if queries else 0.0, "share": share,
            "max_share_over_fair": max(s / f for s, f in zip(share, fair, strict=True)),
            "ttfts": [t if math.isfinite(t) else None for t in ttfts]}


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| router | TTFT p50 | p90 | p99 (s) | goodput | failed | hit rate | share per "
             "engine | max share / fair |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['router']} | {fmt_s(r['ttft_p50'])} | {fmt_s(r['ttft_p90'])} | "
                     f"{fmt_s(r['ttft_p99'])} | {r['goodput']:.3f} | {r['failed']} | "
                     f"{r['hit_rate']:.3f} | {' / '.join(f'{s:.2f}' for s in r['share'])} | "
                     f"{r['max_share_over_fair']:.2f} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], slo_s: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 5))
    for r in rows:
        finite = sorted(t for t in r["ttfts"] if t is not None)
        ax.plot(finite, [(i + 1) / len(r["ttfts"]) for i in range(len(finite))],
                label=r["router"])
    ax.axvline(slo_s, color="grey", linestyle="--", label=f"SLO {slo_s * 1000:.0f} ms")
    ax.set_xscale("log")
    ax.set_xlabel("TTFT (s, log scale)")
    ax.set_ylabel("share of requests")
    ax.set_title("TTFT distribution (real time, same trace)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    names = [r["router"] for r in rows]
    bx.barh(names, [r["hit_rate"] for r in rows], color="tab:green")
    bx.set_xlabel("engines' prefix-cache hit rate (hits / queries, tokens)")
    bx.set_xlim(0, 1)
    bx.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


async def run_one(name: str, trace: list[PrefixRequest], engines: list[Any], workdir: Path,
                  slo_s: float, timeout_s: float, overrides: dict[str, Any] | None = None
                  ) -> dict[str, Any]:
    with prefix_fleet_procs(workdir / "fleet", engines, nice=-5) as fleet:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            await wait_fleet(fleet, session)
            with router_stack(name, fleet, workdir / "router", slo_s,
                              overrides) as (procs, url, model):
                if procs is not None:
                    await wait_chat(procs, url, model, session, name)
                before = await cache_counters(fleet, session)
                pick, done = picker(name, fleet, url)
                sent = await replay(trace, pick, done, model, session, timeout_s)
                after = await cache_counters(fleet, session)
                errors = sorted({s.error for s in sent if s.error})[:3]
                if errors:
                    print(f"  {name}: errors such as {errors}", flush=True)
    return figures(name, sent, before, after, fleet.speeds, slo_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="run_prefix_real", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load", type=float, default=0.8)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--speed-scale", type=float, default=0.25,
                        help="engines run this much slower than the virtual fleet (the "
                             "request rate scales with it, so a 2-core box keeps pace)")
    parser.add_argument("--routers", default=",".join(ROUTERS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-aware-set", type=override, action="append", default=[],
                        metavar="KEY=VALUE",
                        help="a cache_aware setting of llmsched's cache-aware routers, e.g. "
                             "affinity_margin=2 (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    overrides = dict(args.cache_aware_set)
    speeds = tuple(s * args.speed_scale for s in HETERO_SPEEDS)
    engines = prefix_fleet(speeds)
    base = PrefixSpec(duration_s=args.duration, seed=args.seed)
    cap = capacity(engines, base)
    slo = 5 * unloaded_ttft(base) / args.speed_scale
    trace = generate(dataclasses.replace(base, rate=cap * args.load))
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    print(f"fleet speeds {speeds}; capacity {cap:.2f} req/s; load {args.load:.0%} = "
          f"{len(trace)} requests in {args.duration:.0f} s; SLO {slo * 1000:.0f} ms",
          flush=True)
    rows = []
    for name in args.routers.split(","):
        started = time.perf_counter()
        try:
            row = asyncio.run(run_one(name, trace, engines, args.out / f"work-{stamp}" / name,
                                      slo, timeout_s=max(120.0, 40 * slo),
                                      overrides=overrides))
        except StackError as err:
            print(f"  {name}: not run: {err}", flush=True)
            continue
        rows.append(row)
        print(f"  {name}: p90 {fmt_s(row['ttft_p90'])} s, hit rate {row['hit_rate']:.3f} "
              f"({time.perf_counter() - started:.0f} s)", flush=True)
    settings = f", cache_aware {overrides}" if overrides else ""
    text = (f"### shared-prefix workload, real time, load {args.load:.0%} of capacity "
            f"({cap:.2f} req/s), SLO {slo * 1000:.0f} ms{settings}\n\n{table(rows)}\n")
    print("\n" + text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"prefix-real-{stamp}.md").write_text(text)
    (args.out / f"prefix-real-{stamp}.json").write_text(json.dumps(
        {"capacity_rps": cap, "slo_s": slo, "load": args.load, "speeds": speeds,
         "cache_aware_overrides": overrides, "rows": rows}, default=str))
    with contextlib.suppress(ImportError):
        plot(rows, slo, args.out / f"prefix-real-{stamp}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
